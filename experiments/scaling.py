"""Scaling-law sweeps on the Shakespeare experiment: IsoFLOP profiles and a size grid."""

import dataclasses

from jaxlm.registry import register_sweep
from jaxlm.scaling.sweeps import GridSpec, IsoFlopSpec, LrTransferSpec, WsdSpec

# No text samples: a sweep only needs the final validation loss.
_QUIET = ("train.sample_tokens=0",)


@register_sweep
def shakespeare_isoflop():
  """IsoFLOP profiles, byte-level: 3 budgets a decade apart x 6 sizes; 16 min on 2 CPU cores.

  python launch/sweep_local.py --sweep=shakespeare_isoflop --dir=runs/isoflop_bytes --parallel=2
  """
  # Byte-level, so that the embedding is at most half of a model and 9% of the
  # largest (with the 2048-token vocabulary it was most of every model:
  # docs/scaling.md, first study). 16 min wall time, two points at a time.
  # Pilot runs at 1e12 FLOPs (batch 64 x 64) put the best model near 2.5e4
  # parameters, ~1e3 tokens per parameter, and at 5e12 at 1.2e5 or below; the size
  # ranges span a factor 16 around such minima. Each size's peak learning rate
  # is 0.004 * 64 / d_model: standard parameterization's best rate halves as
  # the width doubles (docs/mup.md). Aspect 16 (d_model ~ 16 n_layers) gives
  # the models 1-3 layers (the smallest ones 1).
  return IsoFlopSpec(base="shakespeare_char", budgets=(3e11, 1e12, 3e12),
                     n_ranges=((2.5e3, 4e4), (5e3, 8e4), (1e4, 1.6e5)), sizes=6,
                     aspect=16.0, head_dim=8, lr_at_width=(4e-3, 64),
                     extra=_QUIET + ("data.seq_len=64", "model.max_seq_len=64",
                                     "train.batch_size=64", "train.eval_every=0",
                                     "train.log_every=100", "checkpoint.every=0"))


@register_sweep
def python_stdlib_isoflop():
  """IsoFLOP profiles on the Python standard library, byte-level: 3 budgets x 6 sizes.

  python -m jaxlm.main --experiment=python_stdlib_bytes   # prepares the corpus once, first
  python launch/sweep_local.py --sweep=python_stdlib_isoflop --dir=runs/isoflop_stdlib --parallel=2
  """
  # shakespeare_isoflop's design (byte level, 64 x 64 batches, aspect 16, head dim 8,
  # lr 0.004 * 64 / d_model) on a corpus six times larger, at budgets a third of a
  # decade lower, so that no run sees the 31 MB of text more than once: the most
  # tokens any run takes are 2.1e7 (the smallest model at 1e12).
  iso = shakespeare_isoflop()
  return dataclasses.replace(iso, base="python_stdlib_bytes", budgets=(1e11, 3e11, 1e12),
                             n_ranges=((2e3, 3.2e4), (4e3, 6.4e4), (8e3, 1.28e5)))


@register_sweep
def shakespeare_isoflop_seeds():
  """shakespeare_isoflop with a second seed (init and data order) at every point: 36 runs.

  python launch/sweep_local.py --sweep=shakespeare_isoflop_seeds --dir=runs/isoflop_bytes --parallel=2
  """
  # Seed 0's runs keep their names, so in the directory of a finished
  # shakespeare_isoflop only the 18 seed-1 runs are left to do.
  return dataclasses.replace(shakespeare_isoflop(), seeds=(0, 1))


@register_sweep
def shakespeare_isoflop_check():
  """Checks shakespeare_isoflop's prediction at 1e13 FLOPs: its N_opt, half and twice it.

  python launch/sweep_local.py --sweep=shakespeare_isoflop_check --dir=runs/isoflop_check \
      --parallel=2
  """
  # The fit of shakespeare_isoflop (docs/scaling_study_bytes/fit.json) predicts at
  # 1e13 FLOPs, 3.3x beyond its largest budget: N_opt ~1.1e5 total parameters,
  # loss 1.65 [1.58, 1.74]. These sizes were chosen after that fit, to test it.
  spec = shakespeare_isoflop()
  return dataclasses.replace(spec, budgets=(1e13,), n_ranges=((4.4e4, 2e5),), sizes=3)


@register_sweep
def shakespeare_wsd():
  """shakespeare_isoflop as a WSD study: 7 stable runs cooled down at 15 (budget, size) points.

  python launch/sweep_local.py --sweep=shakespeare_wsd --dir=runs/wsd_bytes --parallel=2
  """
  # The same budgets, size ranges, models and learning rates as shakespeare_isoflop,
  # but sizes on one grid (2.5e3 x 2^k), so that a size serves every budget whose
  # range holds it: 5 sizes per budget (6 there) and 67% of its FLOPs (docs/scaling.md).
  # Cooldowns are the last 20% of each point's steps, 1-sqrt shaped (Hägele et al. 2024).
  iso = shakespeare_isoflop()
  return WsdSpec(base=iso.base, sizes=tuple(2.5e3 * 2 ** k for k in range(7)),
                 budgets=iso.budgets, n_ranges=iso.n_ranges, aspect=iso.aspect,
                 head_dim=iso.head_dim, lr_at_width=iso.lr_at_width, extra=iso.extra)


@register_sweep
def shakespeare_wsd_tiny():
  """Test-sized WSD study: 2 budgets x 2 sizes, branches off 3 stable runs, a few steps each.

  python launch/sweep_local.py --sweep=shakespeare_wsd_tiny --dir=/tmp/wsd --parallel=2
  """
  return WsdSpec(base="shakespeare_char", sizes=(2e3, 4e3, 8e3), budgets=(2e8, 4e8),
                 n_ranges=((2e3, 4e3), (4e3, 8e3)), aspect=8.0, head_dim=8,
                 extra=_QUIET + ("data.seq_len=32", "model.max_seq_len=32",
                                 "train.batch_size=8", "train.eval_batches=1",
                                 "train.final_eval_batches=8", "train.log_every=1",
                                 "train.eval_every=0", "checkpoint.every=0"))


@register_sweep
def shakespeare_isoflop_sp():
  """The first IsoFLOP study: 2048-token vocabulary, 3 budgets x 5 sizes, ~17 minutes.

  python launch/sweep_local.py --sweep=shakespeare_isoflop_sp --dir=runs/isoflop_sp
  """
  # Its results are docs/scaling_study/ (docs/scaling.md, "First study"); it then
  # dropped a size whose shape repeated (14 runs), where the spec now takes the
  # next closest shape. Batch 64 x 64, so that even the shortest runs take dozens
  # of steps: with batch 128, an attempt at 1.2e11-1.2e12 FLOPs trained for 6-200
  # steps, mostly in warmup, and every budget's minimum fell at its smallest model.
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
                                     "train.final_eval_batches=8", "train.log_every=1"))


@register_sweep
def shakespeare_grid():
  """Grid: 3 sizes x 2 token budgets x 3 learning rates, for learning-rate and data scans.

  python launch/sweep_local.py --sweep=shakespeare_grid --dir=runs/grid --parallel=2
  """
  return GridSpec(base="shakespeare", sizes=(3e4, 1e5, 3e5), tokens=(5e5, 2e6),
                  lrs=(1e-3, 3e-3, 1e-2), head_dim=16, extra=_QUIET)


# Byte-level, 2 layers, 64-token windows, batch 32, 150 steps (docs/mup.md).
_MUTRANSFER = _QUIET + ("model.n_layers=2", "data.seq_len=64", "model.max_seq_len=64",
                        "train.batch_size=32", "train.steps=150", "optim.warmup_steps=15",
                        "train.eval_every=0", "train.eval_batches=8", "train.log_every=25",
                        "checkpoint.every=0")


@register_sweep
def shakespeare_mutransfer():
  """μTransfer: widths 32/64/128 x 8 learning rates x standard and μP (base width 64).

  python launch/sweep_local.py --sweep=shakespeare_mutransfer --dir=runs/mutransfer --parallel=2
  """
  # Octave-spaced learning rates from 1e-3 to 0.128: a first grid of 2e-3..6.4e-2
  # had standard's best at its top edge for width 32 and at its bottom for 128.
  # 40 runs (μP at width 64 is standard's runs): 79 min of run time, ~47 min of wall
  # time two at a time on a loaded 2-core CPU.
  return LrTransferSpec(base="shakespeare_char", widths=(32, 64, 128),
                        lrs=tuple(1e-3 * 2 ** k for k in range(8)), mup_base_width=64,
                        head_dim=8, extra=_MUTRANSFER)


# The same at 3x the steps (450, warmup 45) and 2 seeds: at 150 steps the losses
# were still near the byte-unigram plateau and zigzagged by 0.2 nats between
# neighbouring rates (docs/mup.md).
_MUTRANSFER_LONG = tuple(o for o in _MUTRANSFER if not o.startswith(
    ("train.steps=", "optim.warmup_steps=", "train.log_every="))) + (
        "train.steps=450", "optim.warmup_steps=45", "train.log_every=50")


@register_sweep
def shakespeare_mutransfer_seeds():
  """μTransfer, longer and with 2 seeds: widths 32/64/128 x 6 learning rates x standard and μP.

  python launch/sweep_local.py --sweep=shakespeare_mutransfer_seeds --dir=runs/mut2 --parallel=2
  """
  return LrTransferSpec(base="shakespeare_char", widths=(32, 64, 128),
                        lrs=tuple(1e-3 * 2 ** k for k in range(1, 7)), mup_base_width=64,
                        head_dim=8, seeds=(0, 1), extra=_MUTRANSFER_LONG)


@register_sweep
def shakespeare_mutransfer_tiny():
  """Test-sized μTransfer sweep: 2 widths x 2 learning rates x 2 parameterizations, 3 steps.

  python launch/sweep_local.py --sweep=shakespeare_mutransfer_tiny --dir=/tmp/mut --parallel=2
  """
  return LrTransferSpec(base="shakespeare_char", widths=(16, 32), lrs=(3e-3, 1e-2), head_dim=8,
                        extra=_MUTRANSFER + ("train.steps=3", "optim.warmup_steps=1",
                                             "train.batch_size=4", "train.eval_batches=1",
                                             "train.final_eval_batches=8",
                                             "train.log_every=1"))
