"""PNG plots of a fit: IsoFLOP profiles, the loss-compute frontier, and N_opt/D_opt vs compute."""

from __future__ import annotations

import os

import numpy as np

from jaxlm.scaling import fit as fit_lib


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt
  return plt


def isoflop_profiles(data: dict, result: dict, path: str) -> None:
  """Loss against N per budget, with each fitted parabola and its minimum."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
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
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def frontier(data: dict, result: dict, path: str) -> None:
  """Every run's loss against compute, with the fitted law's compute-optimal loss."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  sc = ax.scatter(data["flops"], data["loss"], c=np.log10(data["params"]), s=18)
  fig.colorbar(sc, ax=ax, label="log10 N")
  p = result["parametric"]
  c = np.geomspace(data["flops"].min() / 2, data["flops"].max() * 10, 100)
  ax.plot(c, fit_lib.law_optimum(p["E"], p["A"], p["B"], p["alpha"], p["beta"], c)[2], "k-",
          label=f"L = {p['E']:.2f} + {p['A']:.3g}/N^{p['alpha']:.2f} + "
                f"{p['B']:.3g}/D^{p['beta']:.2f}")
  ax.set(xscale="log", xlabel=f"training FLOPs ({result['flops_convention']})",
         ylabel="validation loss", title="Loss-compute frontier")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def optimal_allocation(data: dict, result: dict, path: str) -> None:
  """N_opt and D_opt against compute: IsoFLOP minima, their power laws, and the parametric law."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.5))
  iso, p = result["isoflop"], result["parametric"]
  ok = [b for b in iso["budgets"] if "n_opt" in b]
  c = np.geomspace(data["flops"].min() / 2, data["flops"].max() * 10, 100)
  n_law, d_law, _ = fit_lib.law_optimum(p["E"], p["A"], p["B"], p["alpha"], p["beta"], c)
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
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_all(data: dict, result: dict, out_dir: str) -> list[str]:
  """Writes the three plots into out_dir; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for fn, name in ((isoflop_profiles, "isoflop.png"), (frontier, "frontier.png"),
                   (optimal_allocation, "optimal.png")):
    paths.append(os.path.join(out_dir, name))
    fn(data, result, paths[-1])
  return paths
