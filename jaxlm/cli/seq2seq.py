"""Command line of punctuation restoration (`python -m jaxlm.seq2seq_generate`).

  python -m jaxlm.seq2seq_generate --workdir=DIR --text="but soft what light through yonder"
  python -m jaxlm.seq2seq_generate --workdir=DIR --eval_lines=0 [--show=8]   # all test lines

--text restores one line (lowercased and unpunctuated first); --eval_lines
scores greedy restorations of the test lines against the originals, beside
two baselines (jaxlm/inference/seq2seq.py).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from jaxlm import cli
from jaxlm.data import finetune
from jaxlm.inference import seq2seq
from jaxlm.run.load import load_run

flags.DEFINE_string("workdir", None, "Directory of a trained seq2seq run.")
flags.DEFINE_string("text", None, "A line to restore (lowercased and unpunctuated first).")
flags.DEFINE_integer("eval_lines", None, "Score this many test lines (0: all).")
flags.DEFINE_integer("show", 8, "Example restorations (spread over the lines) printed with "
                     "--eval_lines.")
flags.DEFINE_float("temperature", 0.0, "Softmax temperature of --text; 0 is greedy.")
flags.DEFINE_integer("seed", 0, "Random seed of --text sampling.")
F = flags.FLAGS


def main(argv):
  cli.start(argv)
  with cli.failing(ValueError, FileNotFoundError):
    if not F.workdir:
      raise ValueError("--workdir is required: the directory of a trained seq2seq run")
    if (F.text is None) == (F.eval_lines is None):
      raise ValueError("expected exactly one of --text and --eval_lines")
    if F.eval_lines is not None and F.eval_lines < 0:
      raise ValueError(f"--eval_lines={F.eval_lines} is invalid: expected >= 0 (0: all)")
    if F.text is not None and not finetune.unpunctuate(F.text):
      raise ValueError(f"--text={F.text!r} has no words once unpunctuated; expected a line")
    config, tok, _, params, step = load_run(F.workdir, task_kind="seq2seq")
  if F.text is not None:
    with cli.failing(ValueError, prefix="--text: "):
      print(seq2seq.restore(params, config, tok, [F.text], temperature=F.temperature,
                            seed=F.seed)[0])
    return
  result = seq2seq.evaluate(params, config, tok, F.eval_lines)
  print(f"step {step}, {result['lines']} test lines (greedy):")
  for name in ("model", "copy", "capitalize"):
    r = result[name]
    print(f"  {name:10s}  exact match {r['exact_match']:.4f}  char accuracy "
          f"{r['char_accuracy']:.4f}")
  examples = result["examples"]
  for i in np.linspace(0, len(examples) - 1, min(F.show, len(examples))).round().astype(int):
    source, output, target = examples[i]
    print(f"  source: {source}\n  output: {output}\n  target: {target}")


def entry():
  app.run(main)

