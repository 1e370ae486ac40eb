"""Command line of evaluation (`python -m jaxlm.evaluate`): loss, bits per byte, calibration,
and downstream tasks of the LM Evaluation Harness.

  python -m jaxlm.evaluate --workdir=DIR [--split=validation|train] [--batches=N]
  python -m jaxlm.evaluate --workdir=DIR --tasks=a,b [--num_fewshot=K] [--limit=N]
      [--batch_size=B] [--include=DIR,...] [--step=N]

The first writes WORKDIR/eval_<split>.json and the reliability diagram
WORKDIR/reliability_<split>.png (jaxlm/inference/evaluate.py); the second
WORKDIR/harness_results.json and harness_summary.json (jaxlm/inference/harness.py).
"""

from __future__ import annotations

import importlib.util
import json
import os

from absl import app, flags

from jaxlm import cli
from jaxlm.cli import fail
from jaxlm.inference import evaluate

flags.DEFINE_string("workdir", None, "Directory of a trained run (config.json, checkpoints/).")
flags.DEFINE_string("split", "validation", "Corpus split to evaluate: validation or train.")
flags.DEFINE_integer("batches", 0, "Batches to evaluate, spread over the split (default 0: "
                     "all of it).")
flags.DEFINE_list("tasks", [], "LM Evaluation Harness tasks to run instead (comma-separated): "
                  "jaxlm's (shakespeare_cloze, shakespeare_genre), a --include directory's, "
                  "or lm-eval's built-in ones.")
flags.DEFINE_integer("num_fewshot", None, "Few-shot examples per prompt (default: each task's).")
flags.DEFINE_float("limit", None, "Examples per task: a count, or a fraction if < 1 "
                   "(default: all).")
flags.DEFINE_integer("batch_size", 16, "Requests per forward pass or generation batch.")
flags.DEFINE_list("include", [], "Directories of lm-eval task YAML files (comma-separated).")
flags.DEFINE_integer("step", None, "Checkpoint to score with --tasks (default: the latest).")
F = flags.FLAGS


def main(argv):
  cli.start(argv)
  if not F.workdir:
    fail("--workdir is required: the directory of a trained run")
  if F.tasks:
    if F.batches:
      fail("--batches is for the loss evaluation; with --tasks, --limit sets the examples")
    return harness_main()
  if F.split not in evaluate.SPLITS:
    fail(f"--split={F.split!r} is invalid: expected one of {', '.join(evaluate.SPLITS)}")
  if importlib.util.find_spec("matplotlib") is None:  # before an evaluation of minutes
    fail("the reliability diagram needs matplotlib; install it with "
         "`pip install 'jaxlm[plot]'`")
  with cli.failing(ValueError, FileNotFoundError):
    r = evaluate.run(F.workdir, F.split, F.batches)
  for name, s in [(F.split, r), *r.get("sources", {}).items()]:
    print(f"{name}: loss {s['loss']:.4f} | perplexity {s['perplexity']:.2f} | "
          f"bpb {s['bits_per_byte']:.4f} | accuracy {s['accuracy']:.3f} | ECE {s['ece']:.4f} | "
          f"{s['tokens']:,} tokens at step {r['step']}")
  if "mixture" in r:
    print(f"mixture (weighted by data.mixture): loss {r['mixture']['loss']:.4f} | "
          f"bpb {r['mixture']['bits_per_byte']:.4f}")
  print(f"wrote {os.path.join(F.workdir, f'eval_{F.split}.json')} and "
        f"reliability_{F.split}.png")


def harness_main():
  """--tasks: the LM Evaluation Harness on the run's checkpoint."""
  if importlib.util.find_spec("lm_eval") is None:
    fail("--tasks needs the LM Evaluation Harness; install it with `pip install 'jaxlm[harness]'`")
  if F.batch_size < 1:
    fail(f"--batch_size={F.batch_size} is invalid: expected a positive integer")
  if F.limit is not None and not F.limit > 0:
    fail(f"--limit={F.limit} is invalid: expected a count >= 1 or a fraction in (0, 1)")
  if F.num_fewshot is not None and F.num_fewshot < 0:
    fail(f"--num_fewshot={F.num_fewshot} is invalid: expected an integer >= 0")
  from jaxlm.inference import harness  # lm-eval is optional: imported only when asked for
  limit = None if F.limit is None else (int(F.limit) if F.limit >= 1 else F.limit)
  with cli.failing(ValueError, FileNotFoundError):
    summary = harness.run(F.workdir, F.tasks, num_fewshot=F.num_fewshot, limit=limit,
                          batch_size=F.batch_size, include=F.include, step=F.step)
  with open(os.path.join(F.workdir, harness.RESULTS)) as f:
    print(harness.table(json.load(f)))
  print(f"step {summary['step']}: {summary['examples']:,} examples, "
        f"{summary['requests']:,} requests in "
        f"{summary['seconds']:.1f}s; wrote {os.path.join(F.workdir, harness.RESULTS)} and "
        f"{harness.SUMMARY}")


def entry():
  app.run(main)

