"""A corpus tokenized once: token shards on disk, read back as one memory-mapped stream.

`prepare()` turns the documents of `files:` sources (jaxlm/data/sources.py)
into DIR/manifest.json and, per shard and split, DIR/<split>/<shard>.tokens.npy
(the documents' ids, each followed by eos; uint16 where the vocabulary allows)
and DIR/<split>/<shard>.docs.npy (int64 end offsets of its documents). A shard
is a run of consecutive source files (in the order of their keys) of about
`shard_bytes`; worker processes tokenize shards in parallel, and since a
shard's content depends only on its files, the output is byte-identical for
any number of workers. Each finished shard is marked by DIR/shards/<shard>.json,
written last; a prepare that was killed keeps the finished shards and redoes
the rest. The manifest is written when every shard is done. Several prepare
tasks (other nodes of a cluster, a SLURM job array) can share the shards, task
i of N taking every N-th from i; merge() then writes the manifest from their
records, the same bytes as one process would write.

`TokenStore` reads one split as a stream of tokens with document ids, the
same interface as the embedded corpus's in-memory stream (pipeline.ArrayStream),
without holding the corpus in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import socket
from typing import Callable

import numpy as np

from jaxlm import config as config_lib
from jaxlm.data import sources
from jaxlm.data import tokenizer as tokenizer_lib

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
# Source bytes per shard: small enough that a 30 MB corpus keeps two workers busy and a
# worker's memory (one shard's text and tokens) stays small, large enough for few files.
SHARD_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """What names a tokenizer in a config (data.tokenizer, tokenizer_path, vocab size);
  picklable, for worker processes."""
  kind: str
  path: str = ""
  vocab_size: int = 0

  def load(self) -> tokenizer_lib.Tokenizer:
    return tokenizer_lib.load_tokenizer(self.kind, self.path, self.vocab_size)


@dataclasses.dataclass(frozen=True)
class Options:
  """How documents are read and split: the keys that change the output."""
  text_field: str = "text"
  validation_fraction: float = 0.01
  hf_config: str = ""    # hf: sources
  hf_split: str = "train"


ROWS_PER_SHARD = 20_000  # hf: sources are sharded by rows

def plan(files: list[tuple[str, str]], shard_bytes: int = SHARD_BYTES) -> list[list]:
  """Consecutive (path, key) files grouped into shards of about shard_bytes each."""
  shards, current, size = [], [], 0
  for path, key in files:
    current.append((path, key))
    size += os.path.getsize(path)
    if size >= shard_bytes:
      shards.append(current)
      current, size = [], 0
  return shards + ([current] if current else [])


@dataclasses.dataclass
class Source:
  """The documents of a files: or hf: corpus spec, cut into shards.

  shards: per shard, what documents() reads: [(path, key), ...] of files, or
  (name, first row, end row) of a dataset. identity: what fingerprint() hashes.
  """
  kind: str
  shards: list
  identity: list
  listing: list  # the manifest's "sources"

  @staticmethod
  def of(spec: str, options: Options, shard_bytes: int = SHARD_BYTES,
         rows_per_shard: int = ROWS_PER_SHARD) -> Source:
    kind, arg = config_lib.parse_corpus(spec)
    if kind == "files":
      files = sources.expand(arg)
      stats = [(key, os.stat(path)) for path, key in files]
      return Source(kind, plan(files, shard_bytes),
                    [(k, st.st_size, st.st_mtime_ns) for k, st in stats],
                    [{"key": k, "bytes": st.st_size} for k, st in stats])
    if kind == "hf":
      ds = sources.hf_dataset(arg, options.hf_config, options.hf_split)
      n = len(ds)
      return Source(kind, [(arg, a, min(a + rows_per_shard, n))
                           for a in range(0, n, rows_per_shard)],
                    [arg, n, getattr(ds, "_fingerprint", "")],
                    [{"dataset": arg, "config": options.hf_config, "split": options.hf_split,
                      "rows": n}])
    raise ValueError(f"data.corpus={spec!r}: only files: and hf: corpora are prepared")


def documents(kind: str, members, options: Options):
  """(identity, text) of one shard's documents."""
  if kind == "files":
    for path, key in members:
      yield from sources.documents(path, key, options.text_field)
    return
  name, start, stop = members
  ds = sources.hf_dataset(name, options.hf_config, options.hf_split)
  key = os.path.basename(os.path.normpath(name))
  yield from sources.hf_documents(ds, key, start, stop, options.text_field)


def fingerprint(source: Source, tok: tokenizer_lib.Tokenizer, options: Options,
                shard_bytes: int = SHARD_BYTES) -> str:
  """A digest of everything that decides the prepared output: the source (files' keys,
  sizes and modification times, or the dataset's name, rows and fingerprint), the
  tokenizer, the options and the format."""
  h = hashlib.blake2b(digest_size=12)
  h.update(json.dumps(source.identity).encode())
  h.update(json.dumps([FORMAT, tok.fingerprint, dataclasses.asdict(options),
                       shard_bytes]).encode())
  return h.hexdigest()


def _write(path: str, save: Callable) -> None:
  """save(binary file) writes path through a temporary name beside it, unique to this
  process on any host that shares it."""
  tmp = f"{path}.tmp.{socket.gethostname()}.{os.getpid()}"
  with open(tmp, "wb") as f:
    save(f)
  os.replace(tmp, path)


def _write_json(path: str, value) -> None:
  _write(path, lambda f: f.write(json.dumps(value, indent=1).encode()))


def _shard_name(index: int) -> str:
  return f"{index:05d}"


def _record_path(out: str, index: int) -> str:
  """DIR/shards/<shard>.json: a finished shard's record, written last."""
  return os.path.join(out, "shards", _shard_name(index) + ".json")


def _done(out: str, index: int) -> dict | None:
  """The record of shard `index` if a prepare finished it."""
  path = _record_path(out, index)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _prepare_shard(job) -> dict:
  """Tokenizes one shard's files into its split files; returns (and records) its counts."""
  index, kind, members, out, spec, options = job
  done = _done(out, index)
  if done is not None:  # finished by an earlier (killed) prepare, or another task
    return done
  tok = spec.load()
  dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
  parts = {s: {"ids": [], "ends": [], "documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
  for identity, text in documents(kind, members, options):
    part = parts["validation" if sources.is_validation(
        identity, options.validation_fraction) else "train"]
    ids = np.append(tok.encode(text), tok.eos_id).astype(dtype)
    part["ids"].append(ids)
    part["tokens"] += len(ids)
    part["ends"].append(part["tokens"])
    part["documents"] += 1
    part["bytes"] += len(text.encode("utf-8"))
  record = {"shard": index, **({"files": [key for _, key in members]} if kind == "files"
                               else {"rows": list(members[1:])})}
  for split, part in parts.items():
    os.makedirs(os.path.join(out, split), exist_ok=True)
    base = os.path.join(out, split, _shard_name(index))
    ids = np.concatenate(part["ids"]) if part["ids"] else np.zeros(0, dtype)
    _write(base + ".tokens.npy", lambda f: np.save(f, ids))
    _write(base + ".docs.npy", lambda f: np.save(f, np.asarray(part["ends"], np.int64)))
    record[split] = {k: part[k] for k in ("documents", "tokens", "bytes")}
  _write_json(_record_path(out, index), record)  # last: the shard is complete
  return record


def _open(spec: str, out: str, tokenizer: TokenizerSpec, options: Options, shard_bytes: int,
          rows_per_shard: int, start: bool):
  """(source, manifest) of preparing spec into out: the finished manifest, or its head (no
  "shards" yet) to finish; `start` records the fingerprint (a new preparation), else one
  must be there. ValueError if out holds another corpus's shards."""
  source = Source.of(spec, options, shard_bytes, rows_per_shard)
  tok = tokenizer.load()
  digest = fingerprint(source, tok, options, shard_bytes)
  if os.path.exists(os.path.join(out, MANIFEST)):
    manifest = read_manifest(out)
    if manifest["fingerprint"] == digest:
      return source, manifest
    raise ValueError(f"--out={out} holds a prepared corpus of other sources, tokenizer or "
                     "options; expected an empty or new directory")
  marker = os.path.join(out, "shards", "fingerprint.json")
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) != digest:
        raise ValueError(f"--out={out} holds shards of another preparation; expected an "
                         "empty or new directory, or the same command that wrote them")
  elif start:
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    _write_json(marker, digest)
  else:
    raise ValueError(f"--out={out} holds no prepared shards of this corpus; run the "
                     "prepare tasks (--num_tasks, --task_id) first")
  return source, {"format": FORMAT, "fingerprint": digest, "corpus": spec,
                  "tokenizer": {**dataclasses.asdict(tokenizer), "vocab_size": tok.vocab_size,
                                "eos_id": tok.eos_id, "fingerprint": tok.fingerprint},
                  "options": dataclasses.asdict(options)}


def prepare(spec: str, out: str, tokenizer: TokenizerSpec, options: Options = Options(),
            workers: int = 1, shard_bytes: int = SHARD_BYTES,
            progress: Callable[[dict, int], None] | None = None,
            rows_per_shard: int = ROWS_PER_SHARD, num_tasks: int = 1,
            task_id: int = 0) -> dict | None:
  """Tokenizes the documents of a files: or hf: corpus spec into `out`; returns the manifest.

  progress(shard record, number of shards), if given, is called as each shard is done.
  A complete `out` with the same fingerprint is returned as it is; ValueError if
  `out` holds another corpus's shards. With num_tasks > 1 this prepares task_id's
  part, the shards i with i % num_tasks == task_id, and returns None; the tasks
  may run anywhere that sees `out`, and merge() writes the manifest when all are
  done (the same bytes as one process writes).
  """
  if workers < 1:
    raise ValueError(f"--workers={workers} is invalid: expected a positive integer")
  if num_tasks < 1 or not 0 <= task_id < num_tasks:
    raise ValueError(f"--num_tasks={num_tasks} --task_id={task_id} is invalid: expected "
                     "num_tasks >= 1 and 0 <= task_id < num_tasks")
  source, manifest = _open(spec, out, tokenizer, options, shard_bytes, rows_per_shard, True)
  if "shards" in manifest:
    return manifest
  jobs = [(i, source.kind, source.shards[i], out, tokenizer, options)
          for i in range(task_id, len(source.shards), num_tasks)]
  records, serial = [], workers == 1 or len(jobs) <= 1
  # spawn: the caller may be a training process whose JAX threads fork would copy.
  with (contextlib.nullcontext() if serial
        else multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)))) as pool:
    for record in (map if serial else pool.imap)(_prepare_shard, jobs):
      records.append(record)
      if progress:
        progress(record, len(jobs))
  if num_tasks > 1:
    return None
  return _write_manifest(out, manifest, records, source)


def merge(spec: str, out: str, tokenizer: TokenizerSpec, options: Options = Options(),
          shard_bytes: int = SHARD_BYTES, rows_per_shard: int = ROWS_PER_SHARD) -> dict:
  """The manifest of `out`, written from the shards that prepare tasks finished there;
  ValueError naming the shards that are not done yet."""
  source, manifest = _open(spec, out, tokenizer, options, shard_bytes, rows_per_shard, False)
  if "shards" in manifest:
    return manifest
  n = len(source.shards)
  records = [_done(out, i) for i in range(n)]
  missing = [i for i, r in enumerate(records) if r is None]
  if missing:
    listed = ", ".join(_shard_name(i) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
    raise ValueError(f"--out={out}: {len(missing)} of {n} shards are not prepared yet "
                     f"({listed}); shard i is prepare task i % --num_tasks's part: rerun "
                     "those tasks, then --merge")
  return _write_manifest(out, manifest, records, source)


def _write_manifest(out: str, head: dict, records: list[dict], source: Source) -> dict:
  manifest = {
      **head,
      "splits": {s: {k: sum(r[s][k] for r in records) for k in ("documents", "tokens", "bytes")}
                 for s in SPLITS},
      "shards": records,
      "sources": source.listing}
  _write_json(os.path.join(out, MANIFEST), manifest)
  return manifest


def read_manifest(directory: str) -> dict:
  """DIR/manifest.json; FileNotFoundError or ValueError naming what is wrong."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data.corpus=prepared:{directory} has no {MANIFEST}; expected the "
                            "output of a finished `python -m jaxlm.data.prepare`")
  with open(path) as f:
    try:
      manifest = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not a prepared corpus manifest ({e})") from None
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path} has format {manifest.get('format')!r}; this jaxlm reads "
                     f"format {FORMAT}: prepare the corpus again")
  return manifest


class TokenStore:
  """One split of a prepared corpus as a stream: len() tokens, window(start, n) ->
  (tokens, document ids), read from memory-mapped shards."""

  def __init__(self, directory: str, split: str, tok: tokenizer_lib.Tokenizer):
    manifest = read_manifest(directory)
    want = tok.fingerprint
    if manifest["tokenizer"]["fingerprint"] != want:
      raise ValueError(
          f"data.corpus=prepared:{directory} was tokenized with {manifest['tokenizer']} "
          f"(fingerprint {manifest['tokenizer']['fingerprint']}); this run's tokenizer "
          f"(data.tokenizer) has fingerprint {want}: set the same data.tokenizer and "
          "data.tokenizer_path, or prepare the corpus with this tokenizer")
    self._tokens, self._ends, starts, doc_starts = [], [], [0], [0]
    for record in manifest["shards"]:
      if not record[split]["tokens"]:
        continue
      base = os.path.join(directory, split, _shard_name(record["shard"]))
      self._tokens.append(np.load(base + ".tokens.npy", mmap_mode="r"))
      self._ends.append(np.load(base + ".docs.npy", mmap_mode="r"))
      starts.append(starts[-1] + len(self._tokens[-1]))
      doc_starts.append(doc_starts[-1] + len(self._ends[-1]))
    self._starts, self._doc_starts = np.asarray(starts), np.asarray(doc_starts)
    if not self._tokens:
      raise ValueError(f"data.corpus=prepared:{directory} has no {split} documents; raise "
                       "data.validation_fraction or add documents")

  def __len__(self) -> int:
    return int(self._starts[-1])

  def document_ends(self) -> np.ndarray:
    """int64: where each document of the split ends (the offset after its last token)."""
    return np.concatenate([np.asarray(ends, np.int64) + start
                           for ends, start in zip(self._ends, self._starts[:-1])])

  def window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 tokens [start, start + length) (fewer at the end) and their document ids,
    numbered from 1 in the order of the split."""
    stop = min(start + length, len(self))
    tokens, docs = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]  # none past the end
    s = int(np.searchsorted(self._starts, start, side="right")) - 1
    while start < stop:
      local = start - self._starts[s]
      n = min(stop, self._starts[s + 1]) - start
      tokens.append(np.asarray(self._tokens[s][local:local + n], np.int32))
      offsets = np.arange(local, local + n)
      docs.append((np.searchsorted(self._ends[s], offsets, side="right")
                   + self._doc_starts[s] + 1).astype(np.int32))
      start, s = start + n, s + 1
    return np.concatenate(tokens), np.concatenate(docs)
