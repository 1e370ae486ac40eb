"""run/loggers.py: TensorBoard and W&B hold what metrics.jsonl holds; a bar only on a terminal."""

import fcntl
import glob
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from wandb.proto import wandb_internal_pb2

from conftest import xla_flags
from jaxlm import config as config_lib
from jaxlm import config_io
from jaxlm.inference import evaluate
from jaxlm.run import loggers
from jaxlm.train import loop
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = tiny_config(**{"train.steps": 6, "train.log_every": 1, "train.eval_every": 3,
                        "checkpoint.every": 2, "checkpoint.keep": 5, "train.sample_tokens": 8,
                        "train.loggers": "stdout,jsonl,tensorboard,wandb",
                        "train.wandb_mode": "offline", "train.profile": "2:3",
                        "train.final_eval_batches": 8})


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _wandb_history(run_file):
  """History rows of an offline W&B run file (LevelDB-log blocks of Record protos)."""
  data, pos, buf, rows = open(run_file, "rb").read(), 7, b"", []
  while pos + 7 <= len(data):
    if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
      pos += 32768 - pos % 32768
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
    if kind in (1, 4):  # a whole record, or the last part of one
      record = wandb_internal_pb2.Record()
      record.ParseFromString(buf)
      buf = b""
      if record.WhichOneof("record_type") == "history":
        rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item})
  return rows


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
  """A 6-step run, then as if it had crashed after step 6 with only checkpoint 2 kept: resumed."""
  workdir = str(tmp_path_factory.mktemp("loggers") / "run")
  os.environ["WANDB_SILENT"] = "true"
  loop.run(loop.setup(CONFIG, workdir))
  first = _jsonl(workdir)
  for step in (4, 6):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  os.remove(os.path.join(workdir, "summary.json"))
  loop.run(loop.setup(CONFIG, workdir))
  return workdir, first


def test_tensorboard_holds_the_jsonl_scalars_once_per_step_after_a_resume(resumed_run):
  workdir, _ = resumed_run
  records = _jsonl(workdir)
  train = {r["step"]: r for r in records if "loss" in r}
  assert sorted(train) == [1, 2, 3, 4, 5, 6]  # the resumed segment relogged 3..6
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                           size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "tokens", "input_wait_seconds"):
    events = acc.Scalars(f"train/{key}")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6], key  # purged: each step once
    np.testing.assert_allclose([e.value for e in events], [train[s][key] for s in range(1, 7)],
                               rtol=1e-6, atol=1e-12, err_msg=key)
  evals = [r for r in records if "val_loss" in r]
  assert [e.step for e in acc.Scalars("eval/val_loss")] == [r["step"] for r in evals]
  np.testing.assert_allclose([e.value for e in acc.Scalars("eval/val_bpb")],
                             [r["val_bpb"] for r in evals], rtol=1e-6)
  # Per-layer statistics: in metrics.jsonl and as one chart each.
  stats = train[6]["stats"]
  L = CONFIG.model.n_layers
  assert len(stats["max_attention_logit"]) == L and stats["logits_rms"] > 0
  assert len(stats["layers.attn.wq"]["grad_norm"]) == L
  tags = set(acc.Tags()["scalars"])
  assert {f"grad_norm/layers.attn.wq/{i}" for i in range(L)} <= tags
  assert {"update_ratio/embed", "logits_rms", "max_attention_logit/1"} <= tags
  value = acc.Scalars("update_ratio/layers.mlp.w_in/1")[-1].value
  assert value == pytest.approx(stats["layers.mlp.w_in"]["update_ratio"][1], rel=1e-6)
  assert {"config/text_summary", "sample/text_summary"} <= set(acc.Tags()["tensors"])
  # train.profile=2:3 left a trace TensorBoard's profile plugin reads.
  assert glob.glob(os.path.join(workdir, "tensorboard", "plugins", "profile", "*", "*.xplane.pb"))


def test_evaluate_adds_its_reliability_diagram_to_the_run(resumed_run):
  workdir, _ = resumed_run
  assert evaluate.run(workdir, max_batches=4)["batches"] == 4
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                           size_guidance={"images": 0})
  acc.Reload()
  assert [e.step for e in acc.Images("reliability/validation")] == [6]


def test_wandb_offline_runs_hold_the_jsonl_scalars_in_one_run(resumed_run):
  workdir, first = resumed_run
  run_id = open(os.path.join(workdir, "wandb_id")).read().strip()
  segments = sorted(glob.glob(os.path.join(workdir, "wandb", f"offline-run-*-{run_id}")))
  assert len(segments) >= 2  # the resumed segment continued the same W&B run id
  rows = [row for seg in segments for row in _wandb_history(f"{seg}/run-{run_id}.wandb")]
  train = {r["step"]: r for r in _jsonl(workdir) if "loss" in r}
  logged = [(r["_step"], r["train/loss"]) for r in rows if "train/loss" in r]
  assert [s for s, _ in logged] == [1, 2, 3, 4, 5, 6, 3, 4, 5, 6]
  # Resumes are exact on CPU: the relogged steps repeat the same losses.
  assert all(loss == pytest.approx(train[s]["loss"], rel=1e-6) for s, loss in logged)
  assert any("grad_norm/layers.attn.wq/0" in r for r in rows)
  assert any("eval/val_loss" in r for r in rows) and any("sample" in k for r in rows for k in r)
  first_losses = {r["step"]: r["loss"] for r in first if "loss" in r}
  assert first_losses == {s: r["loss"] for s, r in train.items()}


def test_flat_scalars_tag_each_layer_and_statistic():
  stats = {"logits_rms": 2.0, "max_attention_logit": [1.0, 3.0],
           "layers.attn.wq": {"grad_norm": [0.5, 0.25]}, "embed": {"param_norm": 7.0}}
  assert loggers.flat_scalars(stats) == {
      "logits_rms": 2.0, "max_attention_logit/0": 1.0, "max_attention_logit/1": 3.0,
      "grad_norm/layers.attn.wq/0": 0.5, "grad_norm/layers.attn.wq/1": 0.25,
      "param_norm/embed": 7.0}


def _cli(workdir, tty: bool):
  """The tiny run through python -m jaxlm.main, its output from a pseudo-terminal or a pipe."""
  args = [sys.executable, "-m", "jaxlm.main", "--experiment=shakespeare_char",
          f"--workdir={workdir}", "--set=model.d_model=32", "--set=model.n_layers=1",
          "--set=model.n_heads=2", "--set=data.seq_len=32", "--set=model.max_seq_len=32",
          "--set=train.batch_size=8", "--set=train.steps=4", "--set=train.log_every=1",
          "--set=train.eval_every=2", "--set=train.eval_batches=1", "--set=checkpoint.every=2",
          "--set=train.sample_tokens=0", "--set=mesh.data=1", "--set=train.final_eval_batches=4"]
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT, COLUMNS="120")
  if not tty:
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300).stdout
  leader, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a window
  proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=follower, stderr=follower)
  os.close(follower)
  out = b""
  while True:
    try:
      chunk = os.read(leader, 65536)
    except OSError:  # the follower side closed: the process has ended
      break
    if not chunk:
      break
    out += chunk
  proc.wait(timeout=300)
  os.close(leader)
  return out.decode(errors="replace")


def test_progress_bar_on_a_terminal_and_plain_lines_in_a_pipe(tmp_path):
  shown = _cli(tmp_path / "tty", tty=True)
  bar = shown.replace("\r\n", "\n")  # the terminal's own line ends
  assert "\r" in bar and "4/4 [" in bar and "loss" in bar and "tok/s" in bar, shown[-2000:]
  assert "eval 2/4 | val_loss" in shown and "saving checkpoint 4" in shown
  piped = _cli(tmp_path / "pipe", tty=False)
  assert "\r" not in piped and "step 4/4 | loss" in piped and "eval 4/4 | val_loss" in piped


def test_logger_names_are_checked():
  with pytest.raises(config_lib.ConfigError, match="train.loggers='stdout,tb'"):
    config_io.apply_overrides(tiny_config(), ["train.loggers=stdout,tb"])
