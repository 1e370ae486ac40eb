"""Key/value-cache inference on the Transformer's own layers: prefill, then one token a step.

Dimension legend: B batch, T new tokens, S cache slots, D model width, N query
heads, K kv heads, G = N // K query heads per kv head, H head dim, V vocab,
L layers.

The cache holds k and v as (L, B, K, S, H): grouped-query (K kv heads, not N),
and with S next to H so the decode step's attention contracts each (b, k)
block in place; a (L, B, S, K, H) cache made XLA:CPU transpose all of it on
every step (10x slower at batch 32, measured). Prompts are left-padded to a
common length, so every row writes its next token to the same slot `index`
(one `dynamic_update_slice` for all layers, after the layer scan); each row's
positions count from its first real token, so rotary and learned positions
are those of the prompt alone. Slots before a row's `pad` and from `index` on
are masked off, so each row of a batch computes exactly what it would alone.

The layers are transformer.block with a cache-aware `attend` plugged in: the
same params, norms, projections, rotary embedding and MLP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm import sharding
from jaxlm.config import ModelConfig
from jaxlm.models import transformer

CACHE_AXES = ("layers", "batch", "act_kv_heads", "length", "head_dim")


def _layout(kv_LBTKH: jax.Array, cache_len: int) -> jax.Array:
  """(L, B, T, K, H) keys or values as a (L, B, K, S, H) cache with S - T empty slots."""
  kv_LBKTH = jnp.swapaxes(kv_LBTKH, 2, 3)
  T = kv_LBKTH.shape[3]
  room = ((0, 0), (0, 0), (0, 0), (0, cache_len - T), (0, 0))
  return sharding.constrain(jnp.pad(kv_LBKTH, room), CACHE_AXES)


def prefill(params: dict, tokens_BT: jax.Array, lengths_B: jax.Array, config: ModelConfig,
            cache_len: int) -> tuple[jax.Array, dict]:
  """Runs left-padded prompts through the model; returns last-token logits and the cache.

  Args:
    params: the tree from transformer.init().
    tokens_BT: prompts, each right-aligned: row b's tokens are tokens_BT[b, T - lengths_B[b]:].
    lengths_B: prompt lengths, 1 <= length <= T.
    config: the model config.
    cache_len: slots S >= T in the returned cache (room for S - T more tokens).
  Returns:
    (logits_BV, cache): float32 next-token logits after each prompt, and the cache
    dict {k, v: (L, B, K, S, H); pad: (B,) left padding; index: next free slot}.
  """
  B, T = tokens_BT.shape
  if cache_len < T:
    raise ValueError(f"cache_len={cache_len} is shorter than the prompts ({T} tokens)")
  pad_B = (T - lengths_B).astype(jnp.int32)
  t_BT = jnp.arange(T, dtype=jnp.int32)[None, :]
  positions_BT = jnp.maximum(t_BT - pad_B[:, None], 0)
  # Padding is its own segment: real tokens never see it, and a padding query
  # still sees itself, so no softmax row is empty.
  segment_ids_BT = (t_BT >= pad_B[:, None]).astype(jnp.int32)
  attend = transformer.self_attention(segment_ids_BT, config)

  def body(x_BTD, p):
    def keep_kv(q_BTNH, k_BTKH, v_BTKH):
      o_BTNH, _ = attend(q_BTNH, k_BTKH, v_BTKH)
      return o_BTNH, (k_BTKH, v_BTKH)
    return transformer.block(x_BTD, p, positions_BT, config, keep_kv)

  x_BTD = transformer.embed(params, tokens_BT, positions_BT, config)
  x_BTD, (k_LBTKH, v_LBTKH) = jax.lax.scan(body, x_BTD, params["layers"])
  logits_BV = transformer.unembed(params, x_BTD[:, -1:], config)[:, 0]
  cache = {"k": _layout(k_LBTKH, cache_len), "v": _layout(v_LBTKH, cache_len),
           "pad": pad_B, "index": jnp.asarray(T, jnp.int32)}
  return logits_BV, cache


def cached_attention(q_B1NH, k_B1KH, v_B1KH, k_BKSH, v_BKSH, valid_BS, scale):
  """One query per row over its valid cache slots plus its own new key and value.

  The new token is a separate softmax term rather than first written into the
  cache, so the layer scan only reads the cache; it is written once, in place,
  after the scan.
  """
  B, _, N, H = q_B1NH.shape
  K = k_BKSH.shape[1]
  q_BKGH = q_B1NH.reshape(B, K, N // K, H).astype(jnp.float32) * scale
  s_BKGS = jnp.einsum("bkgh,bksh->bkgs", q_BKGH, k_BKSH, preferred_element_type=jnp.float32)
  s_BKGS = jnp.where(valid_BS[:, None, None, :], s_BKGS, -jnp.inf)
  s_BKG = jnp.einsum("bkgh,bkh->bkg", q_BKGH, k_B1KH[:, 0].astype(jnp.float32))
  m_BKG = jnp.maximum(jnp.max(s_BKGS, axis=-1), s_BKG)  # finite: the new token is always valid
  p_BKGS = jnp.exp(s_BKGS - m_BKG[..., None])
  p_BKG = jnp.exp(s_BKG - m_BKG)
  o_BKGH = (jnp.einsum("bkgs,bksh->bkgh", p_BKGS.astype(v_BKSH.dtype), v_BKSH,
                       preferred_element_type=jnp.float32)
            + p_BKG[..., None] * v_B1KH[:, 0, :, None].astype(jnp.float32))
  o_BKGH = o_BKGH / (jnp.sum(p_BKGS, axis=-1) + p_BKG)[..., None]
  return o_BKGH.reshape(B, 1, N, H).astype(q_B1NH.dtype)


def decode_step(params: dict, cache: dict, tokens_B: jax.Array,
                config: ModelConfig) -> tuple[jax.Array, dict]:
  """Feeds one token per row at slot cache["index"]; returns its next-token logits and the cache.

  The caller keeps index < S (the cache's length); a full cache is not checked here.
  """
  index, pad_B = cache["index"], cache["pad"]
  S = cache["k"].shape[3]
  positions_B1 = (index - pad_B)[:, None]
  s_S = jnp.arange(S, dtype=jnp.int32)
  valid_BS = (s_S[None, :] >= pad_B[:, None]) & (s_S[None, :] < index)

  def body(x_B1D, layer):
    p, k_BKSH, v_BKSH = layer

    def attend(q_B1NH, k_B1KH, v_B1KH):
      o_B1NH = cached_attention(q_B1NH, k_B1KH, v_B1KH, k_BKSH, v_BKSH, valid_BS,
                                config.attention_scale)
      return o_B1NH, (k_B1KH[:, 0], v_B1KH[:, 0])

    return transformer.block(x_B1D, p, positions_B1, config, attend)

  x_B1D = transformer.embed(params, tokens_B[:, None], positions_B1, config)
  x_B1D, (k_LBKH, v_LBKH) = jax.lax.scan(body, x_B1D, (params["layers"], cache["k"],
                                                       cache["v"]))
  logits_BV = transformer.unembed(params, x_B1D, config)[:, 0]

  def write(cache_LBKSH, new_LBKH):
    new_LBK1H = new_LBKH[:, :, :, None].astype(cache_LBKSH.dtype)
    return sharding.constrain(
        jax.lax.dynamic_update_slice(cache_LBKSH, new_LBK1H, (0, 0, 0, index, 0)), CACHE_AXES)

  cache = {"k": write(cache["k"], k_LBKH), "v": write(cache["v"], v_LBKH), "pad": pad_B,
           "index": index + 1}
  return logits_BV, cache
