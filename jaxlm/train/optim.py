"""The optimizer (optax: AdamW, Lion, Adafactor, Muon) and its learning-rate schedule.

Every optimizer takes the same schedule (linear warmup, then cosine, constant
or warmup-stable-decay), clipping by global norm, weight decay only where the
specs' decay mask says (matrices: not norms, biases or embeddings), and the
specs' per-parameter learning-rate multipliers (μP). docs/recipes.md compares
them on the default experiment.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from jaxlm.config import OptimConfig
from jaxlm.params import is_spec


def _decay(shape: str, lr: float, end: float, steps: int) -> optax.Schedule:
  """lr to end over `steps` steps: linear, cosine, or 1-sqrt (Hägele et al. 2024, eq. 2)."""
  steps = max(steps, 1)

  def schedule(count):
    frac = jnp.clip(count / steps, 0.0, 1.0)
    left = {"linear": 1.0 - frac, "cosine": 0.5 * (1.0 + jnp.cos(math.pi * frac)),
            "1-sqrt": 1.0 - jnp.sqrt(frac)}[shape]
    return end + (lr - end) * left

  return schedule


def schedule(config: OptimConfig, total_steps: int, lr: float | None = None) -> optax.Schedule:
  """Learning rate per step: linear warmup from 0, then cosine, constant, or WSD.

  WSD (warmup-stable-decay) holds the peak until its last decay steps and decays
  from there to min_lr_ratio * lr; a run branched off a stable one at step S
  (init.from_step) with decay_steps D and train.steps S + D decays from S.
  lr: the peak (default optim.lr).
  """
  c = config
  lr = c.lr if lr is None else lr
  warmup = min(c.warmup_steps, max(total_steps - 1, 0))
  if c.schedule == "constant":
    after = optax.constant_schedule(lr)
  elif c.schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1), alpha=c.min_lr_ratio)
  else:
    decay = c.decay_steps or round(c.decay_fraction * total_steps)  # the last steps decay
    decay = max(min(decay, total_steps - min(c.warmup_steps, total_steps - 1)), 1)
    after = optax.join_schedules(
        [optax.constant_schedule(lr), _decay(c.decay_shape, lr, lr * c.min_lr_ratio, decay)],
        [total_steps - warmup - decay])
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its entry of `scales` (a tree of floats shaped like the params)."""
  return optax.stateless(lambda updates, params=None: jax.tree.map(
      lambda u, s: u * jax.numpy.asarray(s, u.dtype), updates, scales))


def muon_dimensions(specs: dict) -> dict:
  """Muon's view of each parameter: the input (reduction) and output axes of a hidden
  matrix, None (Adam) for everything else (embeddings, the output layer, norms, biases).

  jaxlm's matrices read the residual stream on their first axis ("embed" first) or
  write it on their last ("embed" last); a leading "layers" axis is a batch axis.
  """
  def dims(spec):
    axes = [a for a in spec.axes if a != "layers"]
    lead = len(spec.axes) - len(axes)
    if not spec.decay or spec.embedding or len(axes) < 2 or "embed" not in (axes[0], axes[-1]):
      return None
    if axes[0] == "embed":
      return contrib.MuonDimensionNumbers(lead, tuple(range(lead + 1, len(spec.axes))))
    return contrib.MuonDimensionNumbers(tuple(range(lead, len(spec.axes) - 1)),
                                        len(spec.axes) - 1)

  return jax.tree.map(dims, specs, is_leaf=is_spec)


def make(config: OptimConfig, total_steps: int, decay_mask, lr_scales=None,
         specs: dict | None = None) -> optax.GradientTransformation:
  """The optimizer: clip by global norm, then optim.name with decay only where decay_mask is True.

  `lr_scales` (params.lr_scales: a tree of floats, None for all 1) multiplies
  each parameter's update, decoupled decay included, so it scales that
  parameter's learning rate (μP's 1/width_mult on hidden matrices, Yang et al. 2022,
  table 3; the same product as mup's MuAdamW param groups). When every scale is 1
  it is left out, so the optimizer state is exactly that of a run without it.
  Weight decay is coupled to the schedule for every optimizer (decay x lr per
  step), as AdamW's is. Adafactor runs on the given schedule, not relative steps
  (multiply_by_parameter_scale off), so μP's multipliers apply to it as to AdamW.
  Muon needs the params' specs (which are hidden matrices).
  """
  c = config
  lr = schedule(c, total_steps)
  if c.name == "adamw":
    opt = optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                      mask=decay_mask)
  elif c.name == "lion":
    opt = optax.lion(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=decay_mask)
  elif c.name == "adafactor":
    opt = optax.adafactor(lr, decay_rate=c.adafactor_decay_rate,
                          multiply_by_parameter_scale=False,
                          weight_decay_rate=lambda count: c.weight_decay * lr(count),
                          weight_decay_mask=decay_mask)
  else:
    if specs is None:
      raise ValueError("optim.name='muon' needs the params' specs: which are hidden matrices")
    # Hidden matrices take Muon at optim.muon_lr; the rest AdamW at optim.lr without
    # decay (embeddings, norms and biases take none anyway).
    opt = contrib.muon(schedule(c, total_steps, c.muon_lr), ns_steps=c.muon_ns_steps,
                       beta=c.muon_beta, weight_decay=c.weight_decay, adam_b1=c.b1,
                       adam_b2=c.b2, adam_learning_rate=lr,
                       muon_weight_dimension_numbers=muon_dimensions(specs))
  parts = ([optax.clip_by_global_norm(c.grad_clip)] if c.grad_clip > 0 else []) + [opt]
  if lr_scales is not None and any(s != 1.0 for s in jax.tree.leaves(lr_scales)):
    parts.append(scale_by_tree(lr_scales))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)
