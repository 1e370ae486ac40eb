"""Command line of Hugging Face conversion (`python -m jaxlm.convert`).

  python -m jaxlm.convert --from_hf=HF_DIR --workdir=RUN [--dtype=float32]
  python -m jaxlm.convert --to_hf=HF_DIR --workdir=RUN [--step=N] [--dtype=...]

What is converted and how: jaxlm/convert/__init__.py and docs/convert.md.
"""

from __future__ import annotations

import os

from absl import app, flags

from jaxlm import cli
from jaxlm.cli import fail
from jaxlm.convert import hf

flags.DEFINE_string("from_hf", None, "A save_pretrained directory to convert into a new run.")
flags.DEFINE_string("to_hf", None, "A new directory to write the run as a save_pretrained model.")
flags.DEFINE_string("workdir", None, "The jaxlm run: written by --from_hf, read by --to_hf.")
flags.DEFINE_string("dtype", None, "Parameter dtype (float32, bfloat16, float16); default "
                    "float32 for --from_hf, the run's model.param_dtype for --to_hf.")
flags.DEFINE_integer("step", -1, "--to_hf: checkpoint step to write; -1 means the latest.")
FLAGS = flags.FLAGS

USAGE = ("usage: python -m jaxlm.convert --from_hf=HF_DIR --workdir=NEW_RUN [--dtype=D] | "
         "--to_hf=NEW_HF_DIR --workdir=RUN [--step=N] [--dtype=D]")


def main(argv):
  cli.start(argv, USAGE)
  if (FLAGS.from_hf is None) == (FLAGS.to_hf is None) or not FLAGS.workdir:
    fail(f"expected exactly one of --from_hf and --to_hf, and --workdir; {USAGE}")
  with cli.failing(ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError):
    if FLAGS.from_hf is not None:
      config = hf.from_hf(FLAGS.from_hf, FLAGS.workdir, FLAGS.dtype or "float32")
      if config.data.tokenizer == "hf":
        tokenizer = f"with its tokenizer in {config.data.tokenizer_path}"
      else:
        why = hf.usable_tokenizer(FLAGS.from_hf, config.model.vocab_size)[1]
        tokenizer = f"naming the byte tokenizer: its own is not used ({why})"
      print(f"wrote {FLAGS.from_hf} as the jaxlm run {FLAGS.workdir} ({config.name}, "
            f"{config.model.param_dtype}), {tokenizer}")
    else:
      arch, step = hf.to_hf(FLAGS.workdir, FLAGS.to_hf, None if FLAGS.step < 0 else FLAGS.step,
                            FLAGS.dtype)
      with_tok = os.path.isfile(os.path.join(FLAGS.to_hf, "tokenizer.json"))
      print(f"wrote step {step} of {FLAGS.workdir} as a {arch} in {FLAGS.to_hf}"
            f"{' with its byte tokenizer' if with_tok else ' (its tokenizer is not converted)'}")


def entry():
  app.run(main)

