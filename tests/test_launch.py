"""Launchers: dry runs print exact commands; two local processes train together, stop
together when one dies, and restart; SLURM scripts requeue themselves."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))

import local  # noqa: E402
import prepare_slurm  # noqa: E402
import slurm  # noqa: E402
import sweep_local  # noqa: E402
import sweep_run  # noqa: E402
import sweep_slurm  # noqa: E402
import sweep_tpu_vm  # noqa: E402
import tpu_vm  # noqa: E402
from conftest import xla_flags
from jaxlm.run import files
from jaxlm.scaling import collect

TINY_SWEEP = "shakespeare_isoflop_tiny"  # 6 points, seconds each

TINY = ["--experiment=shakespeare_char", "--set=model.d_model=32", "--set=model.n_layers=1",
        "--set=model.n_heads=2", "--set=data.seq_len=32", "--set=model.max_seq_len=32",
        "--set=train.batch_size=8", "--set=train.steps=4", "--set=train.log_every=1",
        "--set=train.eval_every=0", "--set=train.eval_batches=1", "--set=train.sample_tokens=0",
        "--set=train.final_eval_batches=4",
        "--set=checkpoint.every=0"]


def test_dry_runs_print_commands(capsys):
  assert local.main(["--num_processes", "2", "--port", "1234", "--dry_run", "--",
                     "--experiment=x"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2 and "--process_id=1" in out[1] and "localhost:1234" in out[0]
  assert slurm.main(["--nodes", "2", "--gpus_per_node", "4", "--dry_run", "--",
                     "--experiment=gpt2_small", "--workdir=/shared/g"]) == 0
  out = capsys.readouterr().out
  assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=4" in out
  assert ("srun --error=/shared/g/logs/process_%t.log python -m jaxlm.main "
          "--experiment=gpt2_small --workdir=/shared/g &") in out
  assert "#SBATCH --signal=B:TERM@120" in out and "--requeue" not in out
  with pytest.raises(SystemExit):  # a requeued job must find its run: --workdir is required
    slurm.main(["--dry_run", "--", "--experiment=gpt2_small"])
  assert "give --workdir=DIR" in capsys.readouterr().err
  assert tpu_vm.main(["--tpu", "t", "--zone", "z", "--dry_run", "--", "--experiment=x"]) == 0
  out = capsys.readouterr().out
  assert "--worker=all" in out and "python -m jaxlm.main --experiment=x" in out


def _metrics(workdir):
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r["loss"] for r in records if "loss" in r]


def _points():
  return sweep_run.load(TINY_SWEEP)[1]


def _finish_point(sweep_dir, name):
  os.makedirs(os.path.join(sweep_dir, name), exist_ok=True)
  with open(os.path.join(sweep_dir, name, "summary.json"), "w") as f:
    json.dump({"final_val_loss": 1.0}, f)


def test_array_spec_compresses_ranges_and_throttles():
  assert sweep_slurm.array_spec([0, 1, 2, 3]) == "0-3"
  assert sweep_slurm.array_spec([0, 2, 3, 4, 7], 2) == "0,2-4,7%2"
  assert sweep_slurm.array_spec([5]) == "5"


def test_sweep_slurm_dry_run_one_task_per_point(tmp_path, capsys):
  sweep_dir = str(tmp_path / "sweep")
  runs = _points()
  assert sweep_slurm.main([f"--sweep={TINY_SWEEP}", f"--dir={sweep_dir}", "--partition=gpu",
                           "--gpus_per_task=2", "--time=01:00:00", "--max_parallel=3",
                           "--dry_run"]) == 0
  out = capsys.readouterr().out
  assert f"#SBATCH --array=0-{len(runs) - 1}%3" in out and len(runs) == 6
  assert "#SBATCH --partition=gpu" in out and "#SBATCH --gpus-per-task=2" in out
  assert "#SBATCH --time=01:00:00" in out
  assert f"# then: sbatch {sweep_dir}/slurm/{TINY_SWEEP}.sbatch" in out
  # Task i's command is sweep_local's command for point i, with the cluster's python.
  assert sweep_local.main([f"--sweep={TINY_SWEEP}", f"--dir={sweep_dir}", "--dry_run"]) == 0
  local_cmds = capsys.readouterr().out.splitlines()
  for i, (r, local_cmd) in enumerate(zip(runs, local_cmds)):
    assert f"#   {i}: " + local_cmd.replace(sys.executable, "python", 1) in out
  assert "NAMES=(" + " ".join(r.name for r in runs) + ")" in out
  assert 'NAME="${NAMES[$SLURM_ARRAY_TASK_ID]}"' in out
  assert ('python launch/sweep_run.py --sweep=shakespeare_isoflop_tiny '
          f'--dir={sweep_dir} --name="$NAME" &') in out
  assert not os.path.exists(sweep_dir)  # a dry run writes nothing


def test_sweep_slurm_leaves_finished_points_out(tmp_path, capsys):
  sweep_dir = str(tmp_path / "sweep")
  runs = _points()
  _finish_point(sweep_dir, runs[1].name)
  args = [f"--sweep={TINY_SWEEP}", f"--dir={sweep_dir}", "--gpus_per_task=0", "--dry_run"]
  assert sweep_slurm.main(args) == 0
  out = capsys.readouterr().out
  assert "# 1 of 6 points done; the array runs 5" in out
  assert "#SBATCH --array=0,2-5\n" in out and "--gpus-per-task" not in out
  assert "#   1: " not in out and "#   2: " in out
  assert sweep_slurm.main(args + ["--only=C6e8"]) == 0
  assert "#SBATCH --array=3-5\n" in capsys.readouterr().out
  for r in runs:
    _finish_point(sweep_dir, r.name)
  assert sweep_slurm.main(args) == 0
  out = capsys.readouterr().out
  assert "6 of 6 points done; the array runs 0" in out and "sbatch" not in out


def test_sweep_tpu_vm_deals_points_round_robin(capsys):
  runs = _points()
  assert sweep_tpu_vm.main([f"--sweep={TINY_SWEEP}", "--dir=/mnt/s", "--tpu=a,b",
                            "--tpu=c", "--zone=z", "--project=p", "--dry_run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "# 0 of 6 points done here; 6 dealt to 3 VM(s)"
  assert len(lines) == 4
  for vm, line in zip("abc", lines[1:]):
    names = " ".join(f"--name={r.name}" for r in runs[" abc".index(vm) - 1::3])
    assert line.startswith(f"gcloud compute tpus tpu-vm ssh --project=p {vm} --zone=z "
                           "--worker=all")
    assert (f"'--command=cd jaxlm && python launch/sweep_run.py --sweep={TINY_SWEEP} "
            f"--dir=/mnt/s {names}'") in line
  assert sweep_tpu_vm.main([f"--sweep={TINY_SWEEP}", "--dir=/mnt/s", "--tpu=a", "--zone=z",
                            "--setup", "--git=https://x/jaxlm.git", "--only=C3e8",
                            "--dry_run"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3 and "git clone https://x/jaxlm.git jaxlm" in lines[1]
  assert lines[2].count("--name=isoflop-C3e8-") == 3


def test_sweep_run_skips_finished_points_and_checks_names(tmp_path, capsys):
  sweep_dir = str(tmp_path / "sweep")
  runs = _points()
  _finish_point(sweep_dir, runs[0].name)
  assert sweep_run.main([f"--sweep={TINY_SWEEP}", f"--dir={sweep_dir}",
                         f"--name={runs[0].name}"]) == 0
  assert "skip        " + runs[0].name in capsys.readouterr().out
  assert not os.path.exists(os.path.join(sweep_dir, runs[0].name, "status.json"))
  plan = json.load(open(os.path.join(sweep_dir, "sweep.json")))
  assert [r["name"] for r in plan["runs"]] == [r.name for r in runs]
  assert sweep_run.main([f"--sweep={TINY_SWEEP}", f"--dir={sweep_dir}", "--index=6"]) == 2
  assert sweep_run.main([f"--sweep={TINY_SWEEP}", f"--dir={sweep_dir}", "--name=x"]) == 2
  assert "is not a point of this sweep" in capsys.readouterr().err


def test_sbatch_script_runs_its_task_without_slurm(tmp_path, capsys):
  # The generated script itself, as SLURM would run array task 2 (sbatch reads the
  # #SBATCH lines; bash ignores them).
  sweep_dir = str(tmp_path / "sweep")
  script = str(tmp_path / "job.sbatch")
  assert sweep_slurm.main([f"--sweep={TINY_SWEEP}", f"--dir={sweep_dir}", f"--script={script}",
                           f"--python={sys.executable}", "--dry_run"]) == 0
  text = capsys.readouterr().out.split(f"# {script}\n", 1)[1].rsplit("# then:", 1)[0]
  with open(script, "w") as f:
    f.write(text)
  env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": xla_flags()}
  proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  name = _points()[2].name
  status = json.load(open(os.path.join(sweep_dir, name, "status.json")))
  assert status["status"] == "ok" and "-m jaxlm.main" in status["command"]
  assert os.path.exists(os.path.join(sweep_dir, name, "summary.json"))
  again = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0 and f"skip        {name}" in again.stdout


def _slurm_partition() -> str | None:
  """The default partition of a SLURM cluster that answers here, else None."""
  try:
    out = subprocess.run(["sinfo", "--noheader", "--format=%P %a"], capture_output=True,
                         text=True, timeout=20)
  except (OSError, subprocess.TimeoutExpired):
    return None
  for line in out.stdout.split("\n") if out.returncode == 0 else []:
    name, _, avail = line.partition(" ")
    if name.endswith("*") and avail.strip() == "up":
      return name[:-1]
  return None


SLURM_PARTITION = _slurm_partition()


@pytest.mark.skipif(SLURM_PARTITION is None, reason="no SLURM cluster answers here")
def test_sweep_slurm_runs_an_array_on_a_live_cluster(tmp_path):
  # Where sinfo answers (this project's dev VM had a one-node slurm-wlm cluster
  # on 2026-11-26): the real sbatch, array and resubmission, not a dry run.
  import time
  sweep_dir = str(tmp_path / "sweep")
  cmd = [sys.executable, os.path.join(ROOT, "launch", "sweep_slurm.py"), f"--sweep={TINY_SWEEP}",
         f"--dir={sweep_dir}", f"--partition={SLURM_PARTITION}", "--gpus_per_task=0",
         "--cpus_per_task=1", "--time=00:10:00", f"--python={sys.executable}", "--only=C3e8"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}

  def submit_and_wait():
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = proc.stdout.split("Submitted batch job")[1].split()[0]
    deadline = time.time() + 400
    while time.time() < deadline:
      queue = subprocess.run(["squeue", "--noheader", f"--jobs={job}"], capture_output=True,
                             text=True).stdout
      if not queue.strip():
        return proc.stdout
      time.sleep(2)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} did not finish in 400 s")

  out = submit_and_wait()
  assert "the array runs 3" in out
  rows = {r["name"]: r for r in collect.collect(sweep_dir) if "C3e8" in r["name"]}
  assert len(rows) == 3 and {r["status"] for r in rows.values()} == {"ok"}
  name = sorted(rows)[1]
  os.remove(os.path.join(sweep_dir, name, "summary.json"))
  out = submit_and_wait()  # only the point without a summary goes into the array
  assert "2 of 3 points done; the array runs 1" in out
  assert os.path.exists(os.path.join(sweep_dir, name, "summary.json"))


def _prepare_corpus(root) -> tuple[str, list[str]]:
  """A corpus of 9 files of just over 1 MB (a shard each with --shard_mb=1) and the
  prepare arguments for it."""
  os.makedirs(root, exist_ok=True)
  for i in range(9):
    with open(os.path.join(root, f"part{i}.jsonl"), "w") as f:
      for j in range(30):
        f.write(json.dumps({"text": f"document {i}.{j} " + "words " * (5900 + 7 * i + j)})
                + "\n")
  return f"files:{root}/*.jsonl", ["--validation_fraction=0.1", "--shard_mb=1"]


def _files(root) -> dict[str, bytes]:
  return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
          for d, _, names in os.walk(root) for n in names}


def test_prepare_slurm_scripts_tokenize_in_tasks_and_merge_like_one_process(tmp_path, capsys):
  corpus, extra = _prepare_corpus(str(tmp_path / "src"))
  out = str(tmp_path / "out")
  args = [f"--corpus={corpus}", f"--out={out}", *extra]
  assert prepare_slurm.main(["--num_tasks=4", "--max_parallel=2", "--cpus_per_task=2",
                             f"--python={sys.executable}", "--dry_run", "--", *args]) == 0
  printed = capsys.readouterr().out
  task_path, merge_path = (os.path.join(out + ".slurm", n)
                           for n in ("prepare.sbatch", "prepare-merge.sbatch"))
  task_text = printed.split(f"# {task_path}\n", 1)[1].split(f"# {merge_path}\n", 1)[0]
  merge_text = printed.split(f"# {merge_path}\n", 1)[1].split("# then:", 1)[0]
  assert "#SBATCH --array=0-3%2" in task_text and "--cpus-per-task=2" in task_text
  assert "--num_tasks=4" in task_text and "--merge" in merge_text
  assert "sbatch --dependency=afterok:J" in printed
  for name, text in (("task.sh", task_text), ("merge.sh", merge_text)):
    (tmp_path / name).write_text(text)
  env = {**os.environ, "PYTHONPATH": ROOT, "SLURM_CPUS_PER_TASK": "1"}

  def bash(name, **extra_env):
    return subprocess.run(["bash", str(tmp_path / name)], env={**env, **extra_env},
                          capture_output=True, text=True, timeout=300)

  early = bash("merge.sh")  # before any task: a one-line error, no manifest
  assert early.returncode == 2 and early.stderr.startswith("error: --out=") and \
      "holds no prepared shards" in early.stderr, early.stderr
  for task in ("3", "1", "0"):
    done = bash("task.sh", SLURM_ARRAY_TASK_ID=task)
    assert done.returncode == 0 and f"task {task} of 4: prepared" in done.stdout, done.stderr
  early = bash("merge.sh")  # task 2 has not run
  assert early.returncode == 2 and "shards are not prepared yet" in early.stderr
  assert not os.path.exists(os.path.join(out, "manifest.json"))
  assert bash("task.sh", SLURM_ARRAY_TASK_ID="2").returncode == 0
  merged = bash("merge.sh")
  assert merged.returncode == 0 and "wrote 9 shards" in merged.stdout, merged.stderr
  one = str(tmp_path / "one")
  single = subprocess.run([sys.executable, "-m", "jaxlm.data.prepare", f"--corpus={corpus}",
                           f"--out={one}", *extra, "--workers=1"],
                          env=env, capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr
  assert _files(out) == _files(one)
  # The scripts run in the checkout: relative paths become absolute first.
  here = os.getcwd()
  assert prepare_slurm.absolute_paths(["--out", "p/o", "--corpus=files:c/*.x,!c/y*", "-v"]) == [
      f"--out={here}/p/o", f"--corpus=files:{here}/c/*.x,!{here}/c/y*", "-v"]
  # Flags the launcher sets itself, and a missing --out, are refused.
  with pytest.raises(SystemExit):
    prepare_slurm.main(["--num_tasks=2", "--", *args, "--workers=3"])
  assert "--workers after -- is set by the launcher" in capsys.readouterr().err


@pytest.mark.skipif(SLURM_PARTITION is None, reason="no SLURM cluster answers here")
def test_prepare_slurm_runs_its_array_and_merge_on_a_live_cluster(tmp_path):
  # The real sbatch: 3 array tasks, then the merge job once they have all succeeded.
  corpus, extra = _prepare_corpus(str(tmp_path / "src"))
  out = str(tmp_path / "out")
  cmd = [sys.executable, os.path.join(ROOT, "launch", "prepare_slurm.py"), "--num_tasks=3",
         f"--partition={SLURM_PARTITION}", "--cpus_per_task=1", "--time=00:10:00",
         f"--python={sys.executable}", "--", f"--corpus={corpus}", f"--out={out}", *extra]
  proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  jobs = [line.split()[3] for line in proc.stdout.splitlines()
          if line.startswith("Submitted batch job")]
  assert len(jobs) == 2, proc.stdout
  deadline = time.time() + 300
  while subprocess.run(["squeue", "--noheader", f"--jobs={','.join(jobs)}"],
                       capture_output=True, text=True).stdout.strip():
    assert time.time() < deadline, f"jobs {jobs} did not finish in 300 s"
    time.sleep(2)
  logs = {n: open(os.path.join(out + ".slurm", n)).read()
          for n in os.listdir(out + ".slurm") if n.endswith(".out")}
  assert len(logs) == 4, logs  # three tasks and the merge
  assert os.path.exists(os.path.join(out, "manifest.json")), logs
  one = str(tmp_path / "one")
  assert subprocess.run([sys.executable, "-m", "jaxlm.data.prepare", f"--corpus={corpus}",
                         f"--out={one}", *extra], env={**os.environ, "PYTHONPATH": ROOT},
                        capture_output=True, timeout=300).returncode == 0
  assert _files(out) == _files(one)


def test_a_run_records_the_restart_its_launcher_hands_it(tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": xla_flags(1)}
  # The first attempt's record was written; the second attempt died before writing its
  # own: the third gets both and adds only the missing one.
  first, second = ({"time": t, "ended": "exit status 1 (a Python error)", "launcher": "tpu_vm"}
                   for t in ("2026-12-06T10:00:00", "2026-12-06T10:05:00"))
  os.makedirs(tmp_path / "run")
  files.record_restart(str(tmp_path / "run"), first)
  run = [sys.executable, "-m", "jaxlm.main", *TINY, "--set=train.steps=2", "--set=mesh.data=1",
         f"--workdir={tmp_path}/run"]
  done = subprocess.run([*run, f"--restart_record={json.dumps([first, second])}"], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.load(open(tmp_path / "run" / "summary.json"))["restarts"] == 2
  assert _restarts(str(tmp_path / "run")) == [{"restart": 1, **first}, {"restart": 2, **second}]
  bad = subprocess.run([*run, "--restart_record={}"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      "error: --restart_record='{}' is invalid: expected a JSON list of objects, e.g. "
      "'[{\"ended\": \"exit status 1\"}]'"], bad.stderr


# --- Faults: a group stops together, restarts, requeues ---------------------------------

def _python(code: str) -> list[str]:
  return [sys.executable, "-c", code]


def test_a_dead_process_stops_its_group_at_once(tmp_path, capsys):
  import supervise
  # Process 0 talks and then ignores SIGTERM, as one stuck in a collective does;
  # process 1 dies of SIGKILL. The group is stopped one grace period later.
  stubborn = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('step 1', flush=True); print('warning: shown', file=sys.stderr, "
              "flush=True); print('I1206 absl noise', file=sys.stderr, flush=True); "
              "time.sleep(60)")
  dies = "import os, time; time.sleep(0.5); os.kill(os.getpid(), 9)"
  logs = [str(tmp_path / "logs" / f"process_{i}.log") for i in range(2)]
  start = time.monotonic()
  ending = supervise.Group([({}, _python(stubborn)), ({}, _python(dies))], logs,
                           grace=0.5).start().wait()
  assert time.monotonic() - start < 10
  assert (ending.process, ending.returncode, ending.interrupted) == (1, -9, False)
  assert 0.4 < ending.stopped_seconds < 3 and ending.restartable
  captured = capsys.readouterr()
  assert "step 1" in captured.out and "warning: shown" in captured.err
  assert "absl noise" not in captured.err  # only in the log
  log0 = open(logs[0]).read()
  assert "step 1" in log0 and "absl noise" in log0 and log0.startswith("==== ")
  assert "process 1 killed by SIGKILL; group stopped" in supervise.report(
      ending, str(tmp_path), logs[1])
  # Bad input is not worth a restart; the runtime's abort of a survivor is not the cause.
  assert not supervise.Ending(2, 0).restartable and not supervise.Ending(3, 0).restartable
  both = supervise.Group([({}, _python("import os; os.abort()")),
                          ({}, _python("import sys; sys.exit(5)"))], logs).start()
  time.sleep(1.0)
  assert both.wait().process == 1


def test_sweep_run_restarts_a_point_that_fails_with_a_fault(tmp_path, monkeypatch, capsys):
  # Each point's command fails once with a fault (exit 7) and then finishes; one
  # point fails with a non-finite loss (exit 3), which a restart would only repeat.
  sweep_dir = str(tmp_path / "sweep")
  runs = _points()[:3]
  script = ("import json, os, sys; w = sys.argv[1]; seen = os.path.join(w, 'seen'); "
            "first = not os.path.exists(seen); open(seen, 'a').close(); "
            "sys.exit(3) if w.endswith(sys.argv[2]) else None; "
            "sys.exit(7) if first else json.dump({'restarts': 0}, "
            "open(os.path.join(w, 'summary.json'), 'w'))")
  monkeypatch.setattr(sweep_run, "command", lambda base, d, r, python=None: _python(script) + [
      os.path.join(d, r.name), runs[2].name])
  counts = sweep_run.run_points("unused", sweep_dir, runs, parallel=2, max_restarts=1,
                                restart_backoff=0.1)
  assert counts == {"ok": 2, "failed": 1}, counts
  out = capsys.readouterr().out
  assert f"restart     {runs[0].name} (process 0 exit status 7; " in out
  assert "restart 1 of 1 in 0.1s" in out and f"restart     {runs[2].name}" not in out
  for r in runs[:2]:
    record, = [json.loads(l) for l in open(os.path.join(sweep_dir, r.name, "restarts.jsonl"))]
    assert record["restart"] == 1 and record["returncode"] == 7
    assert json.load(open(os.path.join(sweep_dir, r.name, "status.json")))["status"] == "ok"
  assert not os.path.exists(os.path.join(sweep_dir, runs[2].name, "restarts.jsonl"))


def test_sweep_run_runs_a_parent_listed_after_its_branch(tmp_path, monkeypatch, capsys):
  # A TPU VM's (or an array task's) list may hold a branch before its own parent: the
  # branch waits while the parent runs in the same process (it once waited first, forever).
  sweep_dir = str(tmp_path / "wsd")
  runs = {r.name: r for r in sweep_run.load("shakespeare_wsd_tiny")[1]}
  branch = runs["wsd-C4e8-N1.2e4"]
  parent = runs[branch.after]
  # Each point's command writes its checkpoint at the branch step and a summary.
  script = ("import json, os, sys; w = sys.argv[1]; "
            "os.makedirs(os.path.join(w, 'checkpoints', sys.argv[2])); "
            "json.dump({}, open(os.path.join(w, 'summary.json'), 'w'))")
  monkeypatch.setattr(sweep_run, "command", lambda base, d, r, python=None: _python(script) + [
      os.path.join(d, r.name), str(branch.at_step)])
  counts = sweep_run.run_points("unused", sweep_dir, [branch, parent], parents_elsewhere=True,
                                poll_seconds=0.1)
  assert counts == {"ok": 2}, (counts, capsys.readouterr().out)
  out = capsys.readouterr().out
  assert out.index(f"start       {parent.name}") < out.index(f"start       {branch.name}")


def _fake_slurm(tmp_path, srun_status: int | None) -> dict:
  """PATH with an srun that runs until SIGTERM (or exits with srun_status) and an
  scontrol that records its arguments, both writing to tmp_path/calls."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  calls = tmp_path / "calls"
  run = (f"exit {srun_status}" if srun_status is not None else
         f"trap 'kill $S; echo saved >> {calls}; exit 0' TERM\nsleep 60 & S=$!\nwait $S")
  # The tasks of srun's step: what `scancel --signal=TERM JOB` reaches (srun itself would
  # kill them at once).
  (bin_dir / "srun").write_text(f"#!/bin/bash\necho $$ > {tmp_path}/step.pid\n"
                                f"echo srun $@ >> {calls}\n{run}\n")
  (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho scontrol $@ >> {calls}\n")
  (bin_dir / "scancel").write_text(f"#!/bin/bash\nkill -TERM $(cat {tmp_path}/step.pid)\n")
  for f in ("srun", "scontrol", "scancel"):
    os.chmod(bin_dir / f, 0o755)
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77"}


def _slurm_script(tmp_path, capsys, workdir) -> str:
  path = str(tmp_path / "job.sbatch")
  assert slurm.main(["--max_restarts", "2", f"--repo={tmp_path}", f"--script={path}",
                     "--dry_run", "--", "--experiment=x", f"--workdir={workdir}"]) == 0
  text = capsys.readouterr().out.split(f"# {path}\n", 1)[1].rsplit("# then:", 1)[0]
  assert "#SBATCH --requeue" in text
  with open(path, "w") as f:
    f.write(text)
  return path


def _calls(tmp_path) -> list[str]:
  path = tmp_path / "calls"
  return path.read_text().splitlines() if path.exists() else []


def test_slurm_job_checkpoints_and_requeues_itself(tmp_path, capsys):
  workdir = tmp_path / "run"
  script = _slurm_script(tmp_path, capsys, str(workdir))
  env = _fake_slurm(tmp_path, None)
  # The time limit: SIGTERM to the batch shell reaches the run, which saves; then requeue.
  job = subprocess.Popen(["bash", script], env=env, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 30
  while not _calls(tmp_path) and time.monotonic() < deadline:
    time.sleep(0.05)
  job.send_signal(signal.SIGTERM)
  assert job.wait(timeout=30) == 0
  assert _calls(tmp_path) == [f"srun --error={workdir}/logs/process_%t.log python -m "
                              f"jaxlm.main --experiment=x --workdir={workdir}",
                              "saved", "scontrol requeue 77"]
  record, = [json.loads(l) for l in open(workdir / "restarts.jsonl")]
  assert record["restart"] == 1 and record["slurm_job"] == "77"
  assert "time limit or preemption" in record["ended"]
  # The limit reached: no requeue, and a line that says so.
  (tmp_path / "calls").unlink()
  job = subprocess.Popen(["bash", script], env={**env, "SLURM_RESTART_COUNT": "2"},
                         stderr=subprocess.PIPE, text=True)
  while not _calls(tmp_path):
    time.sleep(0.05)
  job.send_signal(signal.SIGTERM)
  assert job.wait(timeout=30) == 0 and "not requeued (2 of 2 requeues used" in job.stderr.read()
  assert _calls(tmp_path)[-1] == "saved"
  # A fault requeues; bad input (2) and a non-finite loss (3) do not; nor a finished run.
  for status, requeued in ((1, True), (2, False), (3, False)):
    (tmp_path / "calls").unlink()
    env = _fake_slurm(tmp_path, status)
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert done.returncode == status
    assert (f"error: the run ended with exit status {status}; each task's messages and "
            f"tracebacks are in {workdir}/logs/process_<task>.log") in done.stderr
    assert (_calls(tmp_path)[-1] == "scontrol requeue 77") == requeued, (status, done.stderr)
  (workdir / "summary.json").write_text("{}")
  (tmp_path / "calls").unlink()
  subprocess.run(["bash", script], env=_fake_slurm(tmp_path, 1), capture_output=True)
  assert "scontrol requeue 77" not in _calls(tmp_path)


def _children(pid: int) -> dict[int, str]:
  """{pid: command line} of the processes whose parent is pid."""
  out = {}
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      if ppid == pid:
        with open(f"/proc/{entry}/cmdline") as f:
          out[int(entry)] = f.read().replace("\0", " ")
    except (OSError, ValueError, IndexError):
      continue
  return out


def _logged_steps(workdir: str) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return max([json.loads(l).get("step", 0) for l in f if l.endswith("\n")], default=0)
  except (OSError, ValueError):
    return 0


def test_chaos_three_kills_and_restarts_end_like_an_uninterrupted_run(tmp_path):
  # Two processes; three times a random one is killed with SIGKILL at a random step.
  # With --max_restarts 3 the run finishes, and every logged loss equals (bitwise) an
  # uninterrupted two-process run's (which matches one process with two devices:
  # tests/test_prepare.py checks that).
  seed = random.randrange(10 ** 6)
  rng = random.Random(seed)
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS=xla_flags())
  args = [*TINY, "--set=train.steps=12", "--set=checkpoint.every=2"]
  launch = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes", "2",
            "--cpu_devices_per_process", "1"]
  chaos = str(tmp_path / "chaos")
  proc = subprocess.Popen([*launch, "--max_restarts", "3", "--restart_backoff", "0.2", "--",
                           *args, f"--workdir={chaos}"], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  kills = []
  try:
    for k in range(3):
      # Each segment resumes at its last checkpoint; kill 1-3 steps after it logs again.
      start = _logged_steps(chaos)
      target = min(start + rng.randint(1, 3), 9)
      deadline = time.monotonic() + 240
      while _logged_steps(chaos) < target and proc.poll() is None:
        assert time.monotonic() < deadline, f"seed {seed}: no step {target} in time"
        time.sleep(0.02)
      victim = rng.randrange(2)
      pids = [p for p, cmd in _children(proc.pid).items() if f"--process_id={victim}" in cmd]
      assert len(pids) == 1 and proc.poll() is None, (seed, k, pids)
      os.kill(pids[0], signal.SIGKILL)
      kills.append((victim, _logged_steps(chaos)))
      while len(_restarts(chaos)) <= k:
        assert time.monotonic() < deadline and proc.poll() is None, (seed, kills)
        time.sleep(0.02)
    out, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == 0, f"seed {seed}, kills {kills}:\n{err[-3000:]}"
  restarts = _restarts(chaos)
  assert [r["process"] for r in restarts] == [v for v, _ in kills], (seed, restarts, kills)
  assert all(r["ended"] == "killed by SIGKILL" and r["stopped_seconds"] < 5 for r in restarts)
  assert err.count("killed by SIGKILL; group stopped") == 3
  assert json.load(open(os.path.join(chaos, "summary.json")))["restarts"] == 3
  plain = str(tmp_path / "plain")
  done = subprocess.run([*launch, "--", *args, f"--workdir={plain}"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.count("step 12/12") == 1  # only process 0 prints
  assert _metrics(chaos) == _metrics(plain) and len(_metrics(plain)) == 12, (seed, kills)


def _restarts(workdir: str) -> list[dict]:
  try:
    return [json.loads(l) for l in open(os.path.join(workdir, "restarts.jsonl"))]
  except OSError:
    return []


def test_tpu_vm_restarts_a_run_that_failed_with_a_fault(tmp_path, capsys, monkeypatch):
  # A fake gcloud: the run fails with a fault twice, then finishes; bad input never repeats.
  calls = tmp_path / "calls"
  gcloud = tmp_path / "bin" / "gcloud"
  gcloud.parent.mkdir()
  gcloud.write_text(f"#!/bin/bash\necho \"$*\" >> {calls}\nn=$(wc -l < {calls})\n"
                    f"[ -n \"$FAIL_WITH\" ] && exit $FAIL_WITH\n[ $n -le 2 ] && exit 1\nexit 0\n")
  os.chmod(gcloud, 0o755)
  monkeypatch.setenv("PATH", f"{gcloud.parent}:{os.environ['PATH']}")
  args = ["--tpu", "t", "--zone", "z", "--max_restarts", "3", "--restart_backoff", "0", "--",
          "--experiment=x", "--workdir=gs://b/r"]
  assert tpu_vm.main(args) == 0 and len(calls.read_text().splitlines()) == 3
  err = capsys.readouterr().err
  assert "exit status 1 (a Python error); restart 1 of 3 in 0s" in err and "restart 2 of 3" in err
  # Each restart hands the run its record, for the run's own restarts.jsonl.
  runs = calls.read_text().splitlines()
  assert "--restart_record" not in runs[0]
  for n, line in enumerate(runs[1:], start=1):  # every restart so far, the newest last
    records = json.loads(line.split("--restart_record=", 1)[1].rsplit("'", 1)[0])
    assert len(records) == n and all(r["returncode"] == 1 for r in records), records
  calls.unlink()
  monkeypatch.setenv("FAIL_WITH", "2")
  assert tpu_vm.main(args) == 2 and len(calls.read_text().splitlines()) == 1
  assert "ended with exit status 2 (bad input); resume with" in capsys.readouterr().err
