"""The command line end to end, in subprocesses, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--set=model.d_model=32", "--set=model.n_layers=1", "--set=model.n_heads=2",
        "--set=data.seq_len=32", "--set=model.max_seq_len=32", "--set=train.batch_size=8",
        "--set=train.steps=4", "--set=train.log_every=2", "--set=train.eval_every=2",
        "--set=train.eval_batches=2", "--set=checkpoint.every=2", "--set=train.sample_tokens=8",
        "--set=train.final_eval_batches=4",
        "--set=mesh.data=1"]


def _main(*args, env_extra=None):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1),
             PYTHONPATH=ROOT, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "jaxlm.main", *args], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=600)


def test_default_experiment_end_to_end_then_resume(tmp_path):
  workdir = str(tmp_path / "run")
  out = _main("--experiment=shakespeare", f"--workdir={workdir}", *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 4/4" in out.stdout and "val_bpb" in out.stdout and "sample:" in out.stdout
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["model"]["d_model"] == 32 and config["name"] == "shakespeare"
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [l for l in lines if "loss" in l]
  eval_lines = [l for l in lines if "val_loss" in l]
  assert [l["step"] for l in train_lines] == [2, 4]
  assert {"step", "loss", "lr", "tokens_per_sec"} <= set(train_lines[0])
  # Steps 1 and 3 ran Trainer.unlogged_step; the log steps carry the statistics.
  assert all(len(l["stats"]["max_attention_logit"]) == 1 for l in train_lines)
  assert {"step", "val_loss", "val_bpb"} <= set(eval_lines[-1])
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  for key in ("steps", "final_val_loss", "final_val_bpb", "params", "non_embedding_params",
              "tokens", "flops", "wall_seconds"):
    assert key in summary
  assert summary["tokens"] == 4 * 8 * 32 and summary["restarts"] == 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  # Same command again: resumes the finished run instead of starting over.
  again = _main("--experiment=shakespeare", f"--workdir={workdir}", *TINY)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 4" in again.stdout


@pytest.mark.parametrize("args,message", [
    (["--experiment=shakespear"], "unknown experiment 'shakespear'; did you mean shakespeare"),
    (["--experiment=shakespeare", "--set=model.dmodel=3"], "did you mean model.d_model"),
    (["--experiment=shakespeare", "--set=train.steps=many"], "train.steps='many' is not a valid int"),
    (["--experiment=shakespeare", "--set=data.seq_len=4096"], "data.seq_len=4096 is invalid"),
    (["--experiment=shakespeare", "--set=data.tokenizer_path=/nope.model"], "/nope.model"),
    (["--experiment=shakespeare", "--set=train.nonfinite=ignore"],
     "train.nonfinite='ignore' is invalid: expected one of stop, skip"),
    (["--experiment=shakespeare", "--resume"], "holds no run (no config.json)"),
    (["--experiment=shakespeare", "--resume", "--overwrite"], "exclude each other"),
    ([], "--experiment is required"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
  out = _main(*args, f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr
  assert "Traceback" not in out.stderr
  assert not os.path.exists(tmp_path / "w")


def test_list_and_dry_run():
  out = _main("--list")
  assert out.returncode == 0 and "shakespeare" in out.stdout and "gpt2_small" in out.stdout
  out = _main("--experiment=shakespeare", "--dry_run", *TINY)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "params" in out.stdout and "FLOPs/step" in out.stdout and "XLA temporaries" in out.stdout


def test_workdir_of_another_experiment_is_refused_and_left_alone(tmp_path):
  from jaxlm import registry
  from jaxlm.train.workdir import prepare_workdir
  workdir = tmp_path / "w"
  prepare_workdir(registry.experiment("shakespeare_char"), str(workdir))
  before = (workdir / "config.json").read_text()
  out = _main("--experiment=shakespeare", f"--workdir={workdir}", *TINY)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "holds a run of 'shakespeare_char', not 'shakespeare'," in out.stderr
  assert "--overwrite to start over" in out.stderr and "Traceback" not in out.stderr
  assert os.listdir(workdir) == ["config.json"] and (workdir / "config.json").read_text() == before


def test_missing_corpus_file_is_one_line_and_exit_2(tmp_path):
  # As if the packaged asset were gone: point the corpus loader at a missing file.
  code = ("import sys; from jaxlm.data import corpus; corpus.DEFAULT_PATH = sys.argv[1]; "
          "from jaxlm.cli.train import entry; sys.argv = ['jaxlm.main', *sys.argv[2:]]; entry()")
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "gone.jsonl.xz"),
                        "--experiment=shakespeare", f"--workdir={tmp_path / 'w'}", *TINY],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"corpus file {tmp_path / 'gone.jsonl.xz'} not found" in out.stderr
  assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "w")
