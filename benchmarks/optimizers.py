"""The four optimizers on the default experiment: validation bits per byte and wall time.

Each row is `python -m jaxlm.main --experiment=shakespeare` with optim.name set
(and, for Lion, the usual 10x smaller learning rate and 10x larger decay), run
in a fresh process one after another, so they share the machine's state.
Prints a table and writes JSON.

  python benchmarks/optimizers.py [--only adamw,lion] [--set key=value ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import os

import default_experiment
import report

# optim overrides per row. The default experiment's AdamW takes lr 4e-3, decay 0.1.
RECIPES = {
    "adamw": [],
    # Lion's sign updates are larger than Adam's: Chen et al. 2023 use a 3-10x smaller
    # lr and a correspondingly larger decay (the product lr * decay is kept).
    "lion": ["optim.name=lion", "optim.lr=4e-4", "optim.weight_decay=1.0", "optim.b2=0.99"],
    "adafactor": ["optim.name=adafactor"],
    # Muon's matrices at its own lr (0.02, Jordan et al. 2024); the rest AdamW at 4e-3.
    "muon": ["optim.name=muon"],
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default=",".join(RECIPES), help="comma-separated optimizers")
  parser.add_argument("--experiment", default="shakespeare")
  parser.add_argument("--set", action="append", default=[], help="extra key=value for every row")
  parser.add_argument("--out", default=os.path.join(default_experiment.ROOT, "benchmarks",
                                                    "results", "optimizers.json"))
  args = parser.parse_args()
  names = args.only.split(",")
  unknown = [n for n in names if n not in RECIPES]
  if unknown:
    parser.error(f"--only: unknown optimizer(s) {unknown}; expected some of {list(RECIPES)}")
  rows, results = [], []
  for name in names:
    overrides = RECIPES[name] + args.set
    print(f"{name}: {' '.join(overrides) or '(defaults)'}", flush=True)
    wall, summary, _ = default_experiment.run(args.experiment, overrides)
    steps = summary["steps"]
    result = {"optimizer": name, "overrides": overrides, "wall_seconds_total": wall,
              "wall_seconds_in_run": summary["wall_seconds"],
              "final_val_bpb": summary["final_val_bpb"],
              "final_val_loss": summary["final_val_loss"], "steps": steps}
    results.append(result)
    rows.append([name, " ".join(overrides) or "(defaults)", f"{summary['final_val_bpb']:.4f}",
                 f"{wall:.0f}", f"{summary['wall_seconds']:.0f}"])
    print(f"  val bpb {summary['final_val_bpb']:.4f}, {wall:.0f} s", flush=True)
  print(report.table(["optimizer", "overrides", "val bpb", "wall s (process)", "wall s (run)"],
                     rows))
  report.write(args.out, {"experiment": args.experiment, "rows": results})


if __name__ == "__main__":
  main()
