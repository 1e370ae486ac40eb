"""The embedded Shakespeare corpus and its train/validation split.

The asset is built by `python scripts/build_corpus.py`: one JSON object per work
(`name`, `title`, `genre`, `text`), xz-compressed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import lzma
import pathlib

DEFAULT_PATH = str(pathlib.Path(__file__).resolve().parent / "assets" / "shakespeare.jsonl.xz")
GENRES = ("comedy", "tragedy", "history", "poem")
SPLITS = ("train", "validation", "all")
# Split by whole works, so no validation line is ever seen in training: one
# work of each genre, about 10% of the bytes.
VALIDATION_WORKS: tuple[str, ...] = ("hamlet", "twelfth_night", "henry_v", "rape_of_lucrece")

_REBUILD = "rebuild it with `python scripts/build_corpus.py`"


@dataclasses.dataclass(frozen=True)
class Work:
  """One work: its file stem, title line, First Folio genre and cleaned text."""

  name: str
  title: str
  genre: str
  text: str


def load_works(split: str = "all", path: str | None = None) -> list[Work]:
  """Returns the works of `split` ("train", "validation" or "all"), sorted by name."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not a corpus split; expected one of {SPLITS}")
  path = str(path or DEFAULT_PATH)
  works = _read(path)
  if split == "all":
    return list(works)
  missing = set(VALIDATION_WORKS) - {w.name for w in works}
  if missing:
    raise ValueError(f"corpus {path} lacks validation works {sorted(missing)}; {_REBUILD}")
  return [w for w in works if (w.name in VALIDATION_WORKS) == (split == "validation")]


@functools.lru_cache(maxsize=8)
def _read(path: str) -> tuple[Work, ...]:
  """Decodes the asset once per path; several callers (tokenizer, pipeline, eval) load it."""
  try:
    with lzma.open(path, "rt", encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
    works = tuple(Work(*(r[field.name] for field in dataclasses.fields(Work))) for r in records)
  except FileNotFoundError:
    raise FileNotFoundError(f"corpus file {path} not found; {_REBUILD}") from None
  # Truncated xz raises EOFError; garbage raises LZMAError; bad rows the rest.
  except (lzma.LZMAError, EOFError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    problem = f"{type(e).__name__}: {e}"
    raise ValueError(f"corpus file {path} is corrupt ({problem}); {_REBUILD}") from None
  if not works:
    raise ValueError(f"corpus file {path} holds no works; {_REBUILD}")
  for w in works:
    if w.genre not in GENRES:
      problem = f"work {w.name!r} has genre {w.genre!r}; expected one of {GENRES}"
      raise ValueError(f"corpus file {path}: {problem}")
  return works
