"""Command line of evaluation (`python -m jaxlm.evaluate`): loss, bits per byte, calibration.

  python -m jaxlm.evaluate --workdir=DIR [--split=validation|train]

Writes WORKDIR/eval_<split>.json and the reliability diagram
WORKDIR/reliability_<split>.png (jaxlm/inference/evaluate.py).
"""

from __future__ import annotations

import importlib.util
import os

from absl import app, flags

from jaxlm import cli
from jaxlm.cli import fail
from jaxlm.inference import evaluate

flags.DEFINE_string("workdir", None, "Directory of a trained run (config.json, checkpoints/).")
flags.DEFINE_string("split", "validation", "Corpus split to evaluate: validation or train.")
F = flags.FLAGS


def main(argv):
  cli.start(argv)
  if not F.workdir:
    fail("--workdir is required: the directory of a trained run")
  if F.split not in evaluate.SPLITS:
    fail(f"--split={F.split!r} is invalid: expected one of {', '.join(evaluate.SPLITS)}")
  if importlib.util.find_spec("matplotlib") is None:  # before an evaluation of minutes
    fail("the reliability diagram needs matplotlib; install it with "
         "`pip install 'jaxlm[plot]'`")
  try:
    r = evaluate.run(F.workdir, F.split)
  except (ValueError, FileNotFoundError) as e:
    fail(str(e))
  print(f"{F.split}: loss {r['loss']:.4f} | perplexity {r['perplexity']:.2f} | "
        f"bpb {r['bits_per_byte']:.4f} | accuracy {r['accuracy']:.3f} | ECE {r['ece']:.4f} | "
        f"{r['tokens']:,} tokens at step {r['step']}")
  print(f"wrote {os.path.join(F.workdir, f'eval_{F.split}.json')} and "
        f"reliability_{F.split}.png")


def entry():
  app.run(main)

