"""Launchers: dry runs print exact commands; two local processes train together."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))

import local  # noqa: E402
import slurm  # noqa: E402
import sweep_local  # noqa: E402
import sweep_run  # noqa: E402
import sweep_slurm  # noqa: E402
import sweep_tpu_vm  # noqa: E402
import tpu_vm  # noqa: E402
from conftest import xla_flags
from jaxlm.scaling import collect

TINY_SWEEP = "shakespeare_isoflop_tiny"  # 6 points, seconds each

TINY = ["--experiment=shakespeare_char", "--set=model.d_model=32", "--set=model.n_layers=1",
        "--set=model.n_heads=2", "--set=data.seq_len=32", "--set=model.max_seq_len=32",
        "--set=train.batch_size=8", "--set=train.steps=4", "--set=train.log_every=1",
        "--set=train.eval_every=0", "--set=train.eval_batches=1", "--set=train.sample_tokens=0",
        "--set=checkpoint.every=0"]


def test_dry_runs_print_commands(capsys):
  assert local.main(["--num_processes", "2", "--port", "1234", "--dry_run", "--",
                     "--experiment=x"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2 and "--process_id=1" in out[1] and "localhost:1234" in out[0]
  assert slurm.main(["--nodes", "2", "--gpus_per_node", "4", "--dry_run", "--",
                     "--experiment=gpt2_small"]) == 0
  out = capsys.readouterr().out
  assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=4" in out
  assert "srun python -m jaxlm.main --experiment=gpt2_small" in out
  assert tpu_vm.main(["--tpu", "t", "--zone", "z", "--dry_run", "--", "--experiment=x"]) == 0
  out = capsys.readouterr().out
  assert "--worker=all" in out and "python -m jaxlm.main --experiment=x" in out


def _metrics(workdir):
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r["loss"] for r in records if "loss" in r]


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env["XLA_FLAGS"] = xla_flags()  # launch/local.py adds the device count
  two = str(tmp_path / "two")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "local.py"),
                         "--num_processes", "2", "--cpu_devices_per_process", "1", "--",
                         *TINY, f"--workdir={two}"], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("step 4/4") == 1  # only process 0 prints
  one = str(tmp_path / "one")
  env1 = dict(env, XLA_FLAGS=xla_flags(2), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "jaxlm.main", *TINY, f"--workdir={one}"],
                        env=env1, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = _metrics(two), _metrics(one)
  assert len(a) == 4 and len(b) == 4
  for x, y in zip(a, b):
    assert abs(x - y) <= 1e-4 * abs(y), (a, b)


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
  assert ('exec python launch/sweep_run.py --sweep=shakespeare_isoflop_tiny '
          f'--dir={sweep_dir} --name="${{NAMES[$SLURM_ARRAY_TASK_ID]}}"') in out
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
