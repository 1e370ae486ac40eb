"""Train the committed sentencepiece BPE models on the training split.

  python scripts/train_tokenizer.py --vocab_size 512 1024 2048 4096 8192

writes jaxlm/data/assets/shakespeare_sp{N}.model for each N and prints, per
model, the average UTF-8 bytes per token on the validation split. Two runs
write byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import sys
import time

import sentencepiece as spm

# Run from a checkout without installing: make `jaxlm` importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from jaxlm.data import corpus  # noqa: E402
from jaxlm.data import tokenizer  # noqa: E402

DEFAULT_OUT = os.path.join("jaxlm", "data", "assets", "shakespeare_sp{vocab_size}.model")
# Works are training sentences whole (see train()); the longest is ~180 KB.
MAX_SENTENCE_BYTES = 1 << 20

TRAINER_OPTIONS = dict(
    model_type="bpe",
    # Exact round trips: no NFKC, spaces kept as they are (runs of them,
    # leading ones, indentation), no "\u2581" added at the start of a text.
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,  # Lets "\u2581\u2581" (verse indentation) be a piece.
    # Every character of the corpus gets a piece; anything else (tabs, "é")
    # falls back to its UTF-8 bytes, so unk is never produced.
    character_coverage=1.0,
    byte_fallback=True,
    # eos separates documents; no bos, no pad (packing with segment ids).
    unk_id=0,
    eos_id=1,
    bos_id=-1,
    pad_id=-1,
    # Determinism: one thread, every sentence, in corpus order.
    num_threads=1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    # train_extremely_large_corpus=False is the default, and sentencepiece 0.2
    # warns that the flag is deprecated and ignored, so it is not passed.
    max_sentence_length=MAX_SENTENCE_BYTES,
    minloglevel=1,
)


def train(vocab_size: int, out: str) -> None:
  """Trains one model on the training split and writes it to `out`."""
  texts = [w.text for w in corpus.load_works("train")]
  longest = max(len(t.encode("utf-8")) for t in texts)
  if longest >= MAX_SENTENCE_BYTES:  # The trainer would silently skip the work.
    raise ValueError(f"a training work has {longest} bytes; raise MAX_SENTENCE_BYTES")
  # The file-based trainer reads one line per sentence, so it would never see a
  # "\n". We pass each work whole through sentence_iterator instead: newlines
  # are then ordinary characters with their true statistics, and BPE learns
  # pieces such as ".\n" and "\n\n". The model encodes raw text, newlines and all.
  spm.set_random_generator_seed(0)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
      **TRAINER_OPTIONS)
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".tmp", "wb") as f:
    f.write(model.getvalue())
  os.replace(out + ".tmp", out)


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
