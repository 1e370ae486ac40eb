"""Sweep specs (grid, IsoFLOP, WSD, learning-rate transfer), the shape rule, and expansion.

A sweep expands to a list of `SweepRun(name, overrides)`: each is an ordinary
`python -m jaxlm.main --experiment=<base> --set <override>...` run, and its name
is a deterministic function of the spec, so any point can be rerun alone. A
WSD study's cooldown branches continue another point (`after`) from its
checkpoint `at_step`; the launchers start them as soon as that checkpoint exists.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxlm import config_io
from jaxlm import registry
from jaxlm.config import Config, ModelConfig
from jaxlm.scaling import flops as flops_lib


@dataclasses.dataclass(frozen=True)
class SweepRun:
  """One point of a sweep: a filesystem-safe name and its `--set` overrides.

  role: "point" (an ordinary run), "stable" (a WSD study's constant-rate run, which
  only its branches use; fit leaves it out) or "branch" (a cooldown that continues
  point `after` from its checkpoint `at_step`: the launcher adds init.from_workdir
  and init.from_step).
  """
  name: str
  overrides: tuple[str, ...]
  role: str = "point"
  after: str = ""
  at_step: int = 0


@dataclasses.dataclass(frozen=True)
class Shape:
  """A model shape chosen for a target size, with the sizes it realizes."""
  d_model: int
  n_layers: int
  n_heads: int
  params: int
  non_embedding_params: int


def sci(x: float, digits: int = 2) -> str:
  """Compact, filesystem-safe scientific notation: 120000 -> '1.2e5', 3e-3 -> '3e-3'."""
  mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
  mantissa = mantissa.rstrip("0").rstrip(".")
  return f"{mantissa}e{int(exponent)}"


def shape_for(target: float, base: ModelConfig, aspect: float = 32.0,
              head_dim: int = 32, exclude: frozenset[Shape] | set[Shape] = frozenset()) -> Shape:
  """Width, depth and heads whose non-embedding parameter count is closest to `target`.

  Depth follows a fixed aspect ratio d_model ≈ aspect·n_layers: Kaplan et al.
  2020 (fig. 5) find loss nearly flat for d_model/n_layers between ~20 and ~200
  at fixed N, so one ratio is a fair shape for every size. Width is a multiple
  of head_dim. The realized count closest to target (in log) wins, the aspect
  ratio breaking near-ties; callers report the realized sizes, not the target.
  Shapes in `exclude` are passed over, so a sweep can ask for the closest shape
  it does not already have.
  """
  if target <= 0:
    raise ValueError(f"target size {target!r} is invalid: expected a positive parameter count")
  per_layer = 12.0  # ~4·D² attention + ~8·D² MLP (GELU 4D or SwiGLU 8D/3 wide, 3 mats)
  best = None
  for n_layers in range(1, 129):
    width = math.sqrt(target / (per_layer * n_layers))
    for mult in {max(1, math.floor(width / head_dim)), max(1, math.ceil(width / head_dim))}:
      # d_ff and n_kv_heads reset to their derived defaults, so every size has the
      # base's architecture (MLP kind, norms, positions) at a consistent ratio.
      model = dataclasses.replace(base, d_model=mult * head_dim, n_layers=n_layers, n_heads=mult,
                                  d_ff=0, n_kv_heads=0)
      counts = flops_lib.params(model)
      shape = Shape(model.d_model, n_layers, model.n_heads, counts["total"],
                    counts["non_embedding"])
      if shape in exclude:
        continue
      # Size first; the aspect term (weight 0.25) stops quantized widths pulling depth astray.
      cost = (abs(math.log(counts["non_embedding"] / target))
              + 0.25 * abs(math.log(model.d_model / (aspect * n_layers))))
      if best is None or cost < best[0]:
        best = (cost, shape)
  if best is None:
    raise ValueError(f"no shape left for target size {target:g}: all were excluded")
  return best[1]


def _shape_overrides(shape: Shape, base: ModelConfig) -> list[str]:
  out = [f"model.d_model={shape.d_model}", f"model.n_layers={shape.n_layers}",
         f"model.n_heads={shape.n_heads}"]
  if base.d_ff:
    out.append("model.d_ff=0")
  if base.n_kv_heads:
    out.append("model.n_kv_heads=0")
  return out


def _steps_overrides(steps: int, base: Config) -> list[str]:
  # The cosine schedule spans train.steps (train.steps sets its length), which is
  # what Hoffmann et al. 2022 (fig. A1) show matters: a cycle longer than the run
  # overstates the loss of short runs. Warmup is capped at a tenth of the run.
  out = [f"train.steps={steps}"]
  warmup = min(base.optim.warmup_steps, max(1, steps // 10))
  if warmup != base.optim.warmup_steps:
    out.append(f"optim.warmup_steps={warmup}")
  return out


def _check_seeds(seeds) -> None:
  if not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0:
    raise ValueError(f"seeds {seeds} are invalid: expected distinct non-negative ints")


def _per_seed(name: str, overrides: list[str], seeds) -> list[SweepRun]:
  """The point once per seed: name-s<seed> with `seed=<seed>`; seed 0 as the bare name.

  Seed 0 adds no suffix (and no override), so a one-seed sweep's names stay as
  they were and a sweep that adds seeds reuses its seed-0 runs.
  """
  return [SweepRun(name + (f"-s{seed}" if seed else ""),
                   tuple(overrides + ([f"seed={seed}"] if seed else []))) for seed in seeds]


def _log_space(lo: float, hi: float, count: int) -> list[float]:
  if not 0 < lo <= hi or count < 1:
    raise ValueError(f"size range ({lo}, {hi}) x {count} is invalid: expected "
                     "0 < lo <= hi and count >= 1")
  return list(np.exp(np.linspace(math.log(lo), math.log(hi), count)))


def _base(spec) -> Config:
  """The base experiment with the spec's shared overrides applied."""
  return config_io.apply_overrides(registry.experiment(spec.base), list(spec.extra))


@dataclasses.dataclass(frozen=True)
class IsoFlopSpec:
  """For each budget C, `sizes` models spaced evenly in log N, each trained on D = C/(6N).

  `n_ranges[i]` is the (lo, hi) non-embedding target size range for budgets[i];
  N in D = C/(6N) is the realized total parameter count, the `params` column
  that the fit's 6·params·tokens default reads (Hoffmann et al. 2022, sec. 3.2).
  """
  base: str
  budgets: tuple[float, ...]
  n_ranges: tuple[tuple[float, float], ...]
  sizes: int = 5
  aspect: float = 32.0
  head_dim: int = 32
  extra: tuple[str, ...] = ()   # overrides shared by every run
  min_steps: int = 1
  # (lr, width): peak learning rate lr * width / d_model for each size, so that
  # wider models get smaller rates (lr ∝ 1/width, the Adam rule for hidden
  # matrices that μP formalizes); None: every size uses the base experiment's lr.
  lr_at_width: tuple[float, int] | None = None
  seeds: tuple[int, ...] = (0,)  # each point once per seed (seed 0: no name suffix)

  def runs(self) -> list[SweepRun]:
    """Every (name, overrides) point: `sizes` distinct shapes per budget, once per seed.

    Where two targets round to the same shape (widths are multiples of
    head_dim), the later one takes the closest shape the budget does not have yet.
    """
    if len(self.n_ranges) != len(self.budgets):
      raise ValueError(f"n_ranges has {len(self.n_ranges)} entries: expected one per budget "
                       f"({len(self.budgets)})")
    if self.lr_at_width is not None and not (len(self.lr_at_width) == 2
                                             and min(self.lr_at_width) > 0):
      raise ValueError(f"lr_at_width {self.lr_at_width!r} is invalid: expected "
                       "(a positive learning rate, a positive width)")
    _check_seeds(self.seeds)
    base = _base(self)
    per_step = base.train.batch_size * base.data.seq_len
    out = []
    for budget, (lo, hi) in zip(self.budgets, self.n_ranges):
      seen = set()
      for target in _log_space(lo, hi, self.sizes):
        shape = shape_for(target, base.model, self.aspect, self.head_dim, exclude=seen)
        seen.add(shape)
        steps = max(self.min_steps, round(budget / (6.0 * shape.params * per_step)))
        name = f"isoflop-C{sci(budget)}-N{sci(shape.params)}"
        overrides = _shape_overrides(shape, base.model) + _steps_overrides(steps, base)
        if self.lr_at_width is not None:
          lr, width = self.lr_at_width
          overrides.append(f"optim.lr={lr * width / shape.d_model:.4g}")
        out += _per_seed(name, overrides + list(self.extra), self.seeds)
    return out


@dataclasses.dataclass(frozen=True)
class GridSpec:
  """Every combination of model size x token budget x peak learning rate."""
  base: str
  sizes: tuple[float, ...]       # non-embedding target sizes
  tokens: tuple[float, ...]
  lrs: tuple[float, ...]
  aspect: float = 32.0
  head_dim: int = 32
  extra: tuple[str, ...] = ()

  def runs(self) -> list[SweepRun]:
    """Every (name, overrides) point of the grid."""
    base = _base(self)
    per_step = base.train.batch_size * base.data.seq_len
    out = []
    for target in self.sizes:
      shape = shape_for(target, base.model, self.aspect, self.head_dim)
      for tokens in self.tokens:
        steps = max(1, round(tokens / per_step))
        for lr in self.lrs:
          name = f"grid-N{sci(shape.params)}-D{sci(tokens)}-lr{sci(lr)}"
          overrides = (_shape_overrides(shape, base.model) + _steps_overrides(steps, base)
                       + [f"optim.lr={lr:g}"] + list(self.extra))
          out.append(SweepRun(name, tuple(overrides)))
    return out


@dataclasses.dataclass(frozen=True)
class LrTransferSpec:
  """Widths x peak learning rates x parameterizations at a fixed depth and head dim.

  The μTransfer test (Yang et al. 2022, fig. 1): under μP the best learning rate
  should stay put as the width grows; under the standard parameterization it
  drifts. Heads grow with the width (d_model / head_dim), so only widths change.
  At its base width μP is the standard parameterization bit for bit
  (tests/test_transformer.py), so when both are swept that width runs once, as
  standard, and `python -m jaxlm.scaling transfer` counts it for both.
  """
  base: str
  widths: tuple[int, ...]
  lrs: tuple[float, ...]
  parameterizations: tuple[str, ...] = ("standard", "mup")
  mup_base_width: int = 0       # 0: the smallest width (tune there, transfer up)
  head_dim: int = 16
  extra: tuple[str, ...] = ()
  seeds: tuple[int, ...] = (0,)  # each point once per seed; `transfer` averages the losses

  def runs(self) -> list[SweepRun]:
    """Every (name, overrides) point: mutransfer-<parameterization>-d<width>-lr<lr>[-s<seed>]
    (seed 0: no suffix, see _per_seed)."""
    base = _base(self)
    bad = [w for w in self.widths if w <= 0 or w % self.head_dim]
    if bad:
      raise ValueError(f"widths {bad} are invalid: expected positive multiples of "
                       f"head_dim={self.head_dim}")
    _check_seeds(self.seeds)
    mup_base = self.mup_base_width or min(self.widths)
    out = []
    for parameterization in self.parameterizations:
      for width in self.widths:
        if (parameterization == "mup" and width == mup_base
            and "standard" in self.parameterizations):
          continue  # the same runs as standard's, bit for bit
        shape = Shape(width, base.model.n_layers, width // self.head_dim, 0, 0)
        common = _shape_overrides(shape, base.model)
        common.append(f"model.parameterization={parameterization}")
        if parameterization == "mup":
          common.append(f"model.mup_base_width={mup_base}")
        for lr in self.lrs:
          name = f"mutransfer-{parameterization}-d{width}-lr{sci(lr)}"
          out += _per_seed(name, common + [f"optim.lr={lr:g}", *self.extra], self.seeds)
    return out


@dataclasses.dataclass(frozen=True)
class WsdSpec:
  """A WSD scaling study: one stable (constant-rate) run per model size, cooled down at
  each budget whose size range holds it (Hägele et al. 2024, "Scaling Laws and
  Compute-Optimal Training Beyond Fixed Training Durations").

  `sizes` are non-embedding target sizes shared by the budgets; budget C uses the
  sizes inside its `n_ranges` entry and trains each on D = C/(6N) tokens, as an
  IsoFlopSpec point would, but as a branch: the stable run's state at
  (1 - decay_fraction) of the point's steps, decayed over the rest. A size costs
  its stable run (to its largest branch point) plus its cooldowns, instead of one
  whole run per budget. Branches run as IsoFLOP points for collect and fit.
  """
  base: str
  sizes: tuple[float, ...]
  budgets: tuple[float, ...]
  n_ranges: tuple[tuple[float, float], ...]
  decay_fraction: float = 0.2
  decay_shape: str = "1-sqrt"
  aspect: float = 32.0
  head_dim: int = 32
  extra: tuple[str, ...] = ()   # overrides shared by every run
  lr_at_width: tuple[float, int] | None = None  # as IsoFlopSpec's
  min_steps: int = 1

  def runs(self) -> list[SweepRun]:
    """Per size with a budget: wsd-N<params>-stable, then wsd-C<budget>-N<params> branches."""
    if len(self.n_ranges) != len(self.budgets):
      raise ValueError(f"n_ranges has {len(self.n_ranges)} entries: expected one per budget "
                       f"({len(self.budgets)})")
    if not 0 < self.decay_fraction < 1:
      raise ValueError(f"decay_fraction={self.decay_fraction} is invalid: expected in (0, 1)")
    base = _base(self)
    per_step = base.train.batch_size * base.data.seq_len
    stable, branches, seen = [], [], set()
    for target in sorted(self.sizes):
      shape = shape_for(target, base.model, self.aspect, self.head_dim, exclude=seen)
      seen.add(shape)
      mine = [c for c, (lo, hi) in zip(self.budgets, self.n_ranges)
              if lo / 1.001 <= target <= hi * 1.001]
      if not mine:
        continue
      steps = [max(self.min_steps, 2, round(c / (6.0 * shape.params * per_step)))
               for c in mine]
      at = [min(n - 1, max(1, round(n * (1 - self.decay_fraction)))) for n in steps]
      # One warmup for the size, the shortest point's, so that every branch's schedule
      # equals the stable run's up to its branch point.
      warmup = min(base.optim.warmup_steps, max(1, min(steps) // 10), min(at))
      common = _shape_overrides(shape, base.model) + [f"optim.warmup_steps={warmup}"]
      if self.lr_at_width is not None:
        lr, width = self.lr_at_width
        common.append(f"optim.lr={lr * width / shape.d_model:.4g}")
      common += list(self.extra)
      parent = f"wsd-N{sci(shape.params)}-stable"
      stable.append(SweepRun(parent, tuple(common + [
          f"train.steps={max(at)}", "optim.schedule=constant",
          "checkpoint.at_steps=" + ",".join(map(str, sorted(set(at))))]), role="stable"))
      for c, n, s in zip(mine, steps, at):
        branches.append(SweepRun(
            f"wsd-C{sci(c)}-N{sci(shape.params)}",
            tuple(common + [f"train.steps={n}", "optim.schedule=wsd",
                            f"optim.decay_steps={n - s}", f"optim.decay_shape={self.decay_shape}"]),
            role="branch", after=parent, at_step=s))
    return stable + branches


def expand(spec) -> list[SweepRun]:
  """The runs of a spec, checked for unique names."""
  runs = spec.runs()
  names = [r.name for r in runs]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"sweep run names repeat ({', '.join(dup)}): expected unique names; "
                     "widen the size ranges or lower `sizes`")
  return runs


def run_config(spec, run: SweepRun) -> Config:
  """The resolved config of one run (base experiment plus the run's overrides)."""
  return config_io.apply_overrides(_base(spec), list(run.overrides))
