"""grain input pipelines: tokenize, pack, shuffle, batch, shard by process.

The documents of a split are tokenized once and concatenated, each followed by
the end-of-sequence id, into one stream: in memory for the embedded corpus
(ArrayStream), memory-mapped from prepared shards for `files:`, `hf:` and
`prepared:` corpora (jaxlm/data/prepared.py; a `files:` or `hf:` corpus is
prepared into data.cache_dir on first use and reused while it is unchanged).
Training draws windows of seq_len + 1 tokens from it (inputs and next-token
targets), in a new random order and at a new random offset each epoch; packing
keeps document boundaries as segment ids, so attention never crosses documents
and positions restart in each one.
Evaluation reads the split's windows in order, each target token exactly once.

A batch is a dict of (B, T) numpy arrays: `inputs`, `targets`, `segment_ids`,
`positions` (int32) and `weights` (float32; 0 where a target is padding or the
first token of the next document).
"""

from __future__ import annotations

import functools
import os

import grain
import numpy as np

from jaxlm import config as config_lib
from jaxlm.config import DataConfig
from jaxlm.data import corpus as corpus_lib
from jaxlm.data import prepared
from jaxlm.data import tokenizer as tokenizer_lib


def tokenizer_for(config: DataConfig, vocab_size: int) -> tokenizer_lib.Tokenizer:
  """The tokenizer a data config names, checked against the model's vocabulary."""
  tok = tokenizer_lib.load_tokenizer(config.tokenizer, config.tokenizer_path,
                                     config.vocab_size or vocab_size)
  if tok.vocab_size > vocab_size:
    raise ValueError(f"model.vocab_size={vocab_size} is smaller than the tokenizer's "
                     f"vocabulary ({tok.vocab_size}, data.tokenizer={config.tokenizer!r}); "
                     f"set model.vocab_size >= {tok.vocab_size}")
  return tok


class ArrayStream:
  """A split held in memory: len() tokens; window(start, n) -> (tokens, document ids)."""

  def __init__(self, tokens: np.ndarray, docs: np.ndarray):
    self.tokens, self.docs = tokens, docs

  def __len__(self) -> int:
    return len(self.tokens)

  def window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    return self.tokens[start:start + length], self.docs[start:start + length]

  def document_ends(self) -> np.ndarray:
    """int64: where each document ends (the offset after its last token)."""
    change = np.flatnonzero(np.diff(self.docs)) + 1
    return np.concatenate([change, [len(self.docs)]]).astype(np.int64)


@functools.lru_cache(maxsize=8)
def _embedded(split: str, tok: tokenizer_lib.Tokenizer) -> ArrayStream:
  works = corpus_lib.load_works(split)
  tokens, docs = [], []
  for i, work in enumerate(works, start=1):
    ids = np.append(tok.encode(work.text).astype(np.int32), np.int32(tok.eos_id))
    tokens.append(ids)
    docs.append(np.full(len(ids), i, np.int32))
  return ArrayStream(np.concatenate(tokens), np.concatenate(docs))


@functools.lru_cache(maxsize=8)
def _prepared(config: DataConfig, tok: tokenizer_lib.Tokenizer) -> str:
  """The prepared directory of config.corpus, preparing a files: corpus on first use."""
  kind, arg = config_lib.parse_corpus(config.corpus)
  if kind == "prepared":
    return arg
  spec = prepared.TokenizerSpec(config.tokenizer, config.tokenizer_path, tok.vocab_size)
  options = prepared.Options(config.text_field, config.validation_fraction,
                             config.hf_config, config.hf_split)
  source = prepared.Source.of(config.corpus, options)
  cache = config.cache_dir or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxlm", "prepared")
  out = os.path.join(cache, prepared.fingerprint(source, tok, options))
  if not os.path.exists(os.path.join(out, prepared.MANIFEST)):
    print(f"preparing data.corpus={config.corpus} ({len(source.shards)} shards) into {out}",
          flush=True)
  manifest = prepared.prepare(config.corpus, out, spec, options,
                              workers=min(os.cpu_count() or 1, len(source.shards)))
  counts = ", ".join(f"{s} {manifest['splits'][s]['tokens']:,} tokens" for s in prepared.SPLITS)
  print(f"data.corpus={config.corpus}: {counts} (prepared in {out})", flush=True)
  return out


def token_stream(config: DataConfig, split: str, tok):
  """A whole split as one stream (len, window), each document ended by eos."""
  if config.corpus == "shakespeare":
    return _embedded(split, tok)
  return _store(_prepared(config, tok), split, tok)


_store = functools.lru_cache(maxsize=8)(prepared.TokenStore)


def local_batch_size(batch_size: int, process_count: int) -> int:
  """The rows of each global batch that one process reads."""
  if batch_size % process_count:
    raise ValueError(f"train.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes")
  return batch_size // process_count


def make_example(stream, start: int, seq_len: int, eos_id: int) -> dict:
  """One packed example from stream[start : start + seq_len + 1], zero-padded at the end."""
  window, doc = stream.window(start, seq_len + 1)
  valid = len(window)
  if valid < seq_len + 1:  # the stream's end: most windows are whole (np.pad copies)
    window, doc = (np.pad(a, (0, seq_len + 1 - valid)) for a in (window, doc))
  inputs, targets = window[:-1], window[1:]
  segment_ids = doc[:-1]
  # Position within the document, restarting where the segment id changes.
  idx = np.arange(seq_len, dtype=np.int32)
  starts = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  positions = idx - np.maximum.accumulate(np.where(starts, idx, 0))
  weights = ((idx + 1 < valid) & (inputs != eos_id) & (segment_ids > 0)).astype(np.float32)
  return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32),
          "segment_ids": segment_ids.astype(np.int32), "positions": positions.astype(np.int32),
          "weights": weights}


def windows_per_epoch(config: DataConfig, tok) -> int:
  """Training windows of data.seq_len + 1 tokens in one pass over the split: its tokens
  less one, in windows, less one window of room for the epoch's random offset."""
  return (len(token_stream(config, "train", tok)) - 1) // config.seq_len - 1


def train_dataset(config: DataConfig, tok, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Infinite dataset of this process's share of each global batch of training windows.

  Global batch k holds windows [k*batch_size, (k+1)*batch_size) of the shuffled
  sequence; process p gets every process_count-th of them from offset p, so the
  processes together read each window once and none reads another's.
  """
  local = local_batch_size(batch_size, process_count)
  stream = token_stream(config, "train", tok)
  T = config.seq_len
  n = windows_per_epoch(config, tok)
  if n < batch_size:
    raise ValueError(f"data.seq_len={T} with train.batch_size={batch_size} needs "
                     f"{batch_size * T} training tokens; the split has {len(stream)}")
  offsets = np.random.default_rng(seed).integers(0, T, size=1024)

  def example(index, window):
    start = window * T + int(offsets[(index // n) % len(offsets)])
    # "index": where the row starts in the split's token stream (the loop records it
    # with a loss spike, then drops it before the step).
    return {**make_example(stream, start, T, tok.eos_id), "index": np.int64(start)}

  ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None).map_with_index(example)
  return ds[process_index::process_count].batch(local, drop_remainder=True)


def train_iterator(dataset: grain.MapDataset):
  """A checkpointable iterator (get_state/set_state) with light prefetching."""
  options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
  return iter(dataset.to_iter_dataset(options))


def eval_batches(config: DataConfig, tok, batch_size: int, max_batches: int = 0,
                 split: str = "validation", process_index: int = 0, process_count: int = 1):
  """Batches covering the split in order (each target once); the last is padded.

  max_batches > 0 keeps that many batches, spread evenly over the split.
  """
  stream = token_stream(config, split, tok)
  T = config.seq_len
  starts = np.arange(0, len(stream) - 1, T)
  return batch_rows(lambda i: make_example(stream, int(starts[i]), T, tok.eos_id),
                    len(starts), batch_size, max_batches, process_index, process_count)


def batch_rows(row, n_rows: int, batch_size: int, max_batches: int = 0,
               process_index: int = 0, process_count: int = 1):
  """Yields this process's share of batches of row(0..n_rows-1), in order.

  The last batch is padded with all-zero rows (weight 0); max_batches > 0 keeps
  that many batches spread evenly over the rows.
  """
  n_batches = -(-n_rows // batch_size)
  chosen = range(n_batches)
  if 0 < max_batches < n_batches:
    chosen = np.linspace(0, n_batches - 1, max_batches).round().astype(int)
  local = batch_size // process_count
  for b in chosen:
    rows = [row(i) for i in range(b * batch_size, min((b + 1) * batch_size, n_rows))]
    rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (batch_size - len(rows))
    rows = rows[process_index * local:(process_index + 1) * local]
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def rows_dataset(row, n_rows: int, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
  """Infinite dataset of batches of row(i) for i shuffled anew each epoch (fine-tuning sets)."""
  local = local_batch_size(batch_size, process_count)
  if n_rows < batch_size:
    raise ValueError(f"train.batch_size={batch_size} is larger than the {n_rows} training "
                     "examples")
  ds = grain.MapDataset.range(n_rows).shuffle(seed=seed).repeat(None).map(
      lambda i: {**row(i), "index": np.int64(i)})  # the row's number, as in train_dataset
  return ds[process_index::process_count].batch(local, drop_remainder=True)
