"""Command line of tokenizer training (`python -m jaxlm.data.tokenizer train`).

  python -m jaxlm.data.tokenizer train --corpus=SPEC --vocab_size=N --out=PATH
      [--kind=sentencepiece|bpe] [--sample_mb=100] [--text_field=text]
      [--validation_fraction=0.01] [--hf_config=C] [--hf_split=S]

Trains on the corpus's training documents (up to --sample_mb), checks exact
round trips and byte counts on its validation documents, and prints the
settings a run uses it with (jaxlm/data/tokenizer/training.py).
"""

from __future__ import annotations

import time

from absl import app, flags

from jaxlm import cli
from jaxlm.cli import fail
from jaxlm.data import prepared
from jaxlm.data.tokenizer import training

flags.DEFINE_string("corpus", None, "A data.corpus spec: shakespeare, files:GLOB,..., hf:NAME.")
flags.DEFINE_integer("vocab_size", None, "Vocabulary size, special tokens included.")
flags.DEFINE_string("out", None, "sentencepiece: the .model file to write; bpe: a directory.")
flags.DEFINE_enum("kind", "sentencepiece", list(training.KINDS),
                  "sentencepiece (data.tokenizer=sentencepiece) or bpe: a byte-level BPE of "
                  "Hugging Face tokenizers (data.tokenizer=hf).")
flags.DEFINE_integer("sample_mb", 100, "Megabytes of training documents to learn from.")
flags.DEFINE_string("text_field", "text", "The text field of .jsonl records and .parquet rows.")
flags.DEFINE_float("validation_fraction", 0.01, "Documents held out (never trained on), as in "
                   "prepare and data.validation_fraction.")
flags.DEFINE_string("hf_config", "", "hf: the dataset's config (data.hf_config).")
flags.DEFINE_string("hf_split", "train", "hf: the split to read (data.hf_split).")
F = flags.FLAGS

USAGE = ("usage: python -m jaxlm.data.tokenizer train --corpus=SPEC --vocab_size=N --out=PATH "
         "[--kind=sentencepiece|bpe]")


def main(argv):
  if len(argv) < 2 or argv[1] != "train":
    fail(f"expected the command `train`; {USAGE}")
  cli.start(argv[1:], USAGE)
  if not F.corpus or not F.out or not F.vocab_size:
    fail(f"{USAGE}; got no --corpus, --out or --vocab_size")
  if F.vocab_size < (258 if F.kind == "bpe" else 260):
    fail(f"--vocab_size={F.vocab_size} is too small: a {F.kind} tokenizer needs room for the "
         "256 bytes and its special tokens (at least 260)")
  if F.sample_mb < 1:
    fail(f"--sample_mb={F.sample_mb} is invalid: expected a positive integer")
  if not 0 < F.validation_fraction < 1:
    fail(f"--validation_fraction={F.validation_fraction} is invalid: expected a value in (0, 1)")
  options = prepared.Options(F.text_field, F.validation_fraction, F.hf_config, F.hf_split)
  began = time.time()
  with cli.failing(ValueError, KeyError, FileNotFoundError, ImportError, RuntimeError):
    texts, held_out = training.sample(F.corpus, options, F.sample_mb << 20)
    print(f"training a {F.kind} tokenizer of {F.vocab_size:,} on {len(texts):,} documents "
          f"({sum(len(t) for t in texts) / 1e6:.1f}M characters)", flush=True)
    kind = training.train(F.kind, texts, F.vocab_size, F.out)
    ratio = training.check(kind, F.out, held_out) if held_out else None
  measured = (f"{ratio:.3f} bytes per token on {len(held_out):,} held-out documents"
              if ratio else "no held-out documents to measure it on")
  print(f"wrote {F.out} in {time.time() - began:.1f}s: {measured}; train with "
        f"--set data.tokenizer={kind} --set data.tokenizer_path={F.out}")


def entry():
  app.run(main)
