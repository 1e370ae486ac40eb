"""Launchers: dry runs print exact commands; two local processes train together."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))

import local  # noqa: E402
import slurm  # noqa: E402
import tpu_vm  # noqa: E402

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
  env.pop("XLA_FLAGS", None)
  two = str(tmp_path / "two")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "local.py"),
                         "--num_processes", "2", "--cpu_devices_per_process", "1", "--",
                         *TINY, f"--workdir={two}"], env=env, cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("step 4/4") == 1  # only process 0 prints
  one = str(tmp_path / "one")
  env1 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "jaxlm.main", *TINY, f"--workdir={one}"],
                        env=env1, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = _metrics(two), _metrics(one)
  assert len(a) == 4 and len(b) == 4
  for x, y in zip(a, b):
    assert abs(x - y) <= 1e-4 * abs(y), (a, b)
