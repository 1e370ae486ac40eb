"""Train the committed sentencepiece BPE models on the training split.

  python scripts/train_tokenizer.py --vocab_size 512 1024 2048 4096 8192

writes jaxlm/data/assets/shakespeare_sp{N}.model for each N and prints, per
model, the average UTF-8 bytes per token on the validation split. Two runs
write byte-identical files.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

# Run from a checkout without installing: make `jaxlm` importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from jaxlm.data import corpus  # noqa: E402
from jaxlm.data import tokenizer  # noqa: E402
from jaxlm.data.tokenizer import training  # noqa: E402

DEFAULT_OUT = os.path.join("jaxlm", "data", "assets", "shakespeare_sp{vocab_size}.model")


def train(vocab_size: int, out: str) -> None:
  """Trains one model on the training split (whole works) and writes it to `out`; the
  options are those of `python -m jaxlm.data.tokenizer train` (training.py)."""
  training.train("sentencepiece", [w.text for w in corpus.load_works("train")], vocab_size, out)


def check(path: str) -> float:
  """Checks exact round trips on every work; returns validation bytes per token."""
  tok = tokenizer.SentencePieceTokenizer(path)
  token_bytes = tok.token_bytes()
  for work in corpus.load_works("all"):
    ids = tok.encode(work.text)
    if tok.decode(ids) != work.text:
      raise ValueError(f"{path}: {work.name} does not round-trip exactly")
    if token_bytes[ids].sum() != len(work.text.encode("utf-8")):
      raise ValueError(f"{path}: token_bytes disagrees with the bytes of {work.name}")
  valid = corpus.load_works("validation")
  n_bytes = sum(len(w.text.encode("utf-8")) for w in valid)
  n_tokens = sum(len(tok.encode(w.text)) for w in valid)
  return n_bytes / n_tokens


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vocab_size", type=int, nargs="+", required=True,
                      help="one or more vocab sizes, e.g. 512 1024 2048 4096 8192")
  parser.add_argument("--out", default=DEFAULT_OUT,
                      help="output path; {vocab_size} is replaced by each size")
  args = parser.parse_args()
  if len(args.vocab_size) > 1 and "{vocab_size}" not in args.out:
    parser.error(f"--out={args.out!r} must contain {{vocab_size}} when training several sizes")
  print("| vocab size | bytes/token (validation) | train seconds |")
  print("| ---: | ---: | ---: |")
  for vocab_size in args.vocab_size:
    out = args.out.format(vocab_size=vocab_size)
    start = time.perf_counter()
    train(vocab_size, out)
    seconds = time.perf_counter() - start
    print(f"| {vocab_size} | {check(out):.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
  main()
