"""Mixtures of corpora: documents drawn by weight, packed, resumable; metrics per source."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxlm import config as config_lib, sharding
from jaxlm.data import mixture, pipeline, prepared
from jaxlm.data import tokenizer as tokenizer_lib
from jaxlm.inference import evaluate
from jaxlm.tasks import lm
from jaxlm.train import loop
from jaxlm.train.step import Trainer
from tests.helpers import tiny_config

EOS = 0


def _source(rng, n_docs: int, low: int, high: int, lo_len: int, hi_len: int):
  """A stream of n_docs documents of tokens in [low, high), each ended by eos."""
  docs = [np.append(rng.integers(low, high, rng.integers(lo_len, hi_len)), EOS)
          for _ in range(n_docs)]
  ids = np.repeat(np.arange(1, n_docs + 1), [len(d) for d in docs])
  return pipeline.ArrayStream(np.concatenate(docs).astype(np.int32), ids.astype(np.int32)), docs


def test_documents_are_drawn_by_token_share_whole_and_once_per_pass():
  rng = np.random.default_rng(0)
  # Source 0: many short documents (tokens 10-99); source 1: few long ones (100-199).
  (short, short_docs), (long, long_docs) = (_source(rng, 300, 10, 100, 5, 40),
                                            _source(rng, 20, 100, 200, 200, 600))
  mix = mixture.Mixture([short, long], [0.25, 0.75], seq_len=16, eos_id=EOS, seed=3,
                        block_tokens=2048)
  n = 3000
  rows = [mix.example(i) for i in range(n)]
  tokens = np.stack([r["inputs"] for r in rows])
  sources = np.stack([r["sources"] for r in rows])
  weights = np.stack([r["weights"] for r in rows])
  # Every token is tagged with the source it came from (its id range says which).
  real = tokens != EOS
  np.testing.assert_array_equal(sources[real], (tokens[real] >= 100).astype(np.int32))
  # Shares of the tokens trained on follow the weights, not the documents' counts.
  share = np.mean(sources[weights > 0] == 1)
  assert abs(share - 0.75) < 0.03, share
  # Window i is a pure function of i: another instance, in another order, agrees.
  again = mixture.Mixture([short, long], [0.25, 0.75], 16, EOS, 3, block_tokens=2048)
  for i in (2999, 17, 1500, 0):
    for k in rows[i]:
      np.testing.assert_array_equal(again.example(i)[k], rows[i][k])
  # Documents are drawn whole, each once per pass over its source: after any number of
  # blocks, every document of a source was drawn q or q + 1 times (q: finished passes).
  drawn = {0: [], 1: []}
  for b in range(40):
    src, doc = mix.documents(b)
    for s, docs in ((0, short_docs), (1, long_docs)):
      drawn[s] += list(doc[src == s])
      counts = np.bincount(drawn[s], minlength=len(docs))
      q = len(drawn[s]) // len(docs)
      assert set(counts) <= {q, q + 1}, (b, s, q, set(counts))
  assert len(drawn[1]) > 3 * len(long_docs) and len(drawn[0]) > 3 * len(short_docs)
  assert drawn[1][:5] != drawn[1][20:25]  # each pass in a new order
  stream, _, _ = mix.block(0)
  src, doc = mix.documents(0)
  expect = np.concatenate([(short_docs, long_docs)[s][d] for s, d in zip(src, doc)])
  np.testing.assert_array_equal(stream.tokens, expect)
  # Epochs: the passes over each source the first n windows made.
  epochs = mix.epochs(n)
  trained = [np.sum(weights * (sources == s)) for s in (0, 1)]
  sizes = [sum(map(len, short_docs)), sum(map(len, long_docs))]
  for s in (0, 1):
    assert abs(epochs[s] - trained[s] / sizes[s]) < 0.1 * epochs[s] + 0.05, (epochs, s)


def test_bad_mixtures_name_the_key():
  with pytest.raises(config_lib.ConfigError, match=r"data.mixture='a:1,c:2' is invalid.*"
                     r"one of data.corpora \(a, b\)"):
    config_lib.DataConfig(corpora="a=shakespeare;b=prepared:/x", mixture="a:1,c:2")
  with pytest.raises(config_lib.ConfigError, match="data.mixture='a:-1'"):
    config_lib.DataConfig(corpora="a=shakespeare", mixture="a:-1")
  with pytest.raises(config_lib.ConfigError, match=r"data.corpora \(b\)='nope:x' is invalid"):
    config_lib.DataConfig(corpora="a=shakespeare;b=nope:x", mixture="a:1")
  with pytest.raises(config_lib.ConfigError, match="data.corpora='a=shakespeare;a=shakespeare'"):
    config_lib.DataConfig(corpora="a=shakespeare;a=shakespeare", mixture="a:1")
  with pytest.raises(config_lib.ConfigError, match="data.mixture='a:1e308,b:1e308'"):
    config_lib.DataConfig(corpora="a=shakespeare;b=shakespeare", mixture="a:1e308,b:1e308")
  missing = lm.LanguageModeling(tiny_config(**{
      "data.corpora": "a=shakespeare;b=prepared:/nonexistent", "data.mixture": "a:1,b:1"}))
  bytes_tok = tokenizer_lib.load_tokenizer("bytes")
  for read in (lambda: missing.train_dataset(bytes_tok, 0), lambda: missing.eval_batches(
      bytes_tok, 1).__next__()):
    with pytest.raises(FileNotFoundError, match=r"data.corpora \(b\): data.corpus=prepared:"):
      read()
  with pytest.raises(config_lib.ConfigError, match="seed=-1 is invalid"):  # seeds the blocks
    tiny_config(seed=-1)
  with pytest.raises(config_lib.ConfigError, match="data.mixture=.*task.kind='classify'"):
    tiny_config(**{"data.corpora": "a=shakespeare", "data.mixture": "a:1",
                   "task.kind": "classify"})


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  """Two prepared byte-level corpora: this package's data and tasks modules."""
  root, out = os.path.dirname(config_lib.__file__), tmp_path_factory.mktemp("mixture")
  for name in ("data", "tasks"):
    prepared.prepare(f"files:{root}/{name}/*.py", str(out / name),
                     prepared.TokenizerSpec("bytes"), prepared.Options(validation_fraction=0.3))
  return {name: f"prepared:{out / name}" for name in ("data", "tasks")}


def _config(corpora: dict, **dotted):
  return tiny_config(**{"data.corpora": ";".join(f"{k}={v}" for k, v in corpora.items()),
                        "data.mixture": "data:3,tasks:1", **dotted})


def test_validation_is_summed_per_source_and_weighted(corpora):
  config = _config(corpora)
  tok = tokenizer_lib.load_tokenizer("bytes")
  trainer = Trainer(config, sharding.make_mesh(config.mesh), tok.token_bytes())
  params = trainer.init(jax.random.key(0)).params
  mixed = trainer.run_eval(params, trainer.task.eval_batches(tok, 0))
  # A capped evaluation still reads every source (its own share of the batches).
  capped = list(trainer.task.eval_batches(tok, 1))
  assert [int(b["sources"][0, 0]) for b in capped] == [0, 1]
  assert set(trainer.run_eval(params, capped)) == set(mixed)
  for name, spec in corpora.items():
    one = config_lib.replace(config, **{"data.corpus": spec, "data.corpora": "",
                                        "data.mixture": ""})
    alone = Trainer(one, trainer.mesh, tok.token_bytes())
    want = alone.run_eval(params, alone.task.eval_batches(tok, 0))
    for key in ("val_loss", "val_bpb"):
      assert abs(mixed[f"{key}/{name}"] - want[key]) < 1e-5 * want[key], (name, key)
  for key in ("val_loss", "val_bpb"):
    assert mixed[key] == pytest.approx(0.75 * mixed[f"{key}/data"]
                                       + 0.25 * mixed[f"{key}/tasks"])
  assert isinstance(trainer.task, lm.LanguageModeling)
  # python -m jaxlm.evaluate's evaluation: the same per source, and their weighted mean.
  full = evaluate.evaluate(params, config, tok, trainer.mesh)
  for name in corpora:
    assert full["sources"][name]["loss"] == pytest.approx(mixed[f"val_loss/{name}"], rel=1e-5)
  assert full["mixture"]["loss"] == pytest.approx(mixed["val_loss"], rel=1e-5)
  assert full["tokens"] == sum(s["tokens"] for s in full["sources"].values())


def test_a_mixture_run_logs_sources_and_resumes_exactly(corpora, tmp_path):
  config = _config(corpora, **{"train.steps": 6, "checkpoint.every": 3,
                                   "train.eval_every": 3})
  first = str(tmp_path / "run")
  summary = loop.run(loop.setup(config, first))
  assert set(summary["epochs"]) == {"data", "tasks"} and summary["epochs"]["tasks"] > 0
  assert {"final_val_loss/data", "final_val_bpb/tasks"} <= set(summary)
  rows = [json.loads(l) for l in open(os.path.join(first, "metrics.jsonl"))]
  assert any("val_loss/tasks" in r for r in rows)
  for r in (r for r in rows if "loss" in r):  # each source's training loss: the batch's
    parts = [r["stats"][f"loss/{name}"] for name in ("data", "tasks")]  # is their mean
    assert min(parts) <= r["loss"] <= max(parts), r
  losses = [r["loss"] for r in rows if "loss" in r]
  # Resumed from checkpoint 3: the same batches, so the same losses.
  shutil.rmtree(os.path.join(first, "checkpoints", "6"))
  os.remove(os.path.join(first, "summary.json"))
  loop.run(loop.setup(config, first))
  again = [json.loads(l)["loss"] for l in open(os.path.join(first, "metrics.jsonl"))
           if "loss" in json.loads(l)]
  assert again == losses


@pytest.mark.parametrize("mesh", [dict(data=1), dict(data=2)], ids=["1", "data2"])
def test_each_sources_loss_is_exact_over_microbatches(corpora, mesh):
  # A source's mean loss in a part is weighted by that source's tokens in it (tokens/NAME),
  # not by the part's: over 4 microbatches (and data groups) it equals the whole batch's,
  # also where a part holds few or none of a source's rows.
  dotted = {"train.batch_size": 16, **{f"mesh.{k}": v for k, v in mesh.items()}}
  rng = np.random.default_rng(0)
  stats = {}
  for k in (1, 4):
    config = _config(corpora, **dotted, **{"train.microbatches": k})
    tok = tokenizer_lib.load_tokenizer("bytes")
    trainer = Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:mesh["data"]]),
                      tok.token_bytes())
    shapes = trainer.task.batch_shapes(16)
    if k == 1:
      batch = {name: rng.integers(0, 200, shape).astype(dtype)
               for name, (shape, dtype) in shapes.items()}
      batch["weights"] = np.ones_like(batch["weights"])
      batch["sources"] = np.zeros_like(batch["sources"])
      batch["sources"][[1, 6, 7]] = 1  # the second source in a few rows only
    _, metrics = trainer.step(trainer.init(jax.random.key(0)), trainer.device_batch(batch))
    stats[k] = {name: float(v) for name, v in metrics["stats"].items()
                if name.startswith(("loss/", "tokens/"))}
  assert stats[4]["tokens/tasks"] == 3 * 32 and set(stats[4]) == set(stats[1])
  for name, value in stats[1].items():
    assert stats[4][name] == pytest.approx(value, rel=1e-5), name
