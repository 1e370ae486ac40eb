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
it (k div n_s); the permutations come from a counter-based hash of (seed,
source, pass, document), sorted, so any pass is computed on its own and the
many passes a small source makes in one block in one vectorized call. A block's
documents are put in a random order, concatenated
(each ends with eos) and cut into windows of seq_len + 1 tokens at stride
seq_len, taken in a random order. Window i of the run is therefore a pure
function of (seed, data config, i): a resume is exact, on any number of
processes. Validation reads each source's validation split in order, every
row tagged with its source (a batch holds one source's rows; a capped
evaluation spreads its batches over each source), so metrics come per source.
Memory per process: 8 bytes per document of each source (where documents end),
and the current pass's order of each source's documents (4 bytes each).
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


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: a bijection of uint64 that scrambles every bit."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def permutations(seed: int, source: int, passes: np.ndarray, n: int) -> np.ndarray:
  """(len(passes), n) int32/int64: the order of a source's n documents in each pass."""
  with np.errstate(over="ignore"):
    key = _mix(_mix(_mix(np.uint64(seed)) ^ np.uint64(source))
               ^ np.asarray(passes, np.uint64))
    keys = _mix(key[:, None] ^ np.arange(n, dtype=np.uint64)[None, :])
  return np.argsort(keys, axis=1).astype(np.int32 if n < 2 ** 31 else np.int64)


def per_source(max_batches: int, n_sources: int) -> int:
  """Evaluation batches of each source when an evaluation is capped at max_batches (0: all)."""
  return max(max_batches // n_sources, 1) if max_batches else 0


def sources(config: DataConfig) -> list[tuple[str, DataConfig, float]]:
  """(name, a data config reading only that source, weight) of each source of data.mixture."""
  return [(name, dataclasses.replace(config, corpus=spec, corpora="", mixture=""), weight)
          for name, spec, weight in config_lib.parse_mixture(config.corpora, config.mixture)]


def stream(name: str, config: DataConfig, split: str, tok):
  """A source's split (pipeline.token_stream); its errors name the source's key."""
  try:
    return pipeline.token_stream(config, split, tok)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"data.corpora ({name}): {e}") from None


class Mixture:
  """The training windows of a mixture: example(i) for i = 0, 1, ... (no end)."""

  def __init__(self, streams: list, weights: list[float], seq_len: int, eos_id: int, seed: int,
               block_tokens: int = BLOCK_TOKENS):
    self.streams, self.T, self.eos_id, self.seed = streams, seq_len, eos_id, seed
    self.ends = [stream.document_ends() for stream in streams]  # where each document ends
    self.sizes = np.array([len(ends) for ends in self.ends], np.int64)
    mean = np.array([ends[-1] / len(ends) for ends in self.ends])
    p = np.asarray(weights) / mean
    p /= p.sum()  # the probability that a drawn document is source s's
    docs_per_block = max(block_tokens, 64 * (seq_len + 1)) / float(p @ mean)
    self.rate = p * max(docs_per_block, 1.0)  # documents of each source per block
    self._windows = [0]  # windows before block b, for the blocks counted so far
    self._lock = threading.RLock()
    self._orders = [{} for _ in streams]  # per source: {pass: order}, the last two passes
    self.block = functools.lru_cache(maxsize=4)(self._block)

  def _order(self, s: int, p: int) -> np.ndarray:
    """Source s's document order in pass p, cached for the last two passes asked."""
    cache = self._orders[s]
    if p not in cache:
      cache[p] = permutations(self.seed, s, np.array([p]), int(self.sizes[s]))[0]
      for old in [q for q in cache if q != p][:max(len(cache) - 2, 0)]:
        del cache[old]  # the oldest first
    return cache[p]

  def documents(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(source, document) of each document of block b, in the block's order."""
    # Documents of each source drawn before block b and before block b + 1.
    first, stop = (np.floor(self.rate * x).astype(np.int64) for x in (b, b + 1))
    src, doc = [], []
    with self._lock:
      for s, size in enumerate(self.sizes):
        k = np.arange(first[s], stop[s])
        passes = k // size
        d = np.empty(len(k), np.int64)
        if len(k) and passes[-1] - passes[0] > 1:  # a small source, many passes: at once
          every = permutations(self.seed, s, np.arange(passes[0], passes[-1] + 1), int(size))
          d[:] = every[passes - passes[0], k % size]
        else:
          for p in np.unique(passes):
            at = passes == p
            d[at] = self._order(s, int(p))[k[at] % size]
        src.append(np.full(len(k), s, np.int32))
        doc.append(d)
    order = np.random.default_rng([self.seed, 1, b]).permutation(sum(map(len, src)))
    return np.concatenate(src)[order], np.concatenate(doc)[order]

  def _spans(self, src: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each (source, document) starts in its source's stream, and its length."""
    starts, stops = np.empty(len(doc), np.int64), np.empty(len(doc), np.int64)
    for s, ends in enumerate(self.ends):
      at = src == s
      stops[at] = ends[doc[at]]
      starts[at] = np.where(doc[at] > 0, ends[np.maximum(doc[at] - 1, 0)], 0)
    return starts, stops - starts

  def _n_windows(self, b: int) -> int:
    return max(int(self._spans(*self.documents(b))[1].sum()) - 1, 0) // self.T

  def _block(self, b: int):
    """Block b: (its tokens as a stream with document ids, each token's source, the order
    of its windows)."""
    src, doc = self.documents(b)
    starts, lengths = self._spans(src, doc)
    tokens = [self.streams[s].window(int(start), int(n))[0]
              for s, start, n in zip(src, starts, lengths)]
    stream = pipeline.ArrayStream(
        np.concatenate(tokens).astype(np.int32),
        np.repeat(np.arange(1, len(doc) + 1, dtype=np.int32), lengths))
    n_windows = max(int(lengths.sum()) - 1, 0) // self.T
    order = np.random.default_rng([self.seed, 2, b]).permutation(n_windows)
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
  return Mixture([stream(name, c, "train", tok) for name, c, _ in parts],
                 [w for _, _, w in parts], config.seq_len, tok.eos_id, seed)


def train_dataset(config: DataConfig, tok, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Infinite dataset of this process's share of each global batch of mixture windows
  (as pipeline.train_dataset), each row with its tokens' `sources`."""
  local = pipeline.local_batch_size(batch_size, process_count)
  mix = mixture(config, tok, seed)
  ds = grain.MapDataset.range(1 << 62).map(mix.example)
  return ds[process_index::process_count].batch(local, drop_remainder=True)


def epochs(config: DataConfig, tok, seed: int, examples: int) -> dict[str, float]:
  """{source name: passes over its training documents} after `examples` windows."""
  names = [name for name, _, _ in sources(config)]
  return dict(zip(names, mixture(config, tok, seed).epochs(examples)))


def eval_batches(config: DataConfig, tok, batch_size: int, max_batches: int = 0,
                 process_index: int = 0, process_count: int = 1):
  """Each source's validation split in order (as pipeline.eval_batches), source after
  source, every row's `sources` its source's number; max_batches > 0 gives each
  source per_source(max_batches) batches spread over its own split."""
  parts = sources(config)
  for name, c, _ in parts:  # every source opened first: a missing one fails at once, named
    stream(name, c, "validation", tok)
  for s, (_, c, _) in enumerate(parts):
    batches = pipeline.eval_batches(c, tok, batch_size, per_source(max_batches, len(parts)),
                                    process_index=process_index, process_count=process_count)
    for batch in batches:
      yield {**batch, "sources": np.full(batch["inputs"].shape, s, np.int32)}
