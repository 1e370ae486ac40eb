"""Checkpoints and resume: keep-best, corrupt steps, SIGTERM/SIGKILL, other meshes, NaNs."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from conftest import xla_flags

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import config as config_lib, config_io, sharding
from jaxlm.run import checkpoint, files, loggers
from jaxlm.train import loop
from jaxlm.train.step import Trainer
from jaxlm.train.workdir import prepare_workdir
from jaxlm.config import MeshConfig
from jaxlm.data import pipeline
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--experiment=shakespeare", "--set=model.d_model=32", "--set=model.n_layers=1",
        "--set=model.n_heads=2", "--set=data.seq_len=32", "--set=model.max_seq_len=32",
        "--set=train.batch_size=8", "--set=train.steps=6", "--set=train.log_every=1",
        "--set=train.eval_every=3", "--set=train.eval_batches=2", "--set=checkpoint.every=2",
        "--set=train.sample_tokens=0", "--set=mesh.data=1"]

# Runs jaxlm.main with checkpoint.save hooked: after saving step AT it either
# SIGKILLs itself at once (a crash while that save may still be in flight) or
# prints "saved AT" and waits for the test to send SIGTERM.
HOOK = """
import os, signal, sys, time
from jaxlm.cli.train import entry
from jaxlm.run import checkpoint
from jaxlm.train import preemption
action, at = sys.argv[1], int(sys.argv[2])
save, handle, got = checkpoint.save, preemption.Preemption._handle, []
def hooked_handle(self, signum, frame):
  got.append(signum)
  handle(self, signum, frame)
def hooked_save(mngr, step, *args, **kwargs):
  save(mngr, step, *args, **kwargs)
  if step == at and action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
  if step == at and action == "term":
    print("saved", step, flush=True)
    deadline = time.time() + 120
    while not got and time.time() < deadline:
      time.sleep(0.01)
preemption.Preemption._handle = hooked_handle
checkpoint.save = hooked_save
sys.argv = ["jaxlm.main", *sys.argv[3:]]
entry()
"""


def _env():
  return dict(os.environ, XLA_FLAGS=xla_flags(1),
              PYTHONPATH=ROOT)


def _main(*args):
  return subprocess.run([sys.executable, "-m", "jaxlm.main", *TINY, *args], env=_env(),
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def _records(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [(l["step"], l["loss"], l["grad_norm"]) for l in lines if "loss" in l]
  evals = {l["step"]: l["val_loss"] for l in lines if "val_loss" in l}
  return train_lines, evals


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  """A run that was never interrupted."""
  workdir = str(tmp_path_factory.mktemp("baseline") / "run")
  out = _main(f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_sigterm_then_sigkill_resume_gives_the_same_losses(baseline, tmp_path):
  workdir = str(tmp_path / "run")
  hooked = [sys.executable, "-c", HOOK]
  # SIGTERM after step 2's save: step 3 finishes, is saved, and the process exits 0.
  proc = subprocess.Popen([*hooked, "term", "2", *TINY, f"--workdir={workdir}"], env=_env(),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:  # stderr comes here too, so neither pipe can fill and block
    if line.startswith("saved 2"):
      proc.send_signal(signal.SIGTERM)
      break
  output = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, output[-3000:]
  assert "preempted by SIGTERM at step 3; checkpoint saved" in output, output
  assert "rerun the same command to resume" in output
  assert "Traceback" not in output
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "3"))
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  # Resume, then crash with SIGKILL right after step 4's save has started.
  out = subprocess.run([*hooked, "kill", "4", *TINY, f"--workdir={workdir}"], env=_env(),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
  assert "resumed from step 3" in out.stdout
  # The same command again finishes the run from the latest complete checkpoint.
  out = _main(f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from step 3" in out.stdout or "resumed from step 4" in out.stdout
  leftovers = [p for p in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in p]
  assert not leftovers, leftovers
  got, want = _records(workdir), _records(baseline)
  assert got[0] == want[0]  # every step logged once, bitwise equal on CPU
  assert got[1][6] == want[1][6]  # the interrupted run skipped evaluating at step 3
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["final_val_loss"] == json.load(
      open(os.path.join(baseline, "summary.json")))["final_val_loss"]
  # Wall time counts every segment: the logged steps' clock runs on across the
  # resumes, and the summary is past the last of them.
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  walls = {l["step"]: l["wall_seconds"] for l in lines if "loss" in l}
  # Steps 1-3 ran in the first process, step 4 on in a later one: its clock
  # went on from the first segment's (a fresh clock would start near 0).
  assert walls[4] > walls[3] and walls[6] >= walls[4]
  assert summary["wall_seconds"] >= walls[6]


def test_resume_goes_on_from_the_wall_time_saved_with_the_checkpoint(baseline, tmp_path):
  # Each checkpoint keeps the run's wall time; a resume adds its own to it, even
  # with metrics.jsonl gone (which once was the only record of earlier segments).
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline, workdir)
  mngr = checkpoint.manager(workdir, keep=10)
  steps = sorted(mngr.all_steps())
  walls = [checkpoint.saved_wall_seconds(mngr, s) for s in steps]
  mngr.close()
  total = json.load(open(os.path.join(workdir, "summary.json")))["wall_seconds"]
  assert all(w is not None for w in walls) and 0 < walls[0] and walls == sorted(walls)
  assert walls[-1] <= total
  first = steps[0]
  for s in steps[1:]:
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(s)))
  os.remove(os.path.join(workdir, "summary.json"))
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  # Say the run had taken a day to reach that checkpoint (Orbax's metadata file).
  meta_path = os.path.join(workdir, "checkpoints", str(first), "_CHECKPOINT_METADATA")
  meta = json.load(open(meta_path))
  meta["custom_metadata"]["wall_seconds"] = 86400.0
  json.dump(meta, open(meta_path, "w"))
  out = _main(f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from step {first}" in out.stdout
  logged = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  resumed_walls = [l["wall_seconds"] for l in logged if "loss" in l]
  assert 86400 < resumed_walls[0] < 86400 + 600  # the clock went on from the checkpoint's
  assert json.load(open(os.path.join(workdir, "summary.json")))["wall_seconds"] > 86400


def test_truncated_metrics_give_the_wall_time_to_resume_from(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w") as f:
    for step, wall in ((1, 1.5), (2, 2.5), (3, 9.0)):
      f.write(json.dumps({"step": step, "loss": 1.0, "wall_seconds": wall}) + "\n")
    f.write(json.dumps({"step": 2, "val_loss": 1.0}) + "\n" + '{"step": 4, "lo')  # cut short
  assert files.truncate_metrics(path, 2) == 2.5
  assert [json.loads(l)["step"] for l in open(path)] == [1, 2, 2]
  assert files.truncate_metrics(str(tmp_path / "none.jsonl"), 2) == 0.0


def test_final_checkpoint_is_ranked_on_the_periodic_batches(baseline, tmp_path):
  # Periodic evaluations use train.eval_batches batches, the final one the whole
  # split: keep-best ranks the final step on the same batches as the others,
  # and keeps the whole split's result next to it for the summary.
  every2 = str(tmp_path / "every2")
  sets = ("--set=train.eval_every=2", "--set=checkpoint.keep=3")
  out = _main(f"--workdir={every2}", *sets)
  assert out.returncode == 0, out.stderr[-3000:]
  mngr = checkpoint.manager(every2, keep=3, async_save=False, read_only=True)
  assert mngr.all_steps() == [2, 4, 6]
  periodic = checkpoint.saved_metrics(mngr, 4)
  assert set(periodic) == {"val_loss", "val_bpb"}
  lines = [json.loads(l) for l in open(os.path.join(every2, "metrics.jsonl"))]
  assert periodic["val_loss"] == [l["val_loss"] for l in lines if l.get("step") == 4
                                  and "val_loss" in l][0]
  saved = checkpoint.saved_metrics(mngr, 6)
  summary = json.load(open(os.path.join(every2, "summary.json")))
  assert saved["full_val_loss"] == summary["final_val_loss"]
  assert saved["full_val_bpb"] == summary["final_val_bpb"]
  assert saved["val_loss"] != saved["full_val_loss"]  # 2 batches, not the whole split
  # A finished run resumed (its summary lost) reports the whole split again.
  workdir = str(tmp_path / "run")
  shutil.copytree(every2, workdir)
  os.remove(os.path.join(workdir, "summary.json"))
  out = _main(f"--workdir={workdir}", *sets)
  assert out.returncode == 0, out.stderr[-3000:]
  again = json.load(open(os.path.join(workdir, "summary.json")))
  assert again["final_val_loss"] == summary["final_val_loss"]


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(baseline, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(baseline, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(ckpts)) == ["4", "6"]
  for path in glob.glob(os.path.join(ckpts, "6", "state", "**", "d", "*"), recursive=True):
    os.truncate(path, 7)
  out = _main(f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "warning: checkpoint" in out.stderr and "trying the one before" in out.stderr
  assert "resumed from step 4" in out.stdout
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints"))[0].startswith("6-")
  assert "Traceback" not in out.stderr
  assert _records(workdir) == _records(baseline)


def test_keeps_the_latest_and_the_best(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), keep=2, async_save=False)
  config = tiny_config()
  val_losses = {1: 3.0, 2: 1.0, 3: None, 4: 2.5, 5: float("nan"), 6: 2.0}
  for step, val in val_losses.items():
    checkpoint.save(mngr, step, {"w": jnp.full((3,), float(step))}, {"i": step}, config,
                    metrics=None if val is None else {"val_loss": val})
  assert mngr.all_steps() == [2, 5, 6]  # best (val_loss 1.0) and the latest two
  assert mngr.best_step() == 2
  assert checkpoint.saved_metrics(mngr, 2) == {"val_loss": 1.0}
  assert checkpoint.saved_metrics(mngr, 5) is None
  mngr.close()


def test_restore_falls_back_and_moves_the_corrupt_step_aside(tmp_path, capsys):
  mngr = checkpoint.manager(str(tmp_path), keep=3, async_save=False)
  abstract = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)}
  for step in (1, 2):
    checkpoint.save(mngr, step, {"w": jnp.arange(1000.0) + step}, {"i": step}, tiny_config())
  for path in glob.glob(str(tmp_path / "checkpoints" / "2" / "state" / "**" / "d" / "*"),
                        recursive=True):
    os.truncate(path, 0)
  state, data = checkpoint.restore(mngr, abstract)
  assert data == {"i": 1} and float(state["w"][0]) == 1.0
  assert "checkpoints/2 cannot be restored" in capsys.readouterr().err
  assert mngr.all_steps() == [1] and len(os.listdir(tmp_path / "corrupt_checkpoints")) == 1
  checkpoint.save(mngr, 2, {"w": jnp.zeros(1000)}, {"i": 2}, tiny_config())  # step 2 again
  assert mngr.all_steps() == [1, 2]
  # Nothing readable: an error naming the directory, and nothing moved.
  for path in glob.glob(str(tmp_path / "checkpoints" / "*" / "state" / "**" / "d" / "*"),
                        recursive=True):
    os.truncate(path, 0)
  with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .*checkpoints can "
                     r"be restored .*\(steps 2, 1: see the warnings above\)"):
    checkpoint.restore(mngr, abstract)
  assert mngr.all_steps() == [1, 2] and len(os.listdir(tmp_path / "corrupt_checkpoints")) == 1
  mngr.close()


CONFIG = tiny_config(**{"model.n_layers": 1, "model.n_kv_heads": 2, "optim.warmup_steps": 2})


def _trainer(mesh, devices):
  config = config_lib.replace(CONFIG, mesh=mesh)
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  trainer = Trainer(config, sharding.make_mesh(config.mesh, devices), tok.token_bytes())
  it = pipeline.train_iterator(pipeline.train_dataset(config.data, tok,
                                                      config.train.batch_size, 0))
  return trainer, it


def _steps(trainer, it, state, n):
  losses = []
  for _ in range(n):
    state, m = trainer.step(state, trainer.device_batch(next(it)))
    losses.append(float(m["loss"]))
  return state, losses


@pytest.fixture(scope="module")
def fsdp8_run(tmp_path_factory):
  """Saved at step 3 on 8 devices with fsdp=8; then the losses of steps 4-6 and the state."""
  assert jax.device_count() == 8
  workdir = str(tmp_path_factory.mktemp("fsdp8"))
  trainer, it = _trainer(MeshConfig(data=1, fsdp=8), jax.devices())
  state, _ = _steps(trainer, it, trainer.init(jax.random.key(0)), 3)
  mngr = checkpoint.manager(workdir, keep=2)
  checkpoint.save(mngr, 3, state, it.get_state(), trainer.config, wait=True)
  mngr.close()
  state, losses = _steps(trainer, it, state, 3)
  return workdir, losses, state


@pytest.mark.parametrize("mesh,n_devices", [(MeshConfig(data=1), 1),
                                            (MeshConfig(data=1, fsdp=2, tensor=2), 4)])
def test_resume_on_another_mesh(mesh, n_devices, fsdp8_run):
  workdir, want, state = fsdp8_run
  other, it2 = _trainer(mesh, jax.devices()[:n_devices])
  mngr = checkpoint.manager(workdir, keep=2, read_only=True)
  restored, data_state = checkpoint.restore(mngr, other.abstract_state())
  assert int(restored.step) == 3
  assert restored.params["embed"].sharding.mesh.devices.size == n_devices
  it2.set_state(data_state)
  restored, got = _steps(other, it2, restored, 3)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_array_equal(jax.random.key_data(restored.rng),
                                jax.random.key_data(state.rng))


def _poisoned_run(tmp_path, monkeypatch, policy, every, bad_step=3):
  """A tiny one-device run whose batch `bad_step` has NaN weights (so a NaN loss)."""
  config = tiny_config(**{"train.steps": 4, "train.log_every": 2, "checkpoint.every": every,
                          "checkpoint.keep": 10, "train.nonfinite": policy, "mesh.data": 1})
  eval_batches, make_mesh = pipeline.eval_batches, sharding.make_mesh
  monkeypatch.setattr(pipeline, "eval_batches",  # a short final evaluation
                      lambda data, tok, batch, *_, **k: eval_batches(data, tok, batch, 1, **k))
  monkeypatch.setattr(sharding, "make_mesh", lambda c: make_mesh(c, jax.devices()[:1]))
  r = loop.setup(config, str(tmp_path / policy))

  def poison(index, batch):
    if index == bad_step - 1:
      batch = {**batch, "weights": np.full_like(batch["weights"], np.nan)}
    return batch

  r.dataset = r.dataset.map_with_index(poison)
  return r


def test_nonfinite_stop_names_the_last_good_checkpoint(tmp_path, monkeypatch):
  r = _poisoned_run(tmp_path, monkeypatch, "stop", every=2)
  with pytest.raises(loop.NonFiniteError, match=r"at steps 3-4 \(loss nan\); the last good "
                     r"checkpoint is step 2 in .*checkpoints"):
    loop.run(r)
  assert r.checkpoints.all_steps() == [2]  # nothing non-finite was saved


def test_nonfinite_skip_drops_the_update_and_counts_it(tmp_path, monkeypatch, capsys):
  r = _poisoned_run(tmp_path, monkeypatch, "skip", every=1)
  summary = loop.run(r)
  assert np.isfinite(summary["final_val_loss"])
  assert "skipped 1 update(s) with non-finite loss or gradients at step 3 " in \
      capsys.readouterr().out
  records = [json.loads(l) for l in open(tmp_path / "skip" / "metrics.jsonl")]
  assert [l["nonfinite_steps"] for l in records if "loss" in l] == [0, 1]
  mngr = checkpoint.manager(str(tmp_path / "skip"), keep=10, read_only=True)
  abstract = r.trainer.abstract_state()
  at2, _ = checkpoint.restore(mngr, abstract, step=2)
  at3, _ = checkpoint.restore(mngr, abstract, step=3)
  for a, b in zip(jax.tree.leaves((at2.params, at2.opt_state)),
                  jax.tree.leaves((at3.params, at3.opt_state))):
    np.testing.assert_array_equal(a, b)  # step 3's update was dropped whole
  assert int(at3.step) == 3 and int(at3.nonfinite) == 1


def test_workdir_modes_resume_overwrite_and_mesh_changes(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  # A URL is refused before anything is written (os.makedirs would make ./gs:/...).
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r"--workdir=gs://b/r is a URL; .*gcsfuse"):
    prepare_workdir(tiny_config(), "gs://b/r")
  assert os.listdir(tmp_path) == []
  assert prepare_workdir(tiny_config(), workdir) == []
  open(os.path.join(workdir, "metrics.jsonl"), "w").write("{}\n")
  # Another mesh is the same run on other hardware; setup rewrites config.json.
  assert prepare_workdir(tiny_config(**{"mesh.fsdp": 2}), workdir) == ["mesh.fsdp"]
  watched = {"train.loggers": "stdout,jsonl,tensorboard", "train.layer_stats": False}
  assert prepare_workdir(tiny_config(**watched), workdir) == sorted(watched)
  lower_lr = tiny_config(**{"optim.lr": 1e-4})
  with pytest.raises(config_lib.ConfigError, match="differs in optim.lr; .*--resume to continue"):
    prepare_workdir(lower_lr, workdir)
  assert prepare_workdir(lower_lr, workdir, "resume") == ["optim.lr"]
  with pytest.raises(config_lib.ConfigError, match="--resume continues only a run of the same"):
    prepare_workdir(tiny_config(**{"model.d_model": 64}), workdir, "resume")
  assert prepare_workdir(tiny_config(**{"model.d_model": 64}), workdir, "overwrite") == []
  old = [p for p in os.listdir(tmp_path) if p.startswith("run.old-")]
  assert len(old) == 1 and os.path.exists(tmp_path / old[0] / "metrics.jsonl")
  assert os.listdir(workdir) == ["config.json"]
  assert config_io.loads(open(os.path.join(workdir, "config.json")).read()).model.d_model == 64


def test_loss_spikes_are_logged(tmp_path, capsys):
  report, mean = loggers.Reporter(tiny_config(), str(tmp_path)), None
  for step, loss in enumerate([5.0, 4.0, 3.5, 12.0, float("nan"), 3.4], start=1):
    mean = loop._log_spike(report, step, loss, mean, 2.0, np.array([7 * step, 9 * step]))
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["spike_loss"], r["batch_indices"]) for r in records] == [
      (4, 12.0, [28, 36])]
  assert "warning: loss spike at step 4: 12.0000 is over 2x the running mean" in \
      capsys.readouterr().out


def test_a_full_disk_at_a_checkpoint_is_one_error_and_keeps_the_last_one(tmp_path, monkeypatch):
  # Simulated: the save of step 4 fails as a full disk does, after leaving partial files.
  config = tiny_config(**{"train.steps": 6, "train.log_every": 2, "checkpoint.every": 2,
                          "checkpoint.keep": 10, "mesh.data": 1, "train.eval_every": 0})
  make_mesh = sharding.make_mesh
  monkeypatch.setattr(sharding, "make_mesh", lambda c: make_mesh(c, jax.devices()[:1]))
  r = loop.setup(config, str(tmp_path / "run"))
  save = checkpoint.ocp.CheckpointManager.save

  def full_at_4(self, step, *args, **kwargs):
    if step == 4:
      os.makedirs(os.path.join(str(self.directory), "4.orbax-checkpoint-tmp-1"))
      raise OSError(28, "No space left on device")
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", full_at_4)
  with pytest.raises(checkpoint.StorageError, match=r"could not write checkpoint 4 in .*: No "
                     r"space left on device; the last complete checkpoint, step 2, is intact"):
    loop.run(r)
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]  # no partial step 4
  monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", save)
  again = loop.setup(config, str(tmp_path / "run"))
  assert int(again.restored[0].step) == 2  # loadable, and the run goes on from it
  assert loop.run(again)["steps"] == 6
  assert checkpoint.storage_reason(RuntimeError("x")) is None
  assert checkpoint.storage_reason(ValueError("write failed: Read-only file system")) == \
      "Read-only file system"


def _small_tmpfs(path) -> bool:
  """Mounts a 4 MiB tmpfs at path where this process may (root); False where it may not."""
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0 or shutil.which("mount") is None:
    return False
  return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                        capture_output=True).returncode == 0


def test_a_real_full_disk_stops_the_run_cleanly_and_keeps_the_last_checkpoint(tmp_path):
  disk = tmp_path / "disk"
  if not _small_tmpfs(disk):
    pytest.skip("cannot mount a tmpfs here (needs root); the simulated test above covers it")
  try:
    workdir = str(disk / "run")
    env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
    run = [sys.executable, "-m", "jaxlm.main", *TINY, f"--workdir={workdir}",
           "--set=checkpoint.keep=10"]
    first = subprocess.run(run + ["--set=train.steps=2"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    # Fill the disk but for 64 KiB: enough for the logs, not for checkpoint 4.
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
      f.write(b"\0" * max(free - 64 * 1024, 0))
    full = subprocess.run(run + ["--resume"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 4, full.stderr[-2000:]
    # One line: checkpoint 4 failed, or metrics.jsonl did first while it was being written.
    assert full.stderr.strip().startswith("error: could not write "), full.stderr[-2000:]
    assert full.stderr.strip().endswith(
        "No space left on device; the last complete checkpoint, step 2, is intact; free space "
        "or make the workdir writable, then rerun the same command to resume")
    assert len(full.stderr.strip().splitlines()) == 1, full.stderr[-2000:]
    # Nothing of step 4 is left; step 2 loads and a rerun resumes from it (shown in-process
    # by the simulated test above).
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    assert checkpoint.saved_steps(workdir) == [2]
  finally:
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_abandoned_reads_of_a_failed_restore_are_not_logged():
  # After a restore fails on its first unreadable array, asyncio may log the other reads
  # that failed later ("Task exception was never retrieved", a traceback each, at random).
  import logging
  from jaxlm.run.checkpoint import _drop_abandoned_reads as keep
  record = lambda msg: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)
  assert not keep(record("Task exception was never retrieved\nfuture: <Task finished "
                         "coro=<async_deserialize() done> exception=ValueError()>"))
  assert keep(record("Task exception was never retrieved\nfuture: <Task coro=<other()>"))
  assert keep(record("an unrelated asyncio error"))
