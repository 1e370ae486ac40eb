"""Chinchilla scaling-law fits: IsoFLOP parabolas (Approach 2) and the parametric law (Approach 3).

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"), section 3,
with the corrections of Besiroglu et al. 2024 ("Chinchilla Scaling: A replication
attempt"): fit on full-precision data, make sure the optimizer converged, and
report bootstrap intervals over runs, which are honest about how few points there
are (the original's intervals were implausibly narrow for ~400 runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import math
import os

import numpy as np
import scipy
from scipy import optimize, special

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, section 3.3
# Their initialization grid (appendix D.2): every combination is evaluated, and
# L-BFGS starts from the best few, since the objective is cheap but not convex.
INIT_GRID = {"a": np.arange(0, 30, 5.0), "b": np.arange(0, 30, 5.0),
             "e": np.arange(-1, 1.5, 0.5), "alpha": np.arange(0, 2.5, 0.5),
             "beta": np.arange(0, 2.5, 0.5)}


@contextlib.contextmanager
def _serial_blas():
  """Runs the block with scipy's OpenBLAS on one thread, where it can be found.

  L-BFGS-B calls BLAS on 5-vectors; OpenBLAS threads for them and, on a busy
  machine, made a fit ~40x slower (measured: 37 s vs 0.8 s for a test fit).
  """
  libs = glob.glob(os.path.join(os.path.dirname(scipy.__file__) + ".libs", "libscipy_openblas*"))
  try:
    lib = ctypes.CDLL(libs[0])
    before = lib.scipy_openblas_get_num_threads()
    lib.scipy_openblas_set_num_threads(1)
  except (IndexError, OSError, AttributeError):
    yield
    return
  try:
    yield
  finally:
    lib.scipy_openblas_set_num_threads(before)


def _huber(r, delta):
  small = np.abs(r) <= delta
  value = np.where(small, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta))
  grad = np.where(small, r, delta * np.sign(r))
  return value, grad


def _objective(theta, log_n, log_d, log_l, delta):
  a, b, e, alpha, beta = theta
  t1, t2 = a - alpha * log_n, b - beta * log_d
  top = np.maximum(np.maximum(t1, t2), e)  # log-sum-exp by hand: this runs ~1e5 times a fit
  w1, w2, w3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
  total = w1 + w2 + w3
  value, dr = _huber(top + np.log(total) - log_l, delta)
  w1, w2, w3 = dr * w1 / total, dr * w2 / total, dr * w3 / total  # d lse / d terms
  grad = np.array([w1.sum(), w2.sum(), w3.sum(), -(w1 * log_n).sum(), -(w2 * log_d).sum()])
  return float(value.sum()), grad


def _grid_objective(grid, log_n, log_d, log_l, delta):
  """Objective at every grid row (G, 5), vectorized."""
  a, b, e, alpha, beta = (grid[:, i:i + 1] for i in range(5))
  terms = np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e + 0 * log_n))
  r = special.logsumexp(terms, axis=0) - log_l
  return _huber(r, delta)[0].sum(axis=1)


# Box for (a, b, e, alpha, beta): wide enough for any plausible law, but a
# degenerate sample (few points, or a bootstrap resample of them) can no longer
# run A = exp(a) off to overflow; a fit that ends on the box is visible in
# fit.json's numbers rather than a crash.
BOUNDS = ((-20.0, 60.0), (-20.0, 60.0), (-10.0, 10.0), (1e-3, 5.0), (1e-3, 5.0))


def fit_law(n, d, loss, delta=HUBER_DELTA, starts=8, extra_starts=()):
  """Fits L = E + A/N^α + B/D^β by L-BFGS on the Huber loss of log residuals.

  Returns the dict of E, A, B, alpha, beta, a, b, objective and converged (whether
  the best start's optimizer reported success).
  """
  log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
  grid = np.array(list(itertools.product(*INIT_GRID.values())))
  order = np.argsort(_grid_objective(grid, log_n, log_d, log_l, delta))
  inits = [grid[i] for i in order[:starts]] + [np.asarray(x) for x in extra_starts]
  best = min((optimize.minimize(_objective, x0, args=(log_n, log_d, log_l, delta), jac=True,
                                method="L-BFGS-B", bounds=BOUNDS,
                                options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 20000})
              for x0 in inits), key=lambda res: res.fun)
  a, b, e, alpha, beta = best.x
  return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta,
          "a": beta / (alpha + beta), "b": alpha / (alpha + beta), "objective": best.fun,
          "converged": bool(best.success), "theta": best.x}


def group_budgets(flops, tolerance_dex):
  """Budget index per run: sorted log10 FLOPs split wherever consecutive gaps exceed tolerance."""
  log_c = np.log10(flops)
  order = np.argsort(log_c)
  groups = np.zeros(len(flops), dtype=int)
  groups[order[1:]] = np.cumsum(np.diff(log_c[order]) > tolerance_dex)
  return groups


def _parabola(log_n, log_d, loss):
  """Vertex of loss against log N, or the reason there is none."""
  if len(np.unique(log_n)) < 3:
    return None, "fewer than 3 model sizes"
  c2, c1, c0 = np.polyfit(log_n, loss, 2)
  if c2 <= 0:
    return None, "parabola opens downward"
  x = -c1 / (2 * c2)
  if not log_n.min() <= x <= log_n.max():
    return None, "minimum outside the sampled sizes"
  # D at the vertex by interpolating log D against log N within the budget: exact
  # for any FLOP convention, where D = C/(6N) holds only for 6ND.
  slope, intercept = np.polyfit(log_n, log_d, 1)
  return {"n_opt": math.exp(x), "d_opt": math.exp(intercept + slope * x),
          "loss_opt": c0 + c1 * x + c2 * x * x, "coef": [c2, c1, c0]}, None


def fit_isoflop(n, d, loss, flops, groups):
  """Approach 2: per budget a parabola in log N, then N_opt ∝ C^a and D_opt ∝ C^b."""
  budgets = []
  for g in np.unique(groups):
    m = groups == g
    c = float(np.exp(np.mean(np.log(flops[m]))))
    vertex, reason = _parabola(np.log(n[m]), np.log(d[m]), loss[m])
    budgets.append({"flops": c, "n_runs": int(m.sum()), **(vertex or {"rejected": reason})})
  ok = [b for b in budgets if "n_opt" in b]
  out = {"budgets": budgets, "a": None, "b": None}
  if len(ok) >= 2:
    log_c = np.log([b["flops"] for b in ok])
    out["a"], out["log_n_intercept"] = map(float, np.polyfit(
        log_c, np.log([b["n_opt"] for b in ok]), 1))
    out["b"], out["log_d_intercept"] = map(float, np.polyfit(
        log_c, np.log([b["d_opt"] for b in ok]), 1))
  return out


def _interval(samples, level=0.95):
  samples = np.asarray([s for s in samples if s is not None and np.isfinite(s)])
  if not len(samples):
    return None
  lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
  return [float(lo), float(hi)]


@_serial_blas()
def fit(data: dict, n_boot: int = 200, seed: int = 0, group_tolerance_dex: float = 0.15,
        delta: float = HUBER_DELTA) -> dict:
  """Both approaches with bootstrap intervals; the fit.json layout of docs/interfaces.md.

  Bootstrap: runs are resampled with replacement (within each budget for
  Approach 2, so every budget keeps its profile) and both fits are redone.
  """
  n, d, loss, flops = data["params"], data["tokens"], data["loss"], data["flops"]
  if len(n) < 5:
    raise ValueError(f"{len(n)} finished runs: expected at least 5 to fit 5 parameters")
  rng = np.random.default_rng(seed)
  law = fit_law(n, d, loss, delta)
  groups = group_budgets(flops, group_tolerance_dex)
  iso = fit_isoflop(n, d, loss, flops, groups)
  keys = ("E", "A", "B", "alpha", "beta", "a", "b")
  law_samples, iso_samples, failed = [], [], 0
  for _ in range(n_boot):
    idx = rng.integers(0, len(n), len(n))
    boot = fit_law(n[idx], d[idx], loss[idx], delta, starts=1, extra_starts=[law["theta"]])
    failed += not boot["converged"]
    law_samples.append([boot[k] for k in keys])
    strat = np.concatenate([rng.choice(np.flatnonzero(groups == g), (groups == g).sum())
                            for g in np.unique(groups)])
    b_iso = fit_isoflop(n[strat], d[strat], loss[strat], flops[strat], groups[strat])
    iso_samples.append([b_iso["a"], b_iso["b"], b_iso.get("log_n_intercept"),
                        b_iso.get("log_d_intercept")])
  law_samples = np.asarray(law_samples, dtype=float)
  parametric = {k: float(law[k]) for k in keys}
  parametric.update(objective=float(law["objective"]), n_runs=int(len(n)),
                    converged=law["converged"], delta=delta, n_boot=n_boot,
                    n_boot_not_converged=int(failed),
                    ci={k: _interval(law_samples[:, i]) for i, k in enumerate(keys)},
                    bootstrap=law_samples[:, :5].tolist())
  iso_cols = list(zip(*iso_samples)) if iso_samples else [[]] * 4
  iso["ci"] = {"a": _interval(iso_cols[0]), "b": _interval(iso_cols[1])}
  if iso["a"] is None:  # no point estimate: resamples that happen to fit say nothing
    iso["ci"] = {"a": None, "b": None}
    iso["warning"] = ("fewer than 2 budgets have an interior minimum, so there are no "
                      "IsoFLOP exponents; widen the size ranges or raise the budgets")
  iso["bootstrap"] = [list(s) for s in iso_samples if s[0] is not None]
  if iso["a"] is not None and (len(iso["bootstrap"]) < 0.5 * n_boot
                               or iso["ci"]["a"][1] - iso["ci"]["a"][0] < 1e-9):
    # Three sizes determine a parabola exactly, and two budgets a line: resampling
    # then cannot show the uncertainty, and a zero-width interval would mislead.
    iso["warning"] = ("bootstrap cannot measure this fit's uncertainty (too few sizes per "
                      "budget or budgets); expected >= 5 sizes per budget and >= 3 budgets")
  iso.update(n_boot=n_boot, group_tolerance_dex=group_tolerance_dex)
  return {"parametric": parametric, "isoflop": iso,
          "flops_convention": data.get("flops_convention", "6ND")}


def law_optimum(E, A, B, alpha, beta, flops):
  """Compute-optimal N, D and loss under C = 6ND (Hoffmann et al. 2022, eq. 4)."""
  g = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
  c6 = np.asarray(flops, dtype=float) / 6.0
  n_opt = g * c6 ** (beta / (alpha + beta))
  d_opt = c6 / n_opt
  return n_opt, d_opt, E + A / n_opt ** alpha + B / d_opt ** beta


def predict(fit_json: dict, flops: float, level: float = 0.95) -> dict:
  """N_opt, D_opt and loss at `flops` from both approaches, each with a bootstrap interval."""
  p = fit_json["parametric"]
  n_opt, d_opt, l_opt = law_optimum(p["E"], p["A"], p["B"], p["alpha"], p["beta"], flops)
  boots = np.asarray(p.get("bootstrap") or [], dtype=float).reshape(-1, 5)
  bn, bd, bl = law_optimum(*boots.T, flops) if len(boots) else ([], [], [])
  out = {"flops": flops, "flops_convention": fit_json.get("flops_convention", "6ND"),
         "parametric": {"n_opt": float(n_opt), "d_opt": float(d_opt), "loss": float(l_opt),
                        "ci": {"n_opt": _interval(bn, level), "d_opt": _interval(bd, level),
                               "loss": _interval(bl, level)}}}
  iso = fit_json.get("isoflop") or {}
  if iso.get("a") is not None and "log_n_intercept" in iso:
    log_c = math.log(flops)
    samples = np.asarray(iso.get("bootstrap") or [], dtype=float).reshape(-1, 4)
    out["isoflop"] = {
        "n_opt": math.exp(iso["log_n_intercept"] + iso["a"] * log_c),
        "d_opt": math.exp(iso["log_d_intercept"] + iso["b"] * log_c),
        "ci": {"n_opt": _interval(np.exp(samples[:, 2] + samples[:, 0] * log_c), level),
               "d_opt": _interval(np.exp(samples[:, 3] + samples[:, 1] * log_c), level)}}
  return out
