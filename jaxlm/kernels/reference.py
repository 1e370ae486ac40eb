"""Attention in its plainest form, and the masking every attention kernel shares.

Dimension legend (docs/architecture.md): B batch, T query length, S key length,
N query heads, K key/value heads (N divisible by K), G = N // K, H head dim.

`reference_attention` is one masked softmax over all keys, differentiated by
JAX: the definition the XLA and Pallas kernels beside it are tested against,
in both directions. It is not used for training (it repeats K/V per query head
and materializes every score).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Large but finite, so a fully masked row gives a uniform softmax, never NaN
# (exp(-inf - -inf) would be). Every kernel masks with this value.
MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def split_segments(segment_ids, T: int, S: int):
  """(query segment ids (B, T), kv segment ids (B, S)) from one array or a (query, kv) pair."""
  if segment_ids is None:
    return None, None
  if not isinstance(segment_ids, (tuple, list)):
    if T != S:
      raise ValueError(f"segment_ids as one array needs equal query and key lengths, got "
                       f"T={T}, S={S}; pass (query_segment_ids, kv_segment_ids)")
    segment_ids = (segment_ids, segment_ids)
  for name, seg, n in (("query", segment_ids[0], T), ("kv", segment_ids[1], S)):
    if seg.ndim != 2 or seg.shape[1] != n:
      raise ValueError(f"{name} segment ids must be (B, {n}), got {seg.shape}")
  return tuple(segment_ids)


def mask_BTS(T: int, S: int, is_causal: bool, q_seg_BT=None, kv_seg_BS=None):
  """Boolean mask (True = attend) of shape (B or 1, T, S); causal aligns the ends."""
  mask = jnp.ones((1, T, S), dtype=bool)
  if is_causal:
    # Query t sees keys s <= t + (S - T): with a cache prefix, the newest queries
    # are at the end.
    mask = mask & (jnp.arange(S)[None, :] <= jnp.arange(T)[:, None] + (S - T))[None]
  if q_seg_BT is not None:
    mask = mask & (q_seg_BT[:, :, None] == kv_seg_BS[:, None, :])
  return mask


def reference_attention(q_BTNH, k_BSKH, v_BSKH, *, is_causal=False, segment_ids=None, scale=None):
  """Softmax(q k^T * scale, masked) v over all keys, in float32; (B, T, N, H) in v's dtype."""
  T, S = q_BTNH.shape[1], k_BSKH.shape[1]
  G = q_BTNH.shape[2] // k_BSKH.shape[2]
  k_BSNH, v_BSNH = jnp.repeat(k_BSKH, G, axis=2), jnp.repeat(v_BSKH, G, axis=2)
  scale = q_BTNH.shape[-1] ** -0.5 if scale is None else scale
  s_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH, preferred_element_type=jnp.float32) * scale
  visible_BTS = mask_BTS(T, S, is_causal, *split_segments(segment_ids, T, S))
  s_BNTS = jnp.where(visible_BTS[:, None], s_BNTS, MASKED)
  p_BNTS = jax.nn.softmax(s_BNTS, -1).astype(v_BSNH.dtype)
  return jnp.einsum("bnts,bsnh->btnh", p_BNTS, v_BSNH)
