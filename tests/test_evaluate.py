"""Evaluation: loss, bits per byte, calibration, loss by position; the CLI writes JSON and PNG."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlm.inference import evaluate
from jaxlm.run import checkpoint
from jaxlm.run.load import load_run
from jaxlm.train import loop
from jaxlm.data import pipeline
from jaxlm.models import transformer
from tests.helpers import tiny_config
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A run saved at initialization; init_std 0.5 spreads confidences over the bins."""
  path = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(**{"train.batch_size": 64, "model.init_std": 0.5})
  r = loop.setup(config, path)
  state = r.trainer.init(jax.random.key(0))
  mngr = checkpoint.manager(path, 1, async_save=False)
  checkpoint.save(mngr, 0, state, pipeline.train_iterator(r.dataset).get_state(), config)
  mngr.wait_until_finished()
  mngr.close()
  return path


def _reference(params, config, tok, batches):
  """The same numbers in float64 numpy from the model's logits."""
  nll, w_all, conf, correct, pos = [], [], [], [], []
  for b in batches:
    logits = np.asarray(transformer.apply(params, b["inputs"], config.model,
                                          positions_BT=b["positions"],
                                          segment_ids_BT=b["segment_ids"]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    w = b["weights"] > 0
    nll.append(-np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0][w])
    conf.append(np.exp(logp.max(-1))[w])
    correct.append((logp.argmax(-1) == b["targets"])[w])
    pos.append(b["positions"][w])
    w_all.append(tok.token_bytes()[b["targets"]][w])
  nll, conf, correct, pos, nbytes = map(np.concatenate, (nll, conf, correct, pos, w_all))
  bins = np.minimum((conf * 15).astype(int), 14)
  ece = sum(abs(correct[bins == c].sum() - conf[bins == c].sum()) for c in range(15)) / len(nll)
  by_pos = [nll[pos == t].mean() for t in range(config.data.seq_len)]
  return {"loss": nll.mean(), "bits_per_byte": nll.sum() / math.log(2) / nbytes.sum(),
          "accuracy": correct.mean(), "ece": ece, "loss_by_position": by_pos,
          "counts": np.bincount(bins, minlength=15)}


def test_metrics_match_a_numpy_reference(workdir):
  config, tok, mesh, params, _ = load_run(workdir)
  got = evaluate.evaluate(params, config, tok, mesh, "validation", max_batches=2)
  batches = list(pipeline.eval_batches(config.data, tok, config.train.batch_size, 2))
  want = _reference(params, config, tok, batches)
  for key in ("loss", "bits_per_byte", "accuracy", "ece"):
    assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
  np.testing.assert_allclose(got["loss_by_position"], want["loss_by_position"], rtol=1e-4)
  assert [b["count"] for b in got["calibration_bins"]] == want["counts"].tolist()
  assert (want["counts"] > 0).sum() >= 3  # confidences spread over several bins
  assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "jaxlm.evaluate", *args], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_writes_json_and_reliability_diagram(workdir):
  out = _cli(f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "perplexity" in out.stdout and "ECE" in out.stdout
  result = json.load(open(os.path.join(workdir, "eval_validation.json")))
  assert result["split"] == "validation" and result["step"] == 0 and result["batches"] == 0
  assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
  # Byte tokenizer: each target but eos is one byte.
  assert result["bits_per_byte"] == pytest.approx(
      result["loss"] / math.log(2) * result["tokens"] / result["bytes"])
  stream = pipeline.token_stream(tiny_config().data, "validation",
                                 pipeline.tokenizer_for(tiny_config().data, 257))
  assert result["tokens"] == pytest.approx(len(stream) - 1, abs=10)  # the whole split
  assert sum(b["count"] for b in result["calibration_bins"]) == result["tokens"]
  assert 0 <= result["ece"] <= 1 and len(result["calibration_bins"]) == 15
  assert len(result["loss_by_position"]) == 32
  with open(os.path.join(workdir, "reliability_validation.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input_is_one_line_and_exit_2(workdir, tmp_path):
  out = _cli(f"--workdir={workdir}", "--split=test")
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr == "error: --split='test' is invalid: expected one of validation, train\n"
  (tmp_path / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    evaluate.run(str(tmp_path))
  with pytest.raises(ValueError, match="--batches=-1 is invalid"):
    evaluate.run(workdir, max_batches=-1)
