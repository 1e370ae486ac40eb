"""Quality bar of the default experiment: wall time and validation bits per byte.

Runs `python -m jaxlm.main --experiment=shakespeare` exactly as a user would (a
fresh process: imports, tokenization, compilation, evaluation and the final
sample all count), then reads summary.json. Prints a table and writes JSON.

  python benchmarks/default_experiment.py [--experiment shakespeare] [--out FILE]

Goal (issue 3): at most 300 s on a 2-core CPU and val_bpb <= 2.3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(experiment: str, overrides: list[str]) -> tuple[float, dict, str]:
  """Trains `experiment` with `overrides` in a fresh CLI process: (wall seconds, summary, stdout)."""
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "run")
    cmd = [sys.executable, "-m", "jaxlm.main", f"--experiment={experiment}",
           f"--workdir={workdir}"] + [f"--set={s}" for s in overrides]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    wall = time.time() - start
    if proc.returncode:
      sys.exit(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    with open(os.path.join(workdir, "summary.json")) as f:
      return wall, json.load(f), proc.stdout


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", default="shakespeare")
  parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "default_experiment.json"))
  args = parser.parse_args()
  wall, summary, stdout = run(args.experiment, args.set)
  result = {
      "experiment": args.experiment, "overrides": args.set, "wall_seconds_total": wall,
      "wall_seconds_in_run": summary["wall_seconds"], "final_val_bpb": summary["final_val_bpb"],
      "final_val_loss": summary["final_val_loss"], "params": summary["params"],
      "tokens": summary["tokens"], "goal_seconds": 300, "goal_bpb": 2.3,
  }
  result["meets_goal"] = wall <= 300 and summary["final_val_bpb"] <= 2.3
  print(report.table(["experiment", "params", "tokens", "wall s (process)", "val bpb", "goal met"],
                     [[args.experiment, f"{result['params']:,}", f"{result['tokens']:,}",
                       f"{wall:.0f}", f"{result['final_val_bpb']:.3f}", result["meets_goal"]]]))
  print("sample and log tail:\n" + stdout[-1200:])
  report.write(args.out, result)


if __name__ == "__main__":
  main()
