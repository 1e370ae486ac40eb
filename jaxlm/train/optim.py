"""AdamW with warmup and cosine decay, clipping, and decay mask and lr multipliers from specs."""

from __future__ import annotations

import jax
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


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its entry of `scales` (a tree of floats shaped like the params)."""
  return optax.stateless(lambda updates, params=None: jax.tree.map(
      lambda u, s: u * jax.numpy.asarray(s, u.dtype), updates, scales))


def make(config: OptimConfig, total_steps: int, decay_mask,
         lr_scales=None) -> optax.GradientTransformation:
  """The optimizer: clip by global norm, then AdamW with decay only where decay_mask is True.

  `lr_scales` (transformer.lr_scales: a tree of floats, None for all 1) multiplies
  each parameter's AdamW update, decoupled decay included, so it scales that
  parameter's learning rate (μP's 1/width_mult on hidden matrices, Yang et al. 2022,
  table 3; the same product as mup's MuAdamW param groups). When every scale is 1
  it is left out, so the optimizer state is exactly that of a run without it.
  """
  c = config
  parts = [optax.adamw(schedule(c, total_steps), b1=c.b1, b2=c.b2, eps=c.eps,
                       weight_decay=c.weight_decay, mask=decay_mask)]
  if c.grad_clip > 0:
    parts.insert(0, optax.clip_by_global_norm(c.grad_clip))
  if lr_scales is not None and any(s != 1.0 for s in jax.tree.leaves(lr_scales)):
    parts.append(scale_by_tree(lr_scales))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)
