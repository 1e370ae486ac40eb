"""Scaling-law sweeps on the Shakespeare experiment: IsoFLOP profiles and a size grid."""

from jaxlm.registry import register_sweep
from jaxlm.scaling.sweeps import GridSpec, IsoFlopSpec

# No text samples: a sweep only needs the final validation loss.
_QUIET = ("train.sample_tokens=0",)


@register_sweep
def shakespeare_isoflop():
  """IsoFLOP profiles: 3 budgets x up to 5 sizes; ~17 minutes on 2 CPU cores in all.

  python launch/sweep_local.py --sweep=shakespeare_isoflop --dir=runs/isoflop
  """
  # These budgets took 17 min on 2 CPU cores (small models run at ~20-40k
  # tokens/s here); see docs/scaling.md for the results.
  # Batch 64 x 64, so that even the shortest runs take dozens of steps (the sweep
  # shortens warmup to a tenth of a short run): with batch 128, a first
  # attempt at 1.2e11-1.2e12 FLOPs trained for 6-200 steps, mostly in warmup, and
  # every budget's minimum fell at its smallest model (docs/scaling.md).
  return IsoFlopSpec(base="shakespeare", budgets=(1e12, 3e12, 6e12),
                     n_ranges=((5e3, 1.2e5), (1e4, 2e5), (1.2e4, 2.5e5)), sizes=5, head_dim=16,
                     extra=_QUIET + ("train.batch_size=64", "checkpoint.every=0"))


@register_sweep
def shakespeare_isoflop_tiny():
  """Test-sized IsoFLOP sweep: 2 budgets x 3 sizes, a few steps each (seconds per run).

  python launch/sweep_local.py --sweep=shakespeare_isoflop_tiny --dir=/tmp/tiny --parallel=2
  """
  return IsoFlopSpec(base="shakespeare", budgets=(3e8, 6e8), n_ranges=((1e3, 3e4),) * 2,
                     sizes=3, aspect=8.0, head_dim=8,
                     extra=_QUIET + ("train.batch_size=8", "train.eval_batches=1",
                                     "train.log_every=1"))


@register_sweep
def shakespeare_grid():
  """Grid: 3 sizes x 2 token budgets x 3 learning rates, for learning-rate and data scans.

  python launch/sweep_local.py --sweep=shakespeare_grid --dir=runs/grid --parallel=2
  """
  return GridSpec(base="shakespeare", sizes=(3e4, 1e5, 3e5), tokens=(5e5, 2e6),
                  lrs=(1e-3, 3e-3, 1e-2), head_dim=16, extra=_QUIET)
