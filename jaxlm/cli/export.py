"""Command line of export (`python -m jaxlm.export`): a run's params as one plain file.

  python -m jaxlm.export --workdir=DIR --out=FILE.safetensors [--step=N]
  python -m jaxlm.export --workdir=DIR --out=FILE.msgpack [--step=N]

The formats are described in jaxlm/inference/export.py.
"""

from __future__ import annotations

from absl import app, flags

from jaxlm import cli
from jaxlm.cli import fail
from jaxlm.inference.export import SUFFIXES, export

flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
flags.DEFINE_string("out", None, "Output file: *.safetensors or *.msgpack.")
flags.DEFINE_integer("step", -1, "Checkpoint step to export; -1 means the latest.")
F = flags.FLAGS

USAGE = (f"usage: python -m jaxlm.export --workdir=DIR --out=FILE{{{','.join(SUFFIXES)}}} "
         "[--step=N]")


def main(argv):
  cli.start(argv, USAGE)
  if not F.workdir or not F.out:
    fail(f"{USAGE}; got no --workdir or --out")
  with cli.failing(ValueError, KeyError, FileNotFoundError):
    step = export(F.workdir, F.out, None if F.step < 0 else F.step)
  print(f"wrote the params of step {step} of {F.workdir} to {F.out}")


def entry():
  app.run(main)

