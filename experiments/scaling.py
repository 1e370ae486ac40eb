"""Scaling-law sweeps on the Shakespeare experiment: IsoFLOP profiles and a size grid."""

from jaxlm.registry import register_sweep
from jaxlm.scaling.sweeps import GridSpec, IsoFlopSpec

# No text samples: a sweep only needs the final validation loss.
_QUIET = ("train.sample_tokens=0",)


@register_sweep
def shakespeare_isoflop():
  """IsoFLOP profiles: 3 budgets x 5 sizes; ~25 minutes on 2 CPU cores in all.

  python launch/sweep_local.py --sweep=shakespeare_isoflop --dir=runs/isoflop
  """
  # Budgets sized for ~1.4e13 FLOPs (exact count) in all (~25 min at ~1e10 FLOP/s on 2 CPU
  # cores); size ranges bracket sqrt(C/120), the Chinchilla optimum at D ≈ 20N,
  # shifted up since the 2048-token embedding alone is ~1e5 parameters.
  return IsoFlopSpec(base="shakespeare", budgets=(1.2e11, 4e11, 1.2e12),
                     n_ranges=((1.2e4, 2.5e5), (2e4, 4e5), (3e4, 6e5)), sizes=5, head_dim=16,
                     extra=_QUIET)


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
