"""Mixtures of corpora: training documents drawn from named sources by weight, then packed.

`data.corpora` names corpora (`NAME=SPEC;...`, each SPEC as `data.corpus`) and
`data.mixture` weighs them (`NAME:WEIGHT,...`, normalized): a weight is the
source's expected share of the training tokens. Whole documents are drawn,
source s with probability proportional to its weight over its mean document
length, so long-document sources are not over-sampled.

The drawn documents form blocks of about BLOCK_TOKENS tokens. Block b holds
floor(r_s (b + 1)) - floor(r_s b) documents of source s (r_s: its documents per
block), so the documents of s drawn before block b, floor(r_s b), are known
without drawing the blocks before: source s's k-th document is document
k mod n_s of a permutation of its n_s documents, drawn anew for each pass over
it (k div n_s). A block's documents are put in a random order, concatenated
(each ends with eos) and cut into windows of seq_len + 1 tokens at stride
seq_len, taken in a random order. Window i of the run is therefore a pure
function of (seed, data config, i): a resume is exact, on any number of
processes. Validation reads each source's validation split in order, every
row tagged with its source, so metrics come per source.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import threading

import grain
import numpy as np

from jaxlm import config as config_lib
from jaxlm.config import DataConfig
from jaxlm.data import pipeline

BLOCK_TOKENS = 1 << 20  # tokens a block holds, about: 4 MB of int32 tokens


def sources(config: DataConfig) -> list[tuple[str, DataConfig, float]]:
  """(name, a data config reading only that source, weight) of each source of data.mixture."""
  return [(name, dataclasses.replace(config, corpus=spec, corpora="", mixture=""), weight)
          for name, spec, weight in config_lib.parse_mixture(config.corpora, config.mixture)]


class Mixture:
  """The training windows of a mixture: example(i) for i = 0, 1, ... (no end)."""

  def __init__(self, streams: list, weights: list[float], seq_len: int, eos_id: int, seed: int,
               block_tokens: int = BLOCK_TOKENS):
    self.streams, self.T, self.eos_id, self.seed = streams, seq_len, eos_id, seed
    self.spans = [stream.spans() for stream in streams]
    self.sizes = np.array([len(starts) for starts, _ in self.spans], np.int64)
    mean = np.array([np.mean(stops - starts) for starts, stops in self.spans])
    p = np.asarray(weights) / mean
    p /= p.sum()  # the probability that a drawn document is source s's
    docs_per_block = max(block_tokens, 64 * (seq_len + 1)) / float(p @ mean)
    self.rate = p * max(docs_per_block, 1.0)  # documents of each source per block
    self._windows = [0]  # windows before block b, for the blocks counted so far
    self._lock = threading.Lock()
    self._order = functools.lru_cache(maxsize=2 * len(streams))(self._permutation)
    self.block = functools.lru_cache(maxsize=4)(self._block)

  def _permutation(self, source: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, 0, source, epoch]).permutation(self.sizes[source])

  def _drawn(self, block: float) -> np.ndarray:
    """Documents of each source drawn before `block`."""
    return np.floor(self.rate * block).astype(np.int64)

  def documents(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, document) of each document of block b, in the block's order."""
    first, stop = self._drawn(b), self._drawn(b + 1)
    src, doc = [], []
    for s, size in enumerate(self.sizes):
      k = np.arange(first[s], stop[s])
      d = np.empty_like(k)
      for epoch in np.unique(k // size):
        at = k // size == epoch
        d[at] = self._order(s, int(epoch))[k[at] % size]
      src.append(np.full(len(k), s, np.int32))
      doc.append(d)
    order = np.random.default_rng([self.seed, 1, b]).permutation(sum(map(len, src)))
    return np.concatenate(src)[order], np.concatenate(doc)[order]

  def _lengths(self, src: np.ndarray, doc: np.ndarray) -> np.ndarray:
    out = np.empty(len(doc), np.int64)
    for s, (starts, stops) in enumerate(self.spans):
      at = src == s
      out[at] = stops[doc[at]] - starts[doc[at]]
    return out

  def _n_windows(self, b: int) -> int:
    return max(int(self._lengths(*self.documents(b)).sum()) - 1, 0) // self.T

  def _block(self, b: int):
    """Block b: (its tokens as a stream with document ids, each token's source, the order
    of its windows)."""
    src, doc = self.documents(b)
    lengths = self._lengths(src, doc)
    tokens = [self.streams[s].window(int(self.spans[s][0][d]), int(n))[0]
              for s, d, n in zip(src, doc, lengths)]
    stream = pipeline.ArrayStream(
        np.concatenate(tokens).astype(np.int32),
        np.repeat(np.arange(1, len(doc) + 1, dtype=np.int32), lengths))
    order = np.random.default_rng([self.seed, 2, b]).permutation(self._n_windows(b))
    return stream, np.repeat(src, lengths), order

  def locate(self, i: int) -> tuple[int, int]:
    """(block, window within it) of the run's window i."""
    with self._lock:
      while self._windows[-1] <= i:
        self._windows.append(self._windows[-1] + self._n_windows(len(self._windows) - 1))
      b = bisect.bisect_right(self._windows, i) - 1
      return b, i - self._windows[b]

  def example(self, i: int) -> dict:
    b, j = self.locate(i)
    stream, source, order = self.block(b)
    start = int(order[j]) * self.T
    return {**pipeline.make_example(stream, start, self.T, self.eos_id),
            "sources": source[start:start + self.T].astype(np.int32), "index": np.int64(i)}

  def epochs(self, windows: int) -> list[float]:
    """Passes over each source's documents made by the first `windows` windows."""
    b, j = self.locate(windows)
    drawn = self.rate * (b + j / max(self._windows[b + 1] - self._windows[b], 1))
    return [float(x) for x in drawn / self.sizes]


@functools.lru_cache(maxsize=4)
def mixture(config: DataConfig, tok, seed: int) -> Mixture:
  parts = sources(config)
  return Mixture([pipeline.token_stream(c, "train", tok) for _, c, _ in parts],
                 [w for _, _, w in parts], config.seq_len, tok.eos_id, seed)


def train_dataset(config: DataConfig, tok, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Infinite dataset of this process's share of each global batch of mixture windows
  (as pipeline.train_dataset), each row with its tokens' `sources`."""
  if batch_size % process_count:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes")
  mix = mixture(config, tok, seed)
  ds = grain.MapDataset.range(1 << 62).map(mix.example)
  if process_count > 1:
    ds = ds[process_index::process_count]
  return ds.batch(batch_size // process_count, drop_remainder=True)


def epochs(config: DataConfig, tok, seed: int, examples: int) -> dict[str, float]:
  """{source name: passes over its training documents} after `examples` windows."""
  names = [name for name, _, _ in sources(config)]
  return dict(zip(names, mixture(config, tok, seed).epochs(examples)))


def eval_batches(config: DataConfig, tok, batch_size: int, max_batches: int = 0,
                 process_index: int = 0, process_count: int = 1):
  """Each source's validation split in order (as pipeline.eval_batches), source after
  source, every row's `sources` its source's number."""
  rows = []
  for s, (_, c, _) in enumerate(sources(config)):
    stream = pipeline.token_stream(c, "validation", tok)
    rows += [(s, stream, int(start)) for start in range(0, len(stream) - 1, config.seq_len)]

  def row(i):
    s, stream, start = rows[i]
    example = pipeline.make_example(stream, start, config.seq_len, tok.eos_id)
    return {**example, "sources": np.full(config.seq_len, s, np.int32)}

  return pipeline.batch_rows(row, len(rows), batch_size, max_batches, process_index,
                             process_count)
