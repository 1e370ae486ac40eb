"""AdamW with linear warmup and cosine decay, clipping, and a decay mask from the specs."""

from __future__ import annotations

import optax

from jaxlm.config import OptimConfig


def schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
  """Learning rate per step: linear warmup from 0, then cosine (or constant) to min_lr."""
  c = config
  warmup = min(c.warmup_steps, max(total_steps - 1, 0))
  if c.schedule == "constant":
    decay = optax.constant_schedule(c.lr)
  else:
    decay = optax.cosine_decay_schedule(c.lr, max(total_steps - warmup, 1), alpha=c.min_lr_ratio)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), decay], [warmup])


def make(config: OptimConfig, total_steps: int, decay_mask) -> optax.GradientTransformation:
  """The optimizer: clip by global norm, then AdamW with decay only where decay_mask is True."""
  c = config
  adamw = optax.adamw(schedule(c, total_steps), b1=c.b1, b2=c.b2, eps=c.eps,
                      weight_decay=c.weight_decay, mask=decay_mask)
  if c.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw)
  return adamw
