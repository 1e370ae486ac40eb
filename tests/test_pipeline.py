import numpy as np
import pytest

from jaxlm.config import DataConfig
from jaxlm.data import pipeline, tokenizer

CFG = DataConfig(tokenizer="bytes", seq_len=64)
TOK = tokenizer.load_tokenizer("bytes")


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_batches_are_deterministic_for_a_seed():
  a = _take(pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, seed=1)), 3)
  b = _take(pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, seed=1)), 3)
  c = _take(pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, seed=2)), 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])


def test_iterator_state_resumes_exactly():
  it = pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, seed=0))
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, seed=0))
  fresh.set_state(state)
  for x, y in zip(expected, _take(fresh, 3)):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_batch_layout_and_targets_shift():
  batch = next(pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, seed=0)))
  index = batch.pop("index")  # each row's start in the split's token stream
  assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "weights"}
  assert all(v.shape == (4, 64) for v in batch.values())
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  tokens = pipeline.token_stream(CFG, "train", TOK).tokens
  for row, start in zip(batch["inputs"], index):
    np.testing.assert_array_equal(row, tokens[start:start + 64])


def test_packing_keeps_document_boundaries():
  tokens = np.array([5, 6, 7, 256, 8, 9, 256, 10, 11, 12], np.int32)
  docs = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 3], np.int32)
  stream = pipeline.ArrayStream(tokens, docs)
  ex = pipeline.make_example(stream, 1, 8, eos_id=256)
  np.testing.assert_array_equal(ex["inputs"], [6, 7, 256, 8, 9, 256, 10, 11])
  np.testing.assert_array_equal(ex["segment_ids"], [1, 1, 1, 2, 2, 2, 3, 3])
  np.testing.assert_array_equal(ex["positions"], [0, 1, 2, 0, 1, 2, 0, 1])
  # No loss on predicting the first token of the next document (input is eos).
  np.testing.assert_array_equal(ex["weights"], [1, 1, 0, 1, 1, 0, 1, 1])
  # A window past the end is padded with zero weight.
  tail = pipeline.make_example(stream, 6, 8, eos_id=256)
  np.testing.assert_array_equal(tail["weights"], [0, 1, 1, 0, 0, 0, 0, 0])
  assert tail["segment_ids"][-1] == 0


def test_eval_covers_every_target_once():
  tokens = pipeline.token_stream(CFG, "validation", TOK).tokens
  batches = list(pipeline.eval_batches(CFG, TOK, batch_size=32))
  weight = sum(b["weights"].sum() for b in batches)
  n_eos = int((tokens[:-1] == TOK.eos_id).sum())
  assert weight == len(tokens) - 1 - n_eos
  capped = list(pipeline.eval_batches(CFG, TOK, batch_size=32, max_batches=3))
  assert len(capped) == 3


def test_processes_read_disjoint_shares():
  full = next(pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, seed=0)))
  shares = [next(pipeline.train_iterator(pipeline.train_dataset(CFG, TOK, 4, 0, p, 2)))
            for p in range(2)]
  rows = {tuple(r) for r in full["inputs"]}
  assert {tuple(r) for s in shares for r in s["inputs"]} == rows


def test_vocab_mismatch_is_a_clear_error():
  with pytest.raises(ValueError, match="model.vocab_size=100 is smaller"):
    pipeline.tokenizer_for(CFG, 100)
