"""Growing the default Shakespeare model from a smaller trained one (docs/growing.md).

The arms, each run in order from the repository root (the first four took 45
min on 2 heavily loaded CPU cores; the width pair was not run):

  python -m jaxlm.main --experiment=growing_scratch --workdir=runs/growing/scratch
  python -m jaxlm.main --experiment=growing_small_l2 --workdir=runs/growing/small_l2
  python -m jaxlm.main --experiment=growing_interleave --workdir=runs/growing/interleave
  python -m jaxlm.main --experiment=growing_stack --workdir=runs/growing/stack
  python -m jaxlm.main --experiment=growing_small_d64 --workdir=runs/growing/small_d64
  python -m jaxlm.main --experiment=growing_width --workdir=runs/growing/width
  python -m experiments.growing runs/growing docs/growing   # table, plot, results.json
"""

import json
import os
import sys

import numpy as np

from jaxlm import config as config_lib
from jaxlm.config import InitConfig
from jaxlm.registry import register

from experiments.gpt import shakespeare

SMALL_STEPS = 175  # half the default's steps, each cheaper
GROWN_STEPS = 200  # 4/7 of the default's steps at its full size


def _base(name: str, **dotted):
  # Evaluations every 25 steps draw the loss-vs-FLOPs curves; no text samples.
  config = config_lib.replace(shakespeare(), name=name, **{
      "train.eval_every": 25, "train.sample_tokens": 0})
  return config_lib.replace(config, **dotted)


@register
def growing_scratch():
  """Baseline: the default model (L4 d128) trained from scratch, evaluated every 25 steps.

  python -m jaxlm.main --experiment=growing_scratch --workdir=runs/growing/scratch
  """
  return _base("growing_scratch")


@register
def growing_small_l2():
  """The half-depth source (L2 d128) for growing_interleave and growing_stack: 175 steps.

  python -m jaxlm.main --experiment=growing_small_l2 --workdir=runs/growing/small_l2
  """
  return _base("growing_small_l2", **{"model.n_layers": 2, "train.steps": SMALL_STEPS})


@register
def growing_small_d64():
  """The half-width source (L4 d64, 2 heads of 32) for growing_width: 175 steps.

  python -m jaxlm.main --experiment=growing_small_d64 --workdir=runs/growing/small_d64
  """
  return _base("growing_small_d64", **{"model.d_model": 64, "model.n_heads": 2,
                                       "train.steps": SMALL_STEPS})


def _grown(name: str, source: str, grow: str):
  config = _base(name, **{"train.steps": GROWN_STEPS})
  return config_lib.replace(config, init=InitConfig(from_workdir=source, grow=grow))


@register
def growing_interleave():
  """L2 -> L4 by repeating each trained layer in place (copies start as identity): 200 steps.

  python -m jaxlm.main --experiment=growing_interleave --workdir=runs/growing/interleave
  (after growing_small_l2 has run in runs/growing/small_l2)
  """
  return _grown("growing_interleave", "runs/growing/small_l2", "interleave")


@register
def growing_stack():
  """L2 -> L4 by stacking the trained layers twice (Gong et al. 2019; copies start as identity).

  python -m jaxlm.main --experiment=growing_stack --workdir=runs/growing/stack
  (after growing_small_l2 has run in runs/growing/small_l2)
  """
  return _grown("growing_stack", "runs/growing/small_l2", "stack")


@register
def growing_width():
  """d64 -> d128 (2 -> 4 heads, new dims and units start silent): 200 steps.

  python -m jaxlm.main --experiment=growing_width --workdir=runs/growing/width
  (after growing_small_d64 has run in runs/growing/small_d64)
  """
  return _grown("growing_width", "runs/growing/small_d64", "interleave")


# The report: validation loss against cumulative training FLOPs, where a grown
# run's count starts at its source run's total (the small run is part of its cost).
ARMS = ("scratch", "interleave", "stack", "width")


def _read_run(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if "val_loss" in r]
  per_step = summary["flops"] / summary["steps"]
  return {"config": config, "summary": summary, "per_step": per_step,
          "steps": [r["step"] for r in evals], "val_loss": [r["val_loss"] for r in evals]}


def curves(root: str) -> dict:
  """Per arm: FLOPs (with the source run's) and val loss at each evaluation."""
  out = {}
  for arm in ARMS + ("small_l2", "small_d64"):
    if not os.path.isfile(os.path.join(root, arm, "summary.json")):
      continue
    run = _read_run(os.path.join(root, arm))
    source = run["config"]["init"]["from_workdir"]
    offset, start = 0.0, []
    if source:
      src = _read_run(source)
      offset = src["summary"]["flops"]
      start = [(offset, src["summary"]["final_val_loss"])]  # grown = source's function
    points = start + [(offset + s * run["per_step"], v)
                      for s, v in zip(run["steps"], run["val_loss"])]
    out[arm] = {"source": os.path.basename(source), "source_flops": offset,
                "flops": [p[0] for p in points], "val_loss": [p[1] for p in points],
                "final_val_loss": run["summary"]["final_val_loss"],
                "total_flops": offset + run["summary"]["flops"],
                "wall_seconds": run["summary"]["wall_seconds"]}
  return out


def table(runs: dict) -> tuple[str, dict]:
  """Markdown table and its numbers: each arm against the scratch run's final loss."""
  base = runs["scratch"]
  target, budget = base["final_val_loss"], base["total_flops"]
  rows = ["| arm | source | total FLOPs | of scratch | final val loss | scratch at same FLOPs "
          "| FLOPs to reach scratch's final | of scratch |", "|" + " --- |" * 8]
  numbers = {}
  for arm, r in runs.items():
    if arm.startswith("small"):
      continue
    same = float(np.interp(r["total_flops"], base["flops"], base["val_loss"]))
    reach = next((f for f, v in zip(r["flops"], r["val_loss"]) if v <= target), None)
    numbers[arm] = {"total_flops": r["total_flops"], "final_val_loss": r["final_val_loss"],
                    "scratch_at_same_flops": same, "flops_to_scratch_final": reach}
    rows.append(
        f"| {arm} | {r['source'] or '-'} | {r['total_flops']:.3g} | "
        f"{r['total_flops'] / budget:.0%} | {r['final_val_loss']:.4f} | {same:.4f} | "
        + (f"{reach:.3g} | {reach / budget:.0%} |" if reach else "not reached | - |"))
  return "\n".join(rows), numbers


def plot(runs: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")  # files only
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm, r in runs.items():
    style = dict(ls="--", alpha=0.6) if arm.startswith("small") else dict(marker=".")
    ax.plot(np.array(r["flops"]) / 1e12, r["val_loss"], label=arm, **style)
  ax.axhline(runs["scratch"]["final_val_loss"], color="gray", lw=0.8, ls=":")
  ax.set_xlabel("cumulative training FLOPs (1e12; grown runs include their source run)")
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_ylim(top=min(6.0, ax.get_ylim()[1]))
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def report(root: str, out: str) -> None:
  """Writes out/results.json and out/loss_vs_flops.png; prints the table."""
  os.makedirs(out, exist_ok=True)
  runs = curves(root)
  text, numbers = table(runs)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"runs": runs, "table": numbers}, f, indent=1)
  plot(runs, os.path.join(out, "loss_vs_flops.png"))
  print(text)


if __name__ == "__main__":
  report(*sys.argv[1:3])
