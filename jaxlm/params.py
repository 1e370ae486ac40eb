"""Parameter specs: what every parameter is, and everything derived from that alone.

A model describes its parameters once, as a nested dict of `ParamSpec` (shape,
logical axis names, initializer, role). Initial values, abstract shapes (with
shardings, for compiling and restoring without allocating), parameter counts,
the weight-decay mask and per-parameter learning-rate multipliers all come from
that tree here, and the shardings from it in jaxlm.sharding. This module
imports nothing of jaxlm: everything else may build on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.nn.initializers import normal, ones, zeros  # noqa: F401  (init(key, shape, dtype))


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """What a parameter is: shape, logical axis names, initializer, and its role.

  `init(key, shape, dtype)` draws the initial value (a jax.nn.initializers one). `decay` marks tensors
  that take weight decay (matrices, not norms, biases or embeddings);
  `embedding` marks those excluded from the non-embedding parameter count;
  `lr_scale` multiplies its learning rate (1 except μP's hidden matrices).
  """
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  init: Callable
  decay: bool = False
  embedding: bool = False
  lr_scale: float = 1.0

  def __post_init__(self):
    if len(self.shape) != len(self.axes):
      raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in length; "
                       "expected one logical axis name per dimension")

  @property
  def size(self) -> int:
    return math.prod(self.shape)


def is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def init_params(specs: dict, rng: jax.Array, dtype) -> dict:
  """Draws every parameter of a spec tree, each from its own split of rng."""
  leaves, treedef = jax.tree.flatten(specs, is_leaf=is_spec)
  keys = jax.random.split(rng, len(leaves))
  return treedef.unflatten([s.init(k, s.shape, dtype) for s, k in zip(leaves, keys)])


def abstract_params(specs: dict, dtype, shardings=None) -> dict:
  """The params' jax.ShapeDtypeStruct tree (with shardings, a tree like specs, if given).

  What compiling ahead of time and restoring a checkpoint need, without
  allocating anything.
  """
  struct = lambda s, sh=None: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype), sharding=sh)
  if shardings is None:
    return jax.tree.map(struct, specs, is_leaf=is_spec)
  return jax.tree.map(struct, specs, shardings, is_leaf=is_spec)


def param_count(specs: dict) -> dict[str, int]:
  """Total and non-embedding parameter counts of a spec tree."""
  leaves = jax.tree.leaves(specs, is_leaf=is_spec)
  total = sum(s.size for s in leaves)
  embedding = sum(s.size for s in leaves if s.embedding)
  return {"total": total, "non_embedding": total - embedding}


def decay_mask(specs: dict) -> dict:
  """Tree of bools: True where weight decay applies."""
  return jax.tree.map(lambda s: s.decay, specs, is_leaf=is_spec)


def lr_scales(specs: dict) -> dict:
  """Tree of floats: each parameter's learning-rate multiplier (μP; all 1 under standard)."""
  return jax.tree.map(lambda s: s.lr_scale, specs, is_leaf=is_spec)


def update_stats(specs: dict, params: dict, grads: dict, updates: dict) -> dict:
  """Per parameter ("layers.attn.wq", ...): the norms of its value and gradient, and the
  ratio of its update's norm to its value's, each a vector over the layers for a stacked
  parameter (leading "layers" axis) and a scalar otherwise. float32, jittable."""
  def norm(spec, x):
    axes = tuple(range(1, x.ndim)) if spec.axes[:1] == ("layers",) else None
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes))

  out = {}
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0]
  for (path, spec), p, g, u in zip(flat, *(jax.tree.leaves(t) for t in (params, grads, updates))):
    name = ".".join(str(getattr(k, "key", k)) for k in path)
    p_norm = norm(spec, p)
    out[name] = {"param_norm": p_norm, "grad_norm": norm(spec, g),
                 "update_ratio": norm(spec, u) / jnp.maximum(p_norm, 1e-30)}
  return out
