"""Pure-function building blocks: norms, rotary embedding, 2-D matmuls, MLPs, the loss.

Dimension legend (docs/architecture.md): B batch, T length, D model width,
N heads, H head dim, F MLP width, V vocab, R rows of a flattened (B*T) batch,
J chunks of them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxlm import sharding
from jaxlm.params import ParamSpec, normal, ones, zeros


def norm_specs(kind: str, dim: int, lead: tuple[int, ...] = (), lead_axes=()) -> dict:
  """Specs of a norm's scale (and bias for layernorm), optionally stacked over layers."""
  specs = {"scale": ParamSpec(lead + (dim,), lead_axes + ("embed",), ones)}
  if kind == "layernorm":
    specs["bias"] = ParamSpec(lead + (dim,), lead_axes + ("embed",), zeros)
  return specs


def norm(params: dict, x_BTD: jax.Array, kind: str, eps: float) -> jax.Array:
  """RMSNorm or LayerNorm over the last axis, computed in float32."""
  x = x_BTD.astype(jnp.float32)
  if kind == "layernorm":
    x = x - x.mean(-1, keepdims=True)
  x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps)
  x = x * params["scale"].astype(jnp.float32)
  if "bias" in params:
    x = x + params["bias"].astype(jnp.float32)
  return x.astype(x_BTD.dtype)


def rope(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (Su et al. 2021), rotating halves of the head dim."""
  half = x_BTNH.shape[-1] // 2
  freq_H = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_BTH = positions_BT[..., None].astype(jnp.float32) * freq_H
  sin, cos = jnp.sin(angle_BTH)[:, :, None, :], jnp.cos(angle_BTH)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def mlp_specs(kind: str, d: int, f: int, use_bias: bool, std: float, out_std: float,
              lead: tuple[int, ...] = (), lead_axes=(), lr_scale: float = 1.0) -> dict:
  """Specs of a GELU MLP (w_in, w_out) or SwiGLU (w_gate, w_in, w_out).

  `lr_scale` applies to the matrices (μP's 1/width_mult for hidden weights).
  """
  names = ("w_in", "w_gate", "w_out") if kind == "swiglu" else ("w_in", "w_out")
  specs = {}
  for name in names:
    shape, axes = ((f, d), ("mlp", "embed")) if name == "w_out" else ((d, f), ("embed", "mlp"))
    specs[name] = ParamSpec(lead + shape, lead_axes + axes,
                            normal(out_std if name == "w_out" else std), decay=True,
                            lr_scale=lr_scale)
    if use_bias:  # b_in, b_gate, b_out: along the matrix's output axis
      specs["b" + name[1:]] = ParamSpec(lead + shape[1:], lead_axes + axes[1:], zeros)
  return specs


def dense(x: jax.Array, w, n_in: int = 1, out_dtype=None) -> jax.Array:
  """Contracts the last n_in axes of x with the first n_in axes of w.

  Written as one 2-D matmul over flattened leading axes: XLA's CPU backend
  runs the backward pass of a 3-D einsum ("btd,df->btf") about 1.5x slower
  than the same product on (B*T, D) matrices (measured; docs/benchmarks.md).
  w may be a sharding.Split (a layer's weight under FSDP on CPU: transformer.layer_stack).
  """
  def product(x, w):
    lead, k = x.shape[:x.ndim - n_in], math.prod(x.shape[x.ndim - n_in:])
    y = matmul(x.reshape(-1, k), w.astype(x.dtype).reshape(k, -1), out_dtype)
    return y.reshape(*lead, *w.shape[n_in:])

  split = isinstance(w, sharding.Split)
  return sharding.split_matmul(product, x, w, n_in) if split else product(x, w)


MATMUL_NAME = "layers.matmul"  # the checkpoint_name of matmul's CPU products


def matmul(x_RK: jax.Array, w_KN: jax.Array, out_dtype=None) -> jax.Array:
  """x @ w of 2-D operands, whose weight gradient on CPU has the layout YNNPACK takes.

  The weight gradient x^T dy contracts the first axis of x, a layout XLA's CPU
  backend leaves to Eigen, at 60-130 GFLOP/s against YNNPACK's 100 (one thread) to
  180-200 (two) on the 2-core AMD EPYC (docs/benchmarks.md, CPU section). On CPU it
  is computed from a transposed copy of the narrower of x and dy instead
  (_matmul_cpu_bwd), so that YNNPACK runs it. Values and dtypes are those of jnp.matmul.
  """
  if sharding.platform() == "cpu":
    # Named, so that model.remat="dots" keeps it as it keeps dot_general outputs
    # (a remat policy sees a custom VJP as one opaque call).
    return checkpoint_name(_matmul_cpu(x_RK, w_KN, out_dtype), MATMUL_NAME)
  return jnp.matmul(x_RK, w_KN, preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_cpu(x_RK, w_KN, out_dtype):
  return jnp.matmul(x_RK, w_KN, preferred_element_type=out_dtype)


def _matmul_cpu_fwd(x_RK, w_KN, out_dtype):
  return _matmul_cpu(x_RK, w_KN, out_dtype), (x_RK, w_KN)


def _matmul_cpu_bwd(out_dtype, residuals, dy_RN):
  x_RK, w_KN = residuals
  mm = functools.partial(jnp.matmul, preferred_element_type=out_dtype)
  dx_RK = jax.vjp(lambda x: mm(x, w_KN), x_RK)[1](dy_RN)[0]
  barrier = jax.lax.optimization_barrier
  if x_RK.shape[1] <= w_KN.shape[1]:
    # x^T dy from a copy of x with its axes swapped: the barrier keeps XLA from folding
    # the swap back into the product (which would contract x's first axis again); the
    # product of its swap reads the copy as (K, R) contracted on its last axis.
    x_KR = barrier(x_RK.T)
    dw_KN = jax.vjp(lambda w: mm(x_KR.T, w), w_KN)[1](dy_RN)[0]
    # And one on the result: a caller's w = param.T (the tied output projection) hands
    # dw back through a transpose, which XLA would fold into the product, again as a
    # first-axis contraction (dy^T x) that Eigen runs; this way it copies (N, K) instead.
    return dx_RK, barrier(dw_KN)
  # A wide x (the MLP's second matrix: a GELU's output): (dy^T x)^T. XLA would build
  # x^T inside the fusion that computes x, reading rows K floats apart (8-11 ms for
  # (2048, 1024) against 0.4 for a plain transpose), and dy^T inside the fusions that
  # sum the residual stream's gradient, recomputing them; dy comes out of a loop first.
  dy_NR = barrier(_materialized(dy_RN).T)
  dw_NK = barrier(jnp.matmul(dy_NR, x_RK, preferred_element_type=out_dtype))
  return dx_RK, dw_NK.T.astype(w_KN.dtype)


_matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


def _materialized(x: jax.Array) -> jax.Array:
  """x, computed into a buffer of its own: a loop of one trip that XLA cannot count
  (x[0] == x[0]; none for a NaN, which leaves x as it is), the one boundary XLA 0.10's
  CPU fusion keeps (optimization_barrier is gone before fusion; an identity loop or
  cond is simplified away). Under a mesh, reading x[0] costs an all-reduce of one float."""
  if not x.size:
    return x
  first = x.reshape(-1)[0]
  trips = (first == first).astype(jnp.int32)
  return jax.lax.while_loop(lambda c: c[0] < trips,
                            lambda c: (c[0] + 1, jnp.where(c[0] < 0, 0, c[1])), (0, x))[1]


def dense_shared(x: jax.Array, ws: list, n_in: int = 1) -> list:
  """[dense(x, w) for w in ws]. Under tensor parallelism, weights of one shape go through
  one product, stacked along a new last axis: their partial input
  gradients are then summed on each device before one all-reduce over "tensor", where
  XLA all-reduces each product's apart (docs/sharding.md)."""
  t = sharding.axis_size("tensor")
  if t == 1:
    return [dense(x, w, n_in) for w in ws]
  shapes = [_value(w).shape for w in ws]
  if len(set(shapes)) > 1 and all(s[:n_in] + s[n_in + 1:] == shapes[0][:n_in] + shapes[0][n_in + 1:]
                                  and s[n_in] % t == 0 for s in shapes):
    return _dense_blocks(x, ws, n_in, t)
  groups: dict = {}
  for i, w in enumerate(ws):
    groups.setdefault(_value(w).shape, []).append(i)
  out = [None] * len(ws)
  for members in groups.values():
    if len(members) == 1:
      out[members[0]] = dense(x, ws[members[0]], n_in)
      continue
    # Stacked last: dense flattens the output axes, and a tensor-split axis must stay
    # the major one of the flattened product for each shard to be contiguous.
    stacked = jnp.stack([_value(ws[i]) for i in members], axis=-1)
    if isinstance(ws[members[0]], sharding.Split):
      stacked = sharding.Split(stacked, ws[members[0]].axes + (None,))
    y = dense(x, stacked, n_in)
    for j, i in enumerate(members):
      out[i] = y[..., j]
  return out


def _value(w) -> jax.Array:
  """The array of a weight or of a sharding.Split."""
  return w.value if isinstance(w, sharding.Split) else w


def _dense_blocks(x: jax.Array, ws: list, n_in: int, t: int) -> list:
  """dense_shared for weights that differ only in their first output axis, each split
  over "tensor" (t ways): GQA's queries beside its keys and values. Each weight's axis is
  cut into its t device blocks, and the blocks concatenated within each: one product whose
  shards hold every weight's own heads, one summed input gradient to all-reduce."""
  vals = [_value(w) for w in ws]
  blocks = jnp.concatenate([v.reshape(*v.shape[:n_in], t, v.shape[n_in] // t,
                                      *v.shape[n_in + 1:]) for v in vals], axis=n_in + 1)
  if isinstance(ws[0], sharding.Split):
    axes = ws[0].axes
    blocks = sharding.Split(blocks, axes[:n_in + 1] + (None,) + axes[n_in + 1:])
  y = dense(x, blocks, n_in)  # (..., t, sum of the blocks, rest)
  lead, out, start = x.ndim - n_in, [], 0
  for v in vals:
    size = v.shape[n_in] // t
    part = jax.lax.slice_in_dim(y, start, start + size, axis=lead + 1)
    out.append(part.reshape(*part.shape[:lead], v.shape[n_in], *part.shape[lead + 2:]))
    start += size
  return out


def mlp(params: dict, x_BTD: jax.Array, kind: str) -> jax.Array:
  """GELU MLP or SwiGLU (Shazeer 2020)."""
  bias = lambda y, name: y + params[name].astype(x_BTD.dtype) if name in params else y
  if kind == "swiglu":
    h_BTF, g_BTF = dense_shared(x_BTD, [params["w_in"], params["w_gate"]])
    h_BTF, g_BTF = bias(h_BTF, "b_in"), bias(g_BTF, "b_gate")
    h_BTF = jax.nn.silu(g_BTF) * h_BTF
  else:
    h_BTF = jax.nn.gelu(bias(dense(x_BTD, params["w_in"]), "b_in"), approximate=True)
  h_BTF = sharding.constrain(h_BTF, ("batch", "length", "act_mlp"))
  return bias(dense(h_BTF, params["w_out"]), "b_out")


def cross_entropy(x_BTD: jax.Array, w_DV: jax.Array, targets_BT: jax.Array,
                  chunk: int = 0, return_lse: bool = False):
  """Per-token cross-entropy (B, T) of logits x @ w against integer targets.

  With chunk > 0 the B*T rows go through in chunks of `chunk`, each under
  jax.checkpoint, so neither the float32 logits nor their gradient is ever
  materialized whole: the loss of a 50k vocabulary stops dominating memory
  traffic (and on CPU the chunks stay in cache: 112 -> 70 ms for 8192 rows x
  2048 vocab, forward+backward). return_lse: also the logits' log-sum-exp (B, T)
  (for z-loss). w_DV may also be one copy per device (n, D, V), computed on each device's
  own rows.
  """
  B, T, D = x_BTD.shape
  x_RD, t_R = x_BTD.reshape(B * T, D), targets_BT.reshape(B * T)

  def nll(x_RD, t_R, w_DV):
    logits_RV = matmul(x_RD, w_DV.astype(x_RD.dtype), jnp.float32)
    picked_R = jnp.take_along_axis(logits_RV, t_R[:, None], axis=-1)[:, 0]
    lse_R = jax.nn.logsumexp(logits_RV, axis=-1)
    return lse_R - picked_R, lse_R

  def chunked(x_RD, t_R, w_DV):
    # Each device's own rows (sharding.over_batch), `chunk` at a time: the output
    # weight's gradient is summed over the chunks on the device and across devices
    # once; under automatic sharding it was all-reduced in every chunk, and contiguous
    # chunks of the global rows were gathered whole to every device (docs/sharding.md).
    R = x_RD.shape[0]
    if chunk <= 0 or chunk >= R:
      return nll(x_RD, t_R, w_DV)
    J = -(-R // chunk)
    pad = J * chunk - R
    x_JRD = jnp.pad(x_RD, ((0, pad), (0, 0))).reshape(J, chunk, -1)
    t_JR = jnp.pad(t_R, (0, pad)).reshape(J, chunk)
    _, (nll_JR, lse_JR) = jax.lax.scan(
        lambda _, xt: (None, jax.checkpoint(nll)(*xt, w_DV)), None, (x_JRD, t_JR))
    return nll_JR.reshape(-1)[:R], lse_JR.reshape(-1)[:R]

  if w_DV.ndim == 3:  # each device's copy (n, D, V) (transformer.device_tables): its own rows
    nll_R, lse_R = sharding.over_batch(
        lambda x_bTD, t_bT, w_1DV: chunked(x_bTD.reshape(-1, D), t_bT.reshape(-1), w_1DV[0]),
        (x_BTD, targets_BT, w_DV), ())
  elif chunk <= 0 or chunk >= B * T:
    nll_R, lse_R = nll(x_RD, t_R, w_DV)
  else:
    nll_R, lse_R = sharding.over_batch(chunked, (x_RD, t_R), (w_DV,))
  nll_BT = nll_R.reshape(B, T)
  return (nll_BT, lse_R.reshape(B, T)) if return_lse else nll_BT
