"""Growing a trained model into a deeper and wider one that starts where it left off.

Dimension legend (docs/architecture.md): D model width, N query heads, K kv
heads, H head dim (fixed), F MLP width, L layers; suffix s the source (small)
model, l the grown (large) one.

Depth (`depth`): "stack" gives layer i the weights of source layer i mod Ls
(Gong et al. 2019, "Efficient training of BERT by progressively stacking");
"interleave" gives it those of source layer floor(i * Ls / Ll), so each layer
is repeated in place. With `zero_new`, every repeat after a layer's first
occurrence gets zero output projections (wo, bo, w_out, b_out): its residual
branch adds nothing, so the grown model computes the small one's function, and
the zero weights still get gradients (their inputs are not zero).

Width: the small residual stream becomes the first Ds of Dl dims and the new
dims start at zero, kept there because everything that writes to the stream
(embeddings, wo, bo, w_out, b_out) is zero in the new dims. Weights that read
the new dims or feed new heads and MLP units come from a fresh draw of the
large model's init, so they differ from each other and gradients flow; so do
the untied unembedding's new rows (they read the final norm's new dims, which
are zero, so the logits do not change). New heads' and units' output rows are
zero with `zero_new` (else drawn). RMSNorm divides by the RMS over all Dl
dims, smaller by sqrt(Ds/Dl) when the new dims are zero, so old scales are
multiplied by sqrt(Ds/Dl). New dims' scales can be anything without changing
the function (they multiply zeros) but must not be zero, or no gradient ever
reaches the new dims: they get the mean |scale| of the old dims, the gain a
typical old dim is read with.

Exactness: depth growth is exact. RMSNorm width growth is exact when
large.norm_eps = small.norm_eps * Ds/Dl; with an equal eps, eps weighs Dl/Ds
times more against the (smaller) mean square, a relative change of about
eps * (Dl/Ds - 1) / (2 * mean(x^2)) per norm: 5e-4 when doubling a stream of
RMS 0.1 with eps 1e-5, more for an untrained one (RMS 0.02). LayerNorm width
growth is allowed but not function-preserving: it subtracts the mean over Dl
dims, Ds/Dl of the old mean, so every old dim shifts by (1 - Ds/Dl) * mean; it
is close when the stream's mean over features is small against its spread.
Its new dims' scales start at zero (nearest to the old function; gradient
still reaches them through the mean).

Grouped-query attention: query head n reads kv head n // (N/K). Heads may be
reordered freely (wq columns with wo rows), so each source kv head with its Gs
query heads goes to ceil(Gs/Gl) large kv heads (copies of it: they read the
new dims differently but those are zero) of Gl query slots each; this fits
when Ks * ceil(Gs/Gl) <= Kl and raises otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.models import transformer
from jaxlm.params import is_spec

DEPTHS = ("none", "stack", "interleave")
# Model keys that must be equal: they change what a weight means, not its size.
SAME_KEYS = ("vocab_size", "positions", "norm", "mlp", "use_bias", "tie_embeddings",
             "rope_theta", "max_seq_len", "qk_norm")
# Params that write to the residual stream, and the embedding tables that start it.
_WRITERS = {("layers", "attn", "wo"), ("layers", "attn", "bo"), ("layers", "mlp", "w_out"),
            ("layers", "mlp", "b_out"), ("embed",), ("pos_embed",)}


def _sizes(c: ModelConfig) -> dict[str, int]:
  # Effective sizes: n_kv_heads=0 and d_ff=0 mean derived values.
  return {"n_layers": c.n_layers, "d_model": c.d_model, "n_heads": c.n_heads,
          "n_kv_heads": c.kv_heads, "d_ff": c.ff_dim}


def check_growable(small: ModelConfig, large: ModelConfig) -> None:
  """Raises ConfigError (a ValueError) naming the key if small cannot grow into large."""
  for key in SAME_KEYS:
    a, b = getattr(small, key), getattr(large, key)
    if a != b:
      raise ConfigError(f"model.{key} differs: {a!r} in the source model, {b!r} in the grown "
                        f"one; expected it unchanged when growing (model.{key}={a!r})")
  s, l = _sizes(small), _sizes(large)
  for key in s:
    if l[key] < s[key]:
      raise ConfigError(f"model.{key}={l[key]} is smaller than the source model's {s[key]}; "
                        f"expected model.{key} >= {s[key]} when growing")
  if small.head_dim != large.head_dim:
    raise ConfigError(
        f"model.d_model / model.n_heads (the head dim) differs: {small.head_dim} in the source "
        f"model, {large.head_dim} in the grown one; growing adds heads of the same size, so "
        f"expected model.d_model = {small.head_dim} * model.n_heads")
  head_sources(small, large)  # raises if the query groups do not fit


def head_sources(small: ModelConfig, large: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
  """Where each large query head and kv head comes from: source index, or -1 for new.

  Returns (q_src (Nl,), kv_src (Kl,)); query head n of the large model reads
  kv head n // Gl, and old query heads keep reading (a copy of) their kv head.
  """
  Ns, Ks, Nl, Kl = small.n_heads, small.kv_heads, large.n_heads, large.kv_heads
  Gs, Gl = Ns // Ks, Nl // Kl
  per = -(-Gs // Gl)  # large kv heads (copies) per source kv head
  if Ks * per > Kl:
    hint = (f" (e.g. model.n_kv_heads={Nl // Gs})" if Nl % Gs == 0 else "")
    raise ConfigError(
        f"model.n_kv_heads={Kl} with model.n_heads={Nl} ({Gl} query heads per kv head) cannot "
        f"hold the source model's {Ks} kv heads of {Gs} query heads each: that needs "
        f"{Ks * per} kv heads; expected {Gs} query heads per kv head as in the source{hint}")
  q_src, kv_src = np.full(Nl, -1), np.full(Kl, -1)
  for j in range(Ks):
    for c in range(per):
      g = j * per + c
      kv_src[g] = j
      for r in range(min(Gl, Gs - c * Gl)):
        q_src[g * Gl + r] = j * Gs + c * Gl + r
  return q_src, kv_src


def layer_sources(n_small: int, n_large: int, depth: str) -> tuple[np.ndarray, np.ndarray]:
  """(src (Ll,), is_copy (Ll,)): each large layer's source layer, and whether it repeats one."""
  i = np.arange(n_large)
  if depth not in DEPTHS:
    raise ConfigError(f"init.grow={depth!r} is invalid: expected one of {', '.join(DEPTHS)}")
  if depth == "none" and n_small != n_large:
    raise ConfigError(f"init.grow='none' but model.n_layers grows from {n_small} to {n_large}; "
                      "expected init.grow=stack or interleave")
  src = i * n_small // n_large if depth == "interleave" else i % n_small
  is_copy = np.ones(n_large, bool)
  is_copy[np.unique(src, return_index=True)[1]] = False
  return src, is_copy


def _place(old, fresh, maps):
  """fresh with old's entries where maps[axis][i] >= 0 (old's index along axis)."""
  keep = np.ones((1,) * old.ndim, bool)
  for axis, m in enumerate(maps):
    if len(m) == old.shape[axis] and (m == np.arange(len(m))).all():
      continue  # unchanged axis: no gather
    old = jnp.take(old, np.maximum(m, 0), axis=axis)
    keep = keep & (m >= 0).reshape([-1 if a == axis else 1 for a in range(old.ndim)])
  return jnp.where(keep, old.astype(fresh.dtype), fresh)


def _any_axis(axes, marks):
  """Broadcast OR over axes of the per-axis boolean marks (missing: all False)."""
  out = np.zeros((1,) * len(axes), bool)
  for a, name in enumerate(axes):
    if name in marks:
      out = out | marks[name].reshape([-1 if b == a else 1 for b in range(len(axes))])
  return out


def _grow_norm(scale, d_map, norm):
  """Scale (..., Dl) already placed: old dims times sqrt(Ds/Dl), new dims a nonzero gain."""
  new = d_map < 0
  if not new.any():
    return scale
  old = jnp.where(new, 0, scale * math.sqrt(np.mean(~new)))
  if norm == "layernorm":
    return old.astype(scale.dtype)
  gain = jnp.abs(old).sum(-1, keepdims=True) / (~new).sum()
  return jnp.where(new, gain, old).astype(scale.dtype)


def _check_shape(path, x, spec):
  if x.shape != spec.shape:
    name = "/".join(k.key for k in path)
    raise ConfigError(f"params {name} has shape {x.shape}; expected {spec.shape} for the "
                      "source model")


def grow_params(params: dict, small: ModelConfig, large: ModelConfig, *, depth: str,
                zero_new: bool, rng: jax.Array) -> dict:
  """Params for `large` (the structure of transformer.init(large)) grown from small's.

  Pure and jittable with small, large, depth and zero_new static.

  Args:
    params: the small model's params (transformer.init(small)'s structure).
    small, large: the two model configs; check_growable(small, large) must pass.
    depth: "stack" | "interleave" (| "none" when n_layers is equal).
    zero_new: repeated layers and new heads/units start with zero output
      projections, so the grown model computes the small one's function.
    rng: draws the weights that read new dims or feed new heads and units.
  """
  check_growable(small, large)
  s_specs, specs = transformer.param_specs(small), transformer.param_specs(large)
  if jax.tree.structure(params) != jax.tree.structure(s_specs, is_leaf=is_spec):
    raise ConfigError("params do not have the source model's structure; expected "
                      "transformer.init(small)'s tree")
  jax.tree_util.tree_map_with_path(_check_shape, params, s_specs)
  src, is_copy = layer_sources(small.n_layers, large.n_layers, depth)
  q_src, kv_src = head_sources(small, large)
  s, l = _sizes(small), _sizes(large)
  pad = lambda n, m: np.where(np.arange(m) < n, np.arange(m), -1)
  d_map, f_map = pad(s["d_model"], l["d_model"]), pad(s["d_ff"], l["d_ff"])
  maps = {"layers": src, "embed": d_map, "heads": q_src, "kv_heads": kv_src, "mlp": f_map}
  # Where writers must be zero: new dims; copies and new heads/units only with zero_new.
  writer_zero = {"embed": d_map < 0}
  if zero_new:
    writer_zero.update(heads=q_src < 0, mlp=f_map < 0, layers=is_copy)
  fresh = transformer.init(large, rng)

  def grow_leaf(path, old, new, spec):
    names = tuple(k.key for k in path)
    out = _place(old, new, [maps.get(a, np.arange(n)) for a, n in zip(spec.axes, spec.shape)])
    if names in _WRITERS:  # a table's axes are (rows, "embed"): zero in the new dims only
      out = jnp.where(_any_axis(spec.axes, writer_zero), 0, out).astype(new.dtype)
    elif names[-1] == "scale" and spec.axes[-1] == "embed":  # not qk_norm's: H is fixed
      out = _grow_norm(out, d_map, large.norm)
    return out

  return jax.tree_util.tree_map_with_path(grow_leaf, params, fresh, specs)


def preserving(small: ModelConfig, large: ModelConfig, depth: str, zero_new: bool = True) -> str:
  """How close the grown model's function is to the small one's, in a few words."""
  s, l = _sizes(small), _sizes(large)
  wider = l["d_model"] > s["d_model"]
  new_parts = l["n_layers"] > s["n_layers"] or wider or l["d_ff"] > s["d_ff"]
  if new_parts and not zero_new:
    return "not function-preserving: zero_new=False keeps copies' and new units' outputs"
  if wider and large.norm == "layernorm":
    return "not function-preserving: LayerNorm's mean over the wider stream"
  if not math.isclose(large.norm_eps, small.norm_eps * s["d_model"] / l["d_model"], rel_tol=1e-6):
    return "function-preserving up to norm_eps"
  return "function-preserving"


def describe(small: ModelConfig, large: ModelConfig, depth: str, zero_new: bool = True) -> str:
  """One line, e.g. 'grown from 2x128 to 4x256 by interleave (function-preserving)'."""
  s, l = _sizes(small), _sizes(large)
  how = f"by {depth}" if l["n_layers"] > s["n_layers"] else "in width"
  extra = "".join(f", {k} {s[k]}->{l[k]}" for k in ("n_heads", "n_kv_heads", "d_ff")
                  if s[k] != l[k])
  return (f"grown from {s['n_layers']}x{s['d_model']} to {l['n_layers']}x{l['d_model']} "
          f"{how}{extra} ({preserving(small, large, depth, zero_new)})")
