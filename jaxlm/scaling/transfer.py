"""Learning-rate transfer across widths (μTransfer): loss per (parameterization, width, lr).

Reads a runs.csv from `collect` (columns parameterization, d_model, lr, loss,
status, mup_base_width, seed), averages each point's loss over its seeds (a point
with a failed seed counts as failed; seeds not run are left out), and finds each
width's best learning rate: the grid's minimum and, when that lies inside the
grid, the vertex of a parabola in log2(lr) through it and its two neighbours.
μP at its base width is the standard parameterization bit for bit, so a sweep
of both runs that width once (as standard; LrTransferSpec) and it counts here
for both (`shared_widths`).
`drift_octaves` is log2(best lr at the widest / at the narrowest): μP predicts
~0 (Yang et al. 2022, fig. 1); the standard parameterization's best lr falls as
the width grows.
"""

from __future__ import annotations

import csv
import math
import os


# collect's statuses of runs without a result that are not failures either.
_NOT_DONE = ("pending", "incomplete", "interrupted", "running")


def read(path: str) -> list[dict]:
  """Rows of runs.csv as dicts with parameterization, d_model (int), lr and loss (floats).

  Runs that failed (e.g. stopped by a non-finite loss) have loss None; runs not
  finished yet (pending, incomplete, interrupted) are left out.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"runs file {path!r} does not exist: expected a CSV such as "
                            "`python -m jaxlm.scaling collect` writes")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"parameterization", "d_model", "lr", "loss"} - set(reader.fieldnames or [])
    if missing:
      raise ValueError(f"{path}: columns {sorted(missing)} are missing: expected a runs.csv "
                       "from `python -m jaxlm.scaling collect` of a LrTransferSpec sweep")
    rows = []
    for row in reader:
      if not row["d_model"] or not row["lr"] or row.get("status") in _NOT_DONE:
        continue  # planned, still running or cut off: not a result yet
      ok = row.get("status", "ok") == "ok" and row["loss"] not in ("", None)
      base = row.get("mup_base_width")
      rows.append({"name": row.get("name", ""), "parameterization": row["parameterization"],
                   "d_model": int(row["d_model"]), "lr": float(row["lr"]),
                   "loss": float(row["loss"]) if ok else None, "status": row.get("status", "ok"),
                   "mup_base_width": int(base) if base else None,
                   "seed": int(row.get("seed") or 0)})
  return rows


def _with_shared_base(rows: list[dict]) -> tuple[list[dict], list[int]]:
  """Rows plus standard's runs at μP's base width as μP's, where μP has none there."""
  mup_widths = {r["d_model"] for r in rows if r["parameterization"] == "mup"}
  bases = {r.get("mup_base_width") for r in rows if r["parameterization"] == "mup"} - {None}
  shared = sorted(b for b in bases if b not in mup_widths)
  extra = [{**r, "parameterization": "mup", "mup_base_width": r["d_model"]} for r in rows
           if r["parameterization"] == "standard" and r["d_model"] in shared]
  return rows + extra, shared


def best_lr(lrs: list[float], losses: list[float | None]) -> dict:
  """The grid's best lr and loss, and `lr_fit`: a parabola's vertex in log2(lr) (or None)."""
  points = sorted((lr, loss) for lr, loss in zip(lrs, losses)
                  if loss is not None and math.isfinite(loss))
  if not points:
    return {"lr": None, "loss": None, "lr_fit": None}
  i = min(range(len(points)), key=lambda j: points[j][1])
  out = {"lr": points[i][0], "loss": points[i][1], "lr_fit": None}
  if 0 < i < len(points) - 1:
    (x0, y0), (x1, y1), (x2, y2) = [(math.log2(lr), loss) for lr, loss in points[i - 1:i + 2]]
    # Vertex of the parabola through three points (Lagrange form).
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
    if a > 0:
      out["lr_fit"] = 2.0 ** (-b / (2 * a))
  return out


def _mean(losses: list[float | None]) -> float | None:
  """The mean over the seeds that ran; None if one failed (its lr is not a usable point)."""
  if not losses or any(l is None or not math.isfinite(l) for l in losses):
    return None
  return sum(losses) / len(losses)


def analyze(rows: list[dict]) -> dict:
  """Per parameterization: loss[width][lr], the best lr per width, and the drift in octaves."""
  rows, shared = _with_shared_base(rows)
  out = {}
  for p in sorted({r["parameterization"] for r in rows}, key=lambda p: p != "standard"):
    mine = [r for r in rows if r["parameterization"] == p]
    widths = sorted({r["d_model"] for r in mine})
    seeds = sorted({r["seed"] for r in mine})
    by_seed = {w: {s: {r["lr"]: r["loss"] for r in mine if r["d_model"] == w and r["seed"] == s}
                   for s in seeds} for w in widths}
    loss = {w: {lr: _mean([by_seed[w][s][lr] for s in seeds if lr in by_seed[w][s]])
                for lr in sorted({r["lr"] for r in mine if r["d_model"] == w})} for w in widths}
    best = {w: best_lr(list(loss[w]), list(loss[w].values())) for w in widths}
    # Each seed's own best lr: how far the optimum moves with the seed alone.
    best_per_seed = {w: [best_lr(list(v), list(v.values()))["lr"] for v in by_seed[w].values()]
                     for w in widths}
    ends = [best[w]["lr_fit"] or best[w]["lr"] for w in (widths[0], widths[-1])]
    drift = math.log2(ends[1] / ends[0]) if None not in ends else None
    out[p] = {"widths": widths, "lrs": sorted({r["lr"] for r in mine}), "loss": loss,
              "best": best, "drift_octaves": drift, "seeds": seeds,
              "best_per_seed": best_per_seed,
              "shared_widths": shared if p == "mup" else []}
  return out


def markdown(result: dict) -> str:
  """Final validation loss per (lr, width) for each parameterization, best per width in bold."""
  lines = []
  for p, r in result.items():
    widths = r["widths"]
    note = "".join(f" (d={w}: μP's base width, the standard runs)" for w in r["shared_widths"])
    lines += [f"**{p}**{note}", "", "| lr | " + " | ".join(f"d={w}" for w in widths) + " |",
              "| --- |" + " --- |" * len(widths)]
    for lr in r["lrs"]:
      cells = []
      for w in widths:
        loss = r["loss"][w].get(lr)
        cell = "—" if lr not in r["loss"][w] else "failed" if loss is None else f"{loss:.3f}"
        cells.append(f"**{cell}**" if lr == r["best"][w]["lr"] else cell)
      lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    best = ", ".join(f"d={w}: {_lr_text(r['best'][w])}" for w in widths)
    drift = r["drift_octaves"]
    lines += ["", f"best lr: {best}; drift widest/narrowest: "
              + ("n/a" if drift is None else f"{drift:+.2f} octaves (x{2 ** drift:.2f})")]
    if len(r["seeds"]) > 1:
      per_seed = ", ".join(f"d={w}: " + "/".join("none" if lr is None else f"{lr:g}" for lr in b)
                           for w, b in r["best_per_seed"].items())
      lines.append(f"mean of seeds {r['seeds']}; each seed's best lr: {per_seed}")
    lines.append("")
  return "\n".join(lines)


def _lr_text(best: dict) -> str:
  if best["lr"] is None:
    return "none"
  fit = f" (parabola {best['lr_fit']:.2g})" if best["lr_fit"] else ""
  return f"{best['lr']:g}{fit}"


def to_json(result: dict) -> dict:
  """The result with string keys (JSON objects cannot have number keys)."""
  return {p: {**r, "loss": {str(w): {repr(lr): l for lr, l in v.items()}
                            for w, v in r["loss"].items()},
              "best": {str(w): b for w, b in r["best"].items()},
              "best_per_seed": {str(w): b for w, b in r["best_per_seed"].items()}}
          for p, r in result.items()}
