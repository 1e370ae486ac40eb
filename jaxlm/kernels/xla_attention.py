"""Attention in plain XLA ops, with a hand-written gradient laid out for XLA's CPU backend.

Dimension legend (docs/architecture.md): B batch, T query length, S key length,
N query heads, K key/value heads (N divisible by K), G = N // K query heads per
kv head, H head dim, R rows of one block's product (its G * t stacked queries).

Grouped-query products without repeating K/V, a float32 softmax, causal
attention by query blocks that skip the fully masked key blocks, and a
custom VJP (_attend_blocks) whose every product contracts the last axis of its
left operand (and the first or the last of its right one): the layouts XLA's
CPU backend runs in YNNPACK rather than in Eigen at about half the speed. The
scores and dP read K and V as they come (contracted on their last axis), so only
Q and dO are copied with their last two axes swapped, for dK and dV. The custom VJP
takes and gives the callers' (B, T, N, H) layout and makes the heads-major
copies itself, so that it can hand dQ, dK and dV back materialized once (left
to XLA, each consumer recomputed them). Its jnp reference is kernels/reference.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlm.kernels.reference import MASKED, mask_BTS, split_segments


def causal_query_blocks(T: int, S: int) -> list[tuple[int, int]]:
  """[start, end) query ranges for causal attention that skips fully masked key blocks.

  Query t sees keys s <= t + (S - T), so the block [a, b) needs only the keys
  before b + S - T: with 4 blocks about 5/8 of the score matrix is computed.
  Blocks are a quarter of T, at least 16 and at most 128 rows (so more than 4
  blocks beyond 512 queries; one block below 32). Measured on
  the 2-core CPU, fwd+bwd at B x 256 x 4 heads: 4 blocks 17 ms against 32 ms
  whole, 2 blocks 23, 8 blocks 21 (docs/benchmarks.md, CPU section).
  """
  if T < 32 or T > S:
    return [(0, T)]
  size = min(128, max(16, -(-T // 4)))
  return [(a, min(a + size, T)) for a in range(0, T, size)]


def xla_attention(q_BTNH, k_BSKH, v_BSKH, *, is_causal=False, segment_ids=None, scale=None,
                  return_max_logit=False):
  """Attention in plain XLA ops: grouped-query products, float32 softmax.

  Causal attention runs over query blocks, each against only the keys it can
  see (causal_query_blocks), so most of the masked upper triangle is never
  computed; each row's softmax is the same as over all keys, where the masked
  ones add exact zeros. The gradient is written by hand (_attend_blocks) so
  that every product, forward and backward, has the layout XLA's CPU backend
  runs fastest; being a jax.custom_vjp, it has no forward-mode derivative
  (jax.jvp, jacfwd), while reverse mode of any order works. With
  return_max_logit it returns (out, the largest score q·k·scale any query gives
  a key it may see, float32): the softmax's own row maxima, so nearly free.
  """
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  G = N // K
  scale = H ** -0.5 if scale is None else scale
  try:
    scale = float(scale)  # a static argument of the hand-written gradient
  except (TypeError, jax.errors.ConcretizationTypeError):
    # A traced scale (jitted or differentiated): scale the queries instead.
    q_BTNH, scale = q_BTNH * jnp.asarray(scale, q_BTNH.dtype), 1.0
  q_seg, kv_seg = split_segments(segment_ids, T, S)
  spans, masks = [], []
  for a, b in causal_query_blocks(T, S) if is_causal else [(0, T)]:
    end = b + S - T if is_causal else S  # this block's queries see keys [0, end)
    spans.append((a, b, end))
    mask = None
    if is_causal or q_seg is not None:
      # (B or 1, 1, G * t, end): the G query heads of a kv head are stacked on the rows.
      m = mask_BTS(b - a, end, is_causal, None if q_seg is None else q_seg[:, a:b],
                   None if kv_seg is None else kv_seg[:, :end])
      mask = jnp.broadcast_to(m[:, None], (m.shape[0], G, b - a, end)).reshape(
          m.shape[0], 1, G * (b - a), end)
    masks.append(mask)
  o_BTNH, max_logit = _attend_blocks(q_BTNH, k_BSKH, v_BSKH, tuple(masks), tuple(spans), scale)
  return (o_BTNH, max_logit) if return_max_logit else o_BTNH


def _bmm(a, b, dtype=None):
  """(B, K, M, C) @ (B, K, C, N): the contraction last in a and first in b.

  XLA's CPU backend hands products in this layout (and _bmm_t's) to YNNPACK; with
  the left operand transposed it falls back to Eigen, and the attention's forward
  and backward ran 15-27% slower (docs/benchmarks.md, CPU section).
  """
  return jax.lax.dot_general(a, b, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=dtype)


def _bmm_t(a, b, dtype=None):
  """(B, K, M, C) @ (B, K, N, C)^T: the contraction last in both, which YNNPACK also
  takes as it comes (a^T @ b, the contraction first in both, it does not)."""
  return jax.lax.dot_general(a, b, (((3,), (3,)), ((0, 1), (0, 1))), preferred_element_type=dtype)


def _transposed_copy(x):
  """x with its last two axes swapped, as a copy XLA may not fold into the product reading it."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _query_block(x_BKGTH, a, b):
  """Rows a:b of each head, its G query heads stacked: (B, K, G * (b - a), H)."""
  B, K, G, _, H = x_BKGTH.shape
  return x_BKGTH[:, :, :, a:b].reshape(B, K, G * (b - a), H)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attend_blocks(q_BTNH, k_BSKH, v_BSKH, masks, spans, scale):
  """(Attention of each query block (a, b) over keys [0, end), the largest unmasked score);
  spans = ((a, b, end), ...)."""
  return _attend_blocks_fwd(q_BTNH, k_BSKH, v_BSKH, masks, spans, scale)[0]


def _heads_major(x_BTKH):
  return x_BTKH.transpose(0, 2, 1, 3)


def _grouped_heads_major(x_BTNH, K):
  """(B, K, G, T, H) of queries or their gradient: a query block is then a slice of T."""
  B, T, N, H = x_BTNH.shape
  return x_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)


def _tokens_major(x_BKGTH):
  """(B, T, N, H), the callers' layout, of _grouped_heads_major's."""
  B, K, G, T, H = x_BKGTH.shape
  return x_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, K * G, H)


def _attend_blocks_fwd(q_BTNH, k_BSKH, v_BSKH, masks, spans, scale):
  q_BKGTH = _grouped_heads_major(q_BTNH, k_BSKH.shape[2])
  B, K, G, _, H = q_BKGTH.shape
  k_BKSH, v_BKSH = _heads_major(k_BSKH), _heads_major(v_BSKH)
  outs, probs, maxes = [], [], []
  for (a, b, end), mask in zip(spans, masks):
    s_BKRS = _bmm_t(_query_block(q_BKGTH, a, b), k_BKSH[:, :, :end], jnp.float32) * scale
    if mask is not None:
      s_BKRS = jnp.where(mask, s_BKRS, MASKED)
    # jax.nn.softmax's own steps, keeping its row maxima (a fully masked row's is MASKED).
    m_BKR1 = jnp.max(s_BKRS, axis=-1, keepdims=True)
    e_BKRS = jnp.exp(s_BKRS - m_BKR1)
    p_BKRS = e_BKRS / jnp.sum(e_BKRS, axis=-1, keepdims=True)
    maxes.append(jnp.max(m_BKR1))
    probs.append(p_BKRS)
    o_BKRH = _bmm(p_BKRS.astype(v_BKSH.dtype), v_BKSH[:, :, :end])
    outs.append(o_BKRH.reshape(B, K, G, b - a, H))
  o_BKGTH = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
  return ((_tokens_major(o_BKGTH), jnp.max(jnp.stack(maxes))),
          (q_BKGTH, k_BKSH, v_BKSH, masks, tuple(probs)))


def _attend_blocks_bwd(spans, scale, residuals, cotangents):
  do_BTNH, _ = cotangents  # the largest score is a statistic: no gradient flows from it
  q_BKGTH, k_BKSH, v_BKSH, masks, probs = residuals
  B, K, G, _, H = q_BKGTH.shape
  S = k_BKSH.shape[2]
  do_BKGTH = _grouped_heads_major(do_BTNH, K)
  # dS times K and Q: in the inputs' dtype, as the forward's products, but not in
  # float16, where small score gradients would underflow (no loss scaling here).
  ds_dtype = jnp.promote_types(q_BKGTH.dtype, k_BKSH.dtype)
  ds_dtype = jnp.float32 if ds_dtype == jnp.float16 else ds_dtype
  dq_blocks, dk_parts, dv_parts = [], [], []  # dK, dV transposed: each product is canonical
  for (a, b, end), mask, p_BKRS in zip(spans, masks, probs):
    do_BKRH = _query_block(do_BKGTH, a, b)
    dv_parts.append(_bmm(_transposed_copy(do_BKRH), p_BKRS.astype(v_BKSH.dtype), jnp.float32))
    dp_BKRS = _bmm_t(do_BKRH, v_BKSH[:, :, :end], jnp.float32)
    ds_BKRS = p_BKRS * (dp_BKRS - jnp.sum(dp_BKRS * p_BKRS, axis=-1, keepdims=True))
    if mask is not None:  # as autodiff of the where: no gradient into masked scores
      ds_BKRS = jnp.where(mask, ds_BKRS, 0.0)
    ds_BKRS = (ds_BKRS * scale).astype(ds_dtype)
    dq_blocks.append(_bmm(ds_BKRS, k_BKSH[:, :, :end].astype(ds_dtype),
                          jnp.float32).reshape(B, K, G, b - a, H))
    q_BKHR = _transposed_copy(_query_block(q_BKGTH, a, b)).astype(ds_dtype)
    dk_parts.append(_bmm(q_BKHR, ds_BKRS, jnp.float32))
  dq_BKGTH = dq_blocks[0] if len(dq_blocks) == 1 else jnp.concatenate(dq_blocks, axis=3)
  dq_BTNH = _tokens_major(dq_BKGTH)
  dk_BSKH, dv_BSKH = (_keys_major(_sum_prefixes(parts, S)) for parts in (dk_parts, dv_parts))
  # Materialized once, in the layout of the projections' gradients: without the
  # barrier XLA fuses the sum and transpose into each consumer and computes them twice.
  dq_BTNH, dk_BSKH, dv_BSKH = jax.lax.optimization_barrier((dq_BTNH, dk_BSKH, dv_BSKH))
  return (dq_BTNH.astype(q_BKGTH.dtype), dk_BSKH.astype(k_BKSH.dtype),
          dv_BSKH.astype(v_BKSH.dtype), None)


def _keys_major(x_BKHS):
  return x_BKHS.transpose(0, 3, 1, 2)


def _sum_prefixes(parts, S):
  """Σ of parts (B, K, H, end_i) over [0, end_i) of S: each key range [e, e') summed
  over the parts that reach it, the ranges joined (no zero-padded copies)."""
  ends = sorted({p.shape[3] for p in parts})
  if ends[-1] != S:
    raise ValueError(f"no part covers all {S} keys")
  pieces, start = [], 0
  for e in ends:
    pieces.append(sum(p[..., start:e] for p in parts if p.shape[3] >= e))
    start = e
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=3)


_attend_blocks.defvjp(_attend_blocks_fwd, _attend_blocks_bwd)
