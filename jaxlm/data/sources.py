"""Documents of a corpus named by `data.corpus`, and the split each belongs to.

  shakespeare               the embedded corpus (jaxlm/data/corpus.py)
  files:GLOB[,GLOB...]      .jsonl (a document a line, field data.text_field),
                            .parquet (column data.text_field; needs pyarrow),
                            any other file as plain text, a document a file;
                            each may be .gz, .zst (needs zstandard) or .xz
  hf:NAME_OR_DIR            a Hugging Face `datasets` dataset: a directory saved with
                            save_to_disk, or one load_dataset finds locally or in its
                            cache (data.hf_config, data.hf_split); field data.text_field
  prepared:DIR              token shards written by `python -m jaxlm.data.prepare`

jaxlm.config.parse_corpus reads the spec. A document's split is a pure function
of its identity (its path from the glob's directory, and its line or row
number), so adding files never moves a document from one split to the other.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib
import io
import json
import lzma
import os
from typing import Iterator

_COMPRESSED = (".gz", ".zst", ".xz")


def expand(globs: str) -> list[tuple[str, str]]:
  """(path, key) of every file the comma-separated globs match, sorted by key.

  The key is the path from the glob's fixed directory, that directory's name
  included ('corpus/a/b.txt' for '/data/corpus/**/*.txt'): moving the corpus
  elsewhere keeps every key. Two files with one key are an error. A glob
  starting with `!` excludes the files it matches ('!/usr/lib/python3.11/
  site-packages/**').
  """
  patterns = [os.path.expanduser(g.strip()) for g in globs.split(",") if g.strip()]
  excluded = {os.path.realpath(p) for g in patterns if g.startswith("!")
              for p in glob.glob(g[1:], recursive=True)}
  out = {}
  for pattern in (g for g in patterns if not g.startswith("!")):
    matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    if not matched:
      raise FileNotFoundError(f"data.corpus: files:{pattern} matches no file")
    base = os.path.abspath(_fixed_dir(pattern))
    for path in matched:
      if os.path.realpath(path) in excluded:
        continue
      key = os.path.join(os.path.basename(base), os.path.relpath(path, base))
      if out.setdefault(key, path) != path and not os.path.samefile(out[key], path):
        raise ValueError(f"data.corpus: {out[key]} and {path} would both be known as {key}; "
                         "expected globs whose directories have distinct names")
  if not out:
    raise FileNotFoundError(f"data.corpus: files:{globs} leaves no file once the ! globs "
                            "are excluded")
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


def _optional(module: str, needs: str):
  """An optional dependency (the `data` extra), imported when first needed."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ValueError(f"{needs}: pip install 'jaxlm[data]'") from None


def _open(path: str, binary: bool = False):
  """A file opened for reading, decompressed by its suffix."""
  if path.endswith(".gz"):
    f = gzip.open(path, "rb")
  elif path.endswith(".xz"):
    f = lzma.open(path, "rb")
  elif path.endswith(".zst"):
    zstandard = _optional("zstandard", f"{path}: reading .zst files needs zstandard")
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
          text = json.loads(line)[text_field]
        except (ValueError, KeyError, TypeError):
          raise ValueError(f"{path}:{n}: expected a JSON object with a string field "
                           f"{text_field!r} (data.text_field)") from None
        if not isinstance(text, str):
          raise ValueError(f"{path}:{n}: field {text_field!r} is {type(text).__name__}, "
                           "expected a string")
        yield f"{key}:{n}", text
  elif kind == ".parquet":
    pq = _optional("pyarrow.parquet", f"{path}: reading .parquet files needs pyarrow")
    with _open(path, binary=True) as f:
      table = pq.ParquetFile(f)
      if text_field not in table.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (data.text_field); columns "
                         f"{table.schema_arrow.names}")
      batches = table.iter_batches(columns=[text_field])
      texts = (text for batch in batches for text in batch.column(0).to_pylist())
      yield from ((f"{key}:{n}", t) for n, t in enumerate(texts, start=1) if t is not None)
  else:
    with _open(path) as f:
      yield key, f.read()


def hf_dataset(name: str, config: str = "", split: str = "train"):
  """The `datasets.Dataset` that hf:NAME_OR_DIR names: load_from_disk for a directory
  saved with save_to_disk, else load_dataset (local files or the cache; offline works)."""
  datasets = _optional("datasets", f"data.corpus=hf:{name} needs the datasets library")
  saved = any(os.path.exists(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json"))
  try:
    ds = datasets.load_from_disk(name) if saved else \
        datasets.load_dataset(name, config or None, split=split)
  except Exception as e:  # noqa: BLE001  (datasets raises many kinds; all are bad input here)
    raise ValueError(f"data.corpus=hf:{name} (data.hf_config={config!r}, data.hf_split="
                     f"{split!r}) does not load: {type(e).__name__}: {e}") from None
  if isinstance(ds, datasets.DatasetDict):
    if split not in ds:
      raise ValueError(f"data.corpus=hf:{name} has splits {sorted(ds)}; data.hf_split="
                       f"{split!r} is not one")
    ds = ds[split]
  return ds


def hf_documents(ds, key: str, start: int, stop: int,
                 text_field: str = "text") -> Iterator[tuple[str, str]]:
  """(identity, text) of rows [start, stop) of a dataset; identity is key:row."""
  if text_field not in ds.column_names:
    raise ValueError(f"data.corpus=hf:{key} has no column {text_field!r} (data.text_field); "
                     f"columns {ds.column_names}")
  batches = ds.select_columns([text_field]).select(range(start, stop)).iter(batch_size=1024)
  texts = (text for batch in batches for text in batch[text_field])
  yield from ((f"{key}:{n}", t) for n, t in enumerate(texts, start=start + 1) if t is not None)


def is_validation(identity: str, fraction: float) -> bool:
  """Whether a document is in the validation split: a stable hash of its identity."""
  digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") < fraction * 2 ** 64
