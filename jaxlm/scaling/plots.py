"""PNG plots: a fit's IsoFLOP profiles, frontier and N_opt/D_opt; learning-rate transfer;
downstream task scores against compute and loss."""

from __future__ import annotations

import os

import numpy as np

from jaxlm.scaling import fit as fit_lib


def _pyplot():
  # matplotlib is optional (the plot extra) and slow to import: only plots need it.
  import matplotlib
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt
  return plt


def _axes():
  """A new 6 x 4.5 inch figure and its axes."""
  return _pyplot().subplots(figsize=(6, 4.5))


def _save(fig, path: str, *axes) -> None:
  """Legends on axes, then the figure written to path and closed."""
  for ax in axes:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  _pyplot().close(fig)


def _law(data: dict, p: dict):
  """Compute from half the runs' least to ten times their most, and the law's optima there."""
  c = np.geomspace(data["flops"].min() / 2, data["flops"].max() * 10, 100)
  return c, fit_lib.law_optimum(p["E"], p["A"], p["B"], p["alpha"], p["beta"], c)


def isoflop_profiles(data: dict, result: dict, path: str) -> None:
  """Loss against N per budget, with each fitted parabola and its minimum."""
  plt = _pyplot()
  fig, ax = _axes()
  budgets = result["isoflop"]["budgets"]
  tolerance = result["isoflop"].get("group_tolerance_dex", 0.15)
  groups = fit_lib.group_budgets(data["flops"], tolerance)
  colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(budgets), 1)))
  for g, budget, color in zip(np.unique(groups), budgets, colors):
    m = groups == g
    n, loss = data["params"][m], data["loss"][m]
    ax.scatter(n, loss, color=color, s=18, label=f"C={budget['flops']:.2g}")
    if "coef" in budget:
      x = np.linspace(np.log(n.min()), np.log(n.max()), 100)
      ax.plot(np.exp(x), np.polyval(budget["coef"], x), color=color, lw=1)
      ax.scatter([budget["n_opt"]], [budget["loss_opt"]], color=color, marker="*", s=120,
                 edgecolor="k")
  ax.set(xscale="log", xlabel="parameters N", ylabel="validation loss",
         title="IsoFLOP profiles (stars: parabola minima)")
  _save(fig, path, ax)


def frontier(data: dict, result: dict, path: str) -> None:
  """Every run's loss against compute, with the fitted law's compute-optimal loss."""
  fig, ax = _axes()
  sc = ax.scatter(data["flops"], data["loss"], c=np.log10(data["params"]), s=18)
  fig.colorbar(sc, ax=ax, label="log10 N")
  p = result["parametric"]
  c, (_, _, loss) = _law(data, p)
  ax.plot(c, loss, "k-",
          label=f"L = {p['E']:.2f} + {p['A']:.3g}/N^{p['alpha']:.2f} + "
                f"{p['B']:.3g}/D^{p['beta']:.2f}")
  ax.set(xscale="log", xlabel=f"training FLOPs ({result['flops_convention']})",
         ylabel="validation loss", title="Loss-compute frontier")
  _save(fig, path, ax)


def optimal_allocation(data: dict, result: dict, path: str) -> None:
  """N_opt and D_opt against compute: IsoFLOP minima, their power laws, and the parametric law."""
  fig, ax = _axes()
  iso, p = result["isoflop"], result["parametric"]
  ok = [b for b in iso["budgets"] if "n_opt" in b]
  c, (n_law, d_law, _) = _law(data, p)
  ax.plot(c, n_law, "C0--", label=f"N_opt, parametric (a={p['a']:.2f})")
  ax.plot(c, d_law, "C1--", label=f"D_opt, parametric (b={p['b']:.2f})")
  if ok:
    ax.scatter([b["flops"] for b in ok], [b["n_opt"] for b in ok], color="C0")
    ax.scatter([b["flops"] for b in ok], [b["d_opt"] for b in ok], color="C1")
  if iso.get("a") is not None:
    ax.plot(c, np.exp(iso["log_n_intercept"] + iso["a"] * np.log(c)), "C0-",
            label=f"N_opt, IsoFLOP (a={iso['a']:.2f})")
    ax.plot(c, np.exp(iso["log_d_intercept"] + iso["b"] * np.log(c)), "C1-",
            label=f"D_opt, IsoFLOP (b={iso['b']:.2f})")
  ax.set(xscale="log", yscale="log", xlabel=f"training FLOPs ({result['flops_convention']})",
         ylabel="parameters / tokens", title="Compute-optimal allocation")
  _save(fig, path, ax)


def best_per_budget(data: dict, tolerance: float = 0.15) -> list[int]:
  """Index of the lowest-loss run in each IsoFLOP budget, budgets in increasing order."""
  groups = fit_lib.group_budgets(data["flops"], tolerance)
  best = [int(np.flatnonzero(groups == g)[np.argmin(data["loss"][groups == g])])
          for g in np.unique(groups)]
  return sorted(best, key=lambda i: data["flops"][i])


def downstream(data: dict, path: str, metric: str = "acc") -> list[str]:
  """Each task's `metric` against training FLOPs (every run; a line through each budget's
  lowest-loss run) and against validation loss. Returns the columns plotted."""
  columns = [c for c in data["downstream"] if c.rsplit("/", 1)[1] == metric]
  if not columns:
    raise ValueError(f"no <task>/{metric} column in the runs; expected runs scored with "
                     "`python -m jaxlm.evaluate --tasks` (or train.harness_tasks) before "
                     f"collect; found {', '.join(data['downstream']) or 'no downstream columns'}")
  plt = _pyplot()
  fig, (by_flops, by_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
  best = best_per_budget(data)
  for k, column in enumerate(columns):
    y, color = data["downstream"][column], f"C{k}"
    task = column.rsplit("/", 1)[0]
    by_flops.scatter(data["flops"], y, color=color, s=14, alpha=0.5)
    by_flops.plot(data["flops"][best], y[best], "o-", color=color, label=task)
    by_loss.scatter(data["loss"], y, color=color, s=18, label=task)
  by_flops.set(xscale="log", xlabel="training FLOPs", ylabel=metric,
               title="Downstream vs compute (line: each budget's best-loss run)")
  by_loss.set(xlabel="validation loss", ylabel=metric, title="Downstream vs loss")
  by_loss.invert_xaxis()
  _save(fig, path, by_flops, by_loss)
  return columns


def write_all(data: dict, result: dict, out_dir: str) -> list[str]:
  """Writes the three plots into out_dir; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, name) for name in ("isoflop.png", "frontier.png", "optimal.png")]
  for fn, path in zip((isoflop_profiles, frontier, optimal_allocation), paths):
    fn(data, result, path)
  return paths


def lr_transfer(result: dict, path: str) -> None:
  """Loss against learning rate, one curve per width, one panel per parameterization."""
  plt = _pyplot()
  names = list(result)
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.2), sharey=True,
                           squeeze=False)
  finite = [l for r in result.values() for v in r["loss"].values() for l in v.values()
            if l is not None]
  top = min(max(finite), min(finite) + 1.0) if finite else 1.0  # keep the minima readable
  widths = sorted({w for r in result.values() for w in r["widths"]})
  colors = dict(zip(widths, plt.cm.viridis(np.linspace(0, 0.85, len(widths)))))
  for ax, name in zip(axes[0], names):
    r = result[name]
    for w in r["widths"]:
      points = sorted((lr, l) for lr, l in r["loss"][w].items() if l is not None)
      ax.plot([p[0] for p in points], [min(p[1], top) for p in points], "o-", ms=4,
              color=colors[w], label=f"d_model={w}")
      best = r["best"][w]
      if best["lr"] is not None:
        ax.scatter([best["lr"]], [best["loss"]], marker="*", s=160, color=colors[w],
                   edgecolor="k", zorder=3)
    drift = r["drift_octaves"]
    title = name if drift is None else f"{name}: best lr drifts {drift:+.2f} octaves"
    ax.set(xscale="log", xlabel="peak learning rate", title=title)
    # Tick the grid's rates themselves (log2-spaced: the default log ticks
    # label minor ticks in between and overlap).
    ax.xaxis.set_major_locator(plt.FixedLocator(r["lrs"]))
    ax.xaxis.set_major_formatter(plt.FixedFormatter([f"{lr:g}" for lr in r["lrs"]]))
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(f"final validation loss (clipped at {top:.2f})")
  _save(fig, path, *axes[0])
