"""Documents of a corpus named by `data.corpus`, and the split each belongs to.

  shakespeare               the embedded corpus (jaxlm/data/corpus.py)
  files:GLOB[,GLOB...]      .jsonl (a document a line, field data.text_field),
                            .parquet (column data.text_field; needs pyarrow),
                            any other file as plain text, a document a file;
                            each may be .gz, .zst (needs zstandard) or .xz
  prepared:DIR              token shards written by `python -m jaxlm.data.prepare`

A document's split is a pure function of its identity (its path below the
glob's directory, and its line or row number), so adding files never moves a
document from one split to the other.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import lzma
import os
from typing import Iterator

KINDS = ("shakespeare", "files", "prepared")
_COMPRESSED = (".gz", ".zst", ".xz")


def parse(spec: str) -> tuple[str, str]:
  """(kind, argument) of a corpus spec; ValueError naming data.corpus if it is not one."""
  kind, sep, arg = spec.partition(":")
  if spec == "shakespeare":
    return "shakespeare", ""
  if kind in ("files", "prepared") and sep and arg.strip():
    return kind, arg.strip()
  raise ValueError(f"data.corpus={spec!r} is invalid: expected shakespeare, "
                   "files:GLOB[,GLOB...] or prepared:DIR")


def expand(globs: str) -> list[tuple[str, str]]:
  """(path, key) of every file the comma-separated globs match, sorted by key.

  The key is the path below the glob's fixed directory (e.g. 'a/b.txt' for
  'corpus/**/*.txt'): moving the corpus elsewhere keeps every key.
  """
  out = {}
  for pattern in (g.strip() for g in globs.split(",") if g.strip()):
    pattern = os.path.expanduser(pattern)
    matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    if not matched:
      raise FileNotFoundError(f"data.corpus: files:{pattern} matches no file")
    base = _fixed_dir(pattern)
    for path in matched:
      out[os.path.relpath(path, base)] = path
  return [(out[key], key) for key in sorted(out)]


def _fixed_dir(pattern: str) -> str:
  """The directory part of a glob before its first wildcard."""
  parts = []
  for part in pattern.split(os.sep):
    if glob.has_magic(part):
      break
    parts.append(part)
  fixed = os.sep.join(parts)
  return fixed if os.path.isdir(fixed) else os.path.dirname(fixed) or "."


def _open(path: str, binary: bool = False):
  """A file opened for reading, decompressed by its suffix."""
  if path.endswith(".gz"):
    f = gzip.open(path, "rb")
  elif path.endswith(".xz"):
    f = lzma.open(path, "rb")
  elif path.endswith(".zst"):
    try:
      import zstandard  # deferred: an optional dependency (the `data` extra)
    except ImportError:
      raise ValueError(f"{path}: reading .zst files needs zstandard: pip install "
                       "'jaxlm[data]'") from None
    f = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
  else:
    f = open(path, "rb")
  return f if binary else io.TextIOWrapper(f, encoding="utf-8", errors="replace")


def _kind(path: str) -> str:
  stem = path
  for suffix in _COMPRESSED:
    if stem.endswith(suffix):
      stem = stem[:-len(suffix)]
  return os.path.splitext(stem)[1].lower()


def documents(path: str, key: str, text_field: str = "text") -> Iterator[tuple[str, str]]:
  """(identity, text) of each document in one file; ValueError names the file and line."""
  kind = _kind(path)
  if kind == ".jsonl":
    with _open(path) as f:
      for n, line in enumerate(f, start=1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
          text = record[text_field]
        except (ValueError, KeyError, TypeError):
          raise ValueError(f"{path}:{n}: expected a JSON object with a string field "
                           f"{text_field!r} (data.text_field)") from None
        if not isinstance(text, str):
          raise ValueError(f"{path}:{n}: field {text_field!r} is {type(text).__name__}, "
                           "expected a string")
        yield f"{key}:{n}", text
  elif kind == ".parquet":
    try:
      import pyarrow.parquet as pq  # deferred: an optional dependency (the `data` extra)
    except ImportError:
      raise ValueError(f"{path}: reading .parquet files needs pyarrow: pip install "
                       "'jaxlm[data]'") from None
    with _open(path, binary=True) as f:
      table = pq.ParquetFile(f)
      if text_field not in table.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (data.text_field); columns "
                         f"{table.schema_arrow.names}")
      n = 0
      for batch in table.iter_batches(columns=[text_field]):
        for text in batch.column(0).to_pylist():
          n += 1
          if text is not None:
            yield f"{key}:{n}", text
  else:
    with _open(path) as f:
      yield key, f.read()


def is_validation(identity: str, fraction: float) -> bool:
  """Whether a document is in the validation split: a stable hash of its identity."""
  digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") < fraction * 2 ** 64
