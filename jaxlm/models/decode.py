"""Key/value-cache decoding, one token a step: one cache layout for both model kinds.

Dimension legend (docs/architecture.md): B batch, T prompt length, C cache
slots, D model width, N query heads, K kv heads, G = N // K, H head dim, V
vocab, L layers.

The cache holds `k`, `v` (L, B, K, C, H), `pad` (B,) and `index` (the next
slot), plus what a model kind's layers read at every step. C next to H lets the
step contract each (b, k) block in place (a (L, B, C, K, H) cache made XLA:CPU
transpose all of it every step: 10x slower at batch 32). Every row writes slot
`index` (one `dynamic_update_slice` after the layer scan); positions count from
a row's first real token, and slots before `pad` or from `index` on are masked,
so each row computes what it would alone. `step` runs a kind's own layer with a
cache-aware `attend` plugged in: the params, projections and MLP of training.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxlm import sharding
from jaxlm.config import ModelConfig
from jaxlm.models import transformer

CACHE_AXES = ("layers", "batch", "act_kv_heads", "length", "head_dim")


def new_cache(k_LBTKH: jax.Array, v_LBTKH: jax.Array, pad_B: jax.Array, slots: int,
              **extra) -> dict:
  """A cache of `slots` slots whose first T hold keys and values (L, B, T, K, H); T may be 0."""
  L, B, T, K, H = k_LBTKH.shape
  if slots < T:
    raise ValueError(f"a cache of {slots} slots cannot hold the {T} tokens given")

  def layout(kv_LBTKH):
    room = ((0, 0), (0, 0), (0, 0), (0, slots - T), (0, 0))
    return sharding.constrain(jnp.pad(jnp.swapaxes(kv_LBTKH, 2, 3), room), CACHE_AXES)

  return {"k": layout(k_LBTKH), "v": layout(v_LBTKH), "pad": pad_B.astype(jnp.int32),
          "index": jnp.asarray(T, jnp.int32), **extra}


def cached_attention(q_B1NH, k_B1KH, v_B1KH, k_BKCH, v_BKCH, valid_BC, scale):
  """One query per row over its valid cache slots plus its own new key and value.

  The new token is a separate softmax term rather than first written into the
  cache, so the layer scan only reads the cache; it is written once, in place,
  after the scan.
  """
  B, _, N, H = q_B1NH.shape
  K = k_BKCH.shape[1]
  q_BKGH = q_B1NH.reshape(B, K, N // K, H).astype(jnp.float32) * scale
  s_BKGC = jnp.einsum("bkgh,bkch->bkgc", q_BKGH, k_BKCH, preferred_element_type=jnp.float32)
  s_BKGC = jnp.where(valid_BC[:, None, None, :], s_BKGC, -jnp.inf)
  s_BKG = jnp.einsum("bkgh,bkh->bkg", q_BKGH, k_B1KH[:, 0].astype(jnp.float32))
  m_BKG = jnp.maximum(jnp.max(s_BKGC, axis=-1), s_BKG)  # finite: the new token is always valid
  p_BKGC = jnp.exp(s_BKGC - m_BKG[..., None])
  p_BKG = jnp.exp(s_BKG - m_BKG)
  o_BKGH = (jnp.einsum("bkgc,bkch->bkgh", p_BKGC.astype(v_BKCH.dtype), v_BKCH,
                       preferred_element_type=jnp.float32)
            + p_BKG[..., None] * v_B1KH[:, 0, :, None].astype(jnp.float32))
  o_BKGH = o_BKGH / (jnp.sum(p_BKGC, axis=-1) + p_BKG)[..., None]
  return o_BKGH.reshape(B, 1, N, H).astype(q_B1NH.dtype)


def step(params: dict, cache: dict, tokens_B: jax.Array, config: ModelConfig,
         layer: Callable, stacked: dict, extra_L=()) -> tuple[jax.Array, dict]:
  """Feeds one token per row at slot cache["index"]; returns its next-token logits (B, V)
  and the cache with that token's keys and values written.

  Args:
    layer: `layer(x_B1D, p, positions_B1, attend, *extra) -> (x_B1D, aux)`, one layer
      whose self-attention is `attend`; aux must be what `attend` returned as its own.
    stacked: the layers' params, stacked on a leading L axis.
    extra_L: more arrays stacked over L that each layer reads (its `extra`).
  The caller keeps index < C; a full cache is not checked here.
  """
  index, pad_B = cache["index"], cache["pad"]
  positions_B1 = (index - pad_B)[:, None]
  c_C = jnp.arange(cache["k"].shape[3], dtype=jnp.int32)
  valid_BC = (c_C[None, :] >= pad_B[:, None]) & (c_C[None, :] < index)

  def body(x_B1D, xs):
    p, k_BKCH, v_BKCH, *extra = xs

    def attend(q_B1NH, k_B1KH, v_B1KH):
      o_B1NH = cached_attention(q_B1NH, k_B1KH, v_B1KH, k_BKCH, v_BKCH, valid_BC,
                                config.attention_scale)
      return o_B1NH, (k_B1KH[:, 0], v_B1KH[:, 0])

    return layer(x_B1D, p, positions_B1, attend, *extra)

  x_B1D = transformer.embed(params, tokens_B[:, None], positions_B1, config)
  x_B1D, (k_LBKH, v_LBKH) = jax.lax.scan(body, x_B1D, (stacked, cache["k"], cache["v"], *extra_L))
  logits_BV = transformer.unembed(params, x_B1D, config)[:, 0]

  def write(cache_LBKCH, new_LBKH):
    new_LBK1H = new_LBKH[:, :, :, None].astype(cache_LBKCH.dtype)
    return sharding.constrain(
        jax.lax.dynamic_update_slice(cache_LBKCH, new_LBK1H, (0, 0, 0, index, 0)), CACHE_AXES)

  return logits_BV, dict(cache, k=write(cache["k"], k_LBKH), v=write(cache["v"], v_LBKH),
                         index=index + 1)


def prefill(params: dict, tokens_BT: jax.Array, lengths_B: jax.Array, config: ModelConfig,
            slots: int) -> tuple[jax.Array, dict]:
  """Runs left-padded prompts through a decoder-only model; returns last-token logits and the cache.

  Args:
    tokens_BT: prompts, each right-aligned: row b's tokens are tokens_BT[b, T - lengths_B[b]:].
    lengths_B: prompt lengths, 1 <= length <= T.
    slots: cache slots C >= T (room for C - T more tokens).
  Returns:
    (logits_BV, cache): float32 next-token logits after each prompt, and the cache.
  """
  T = tokens_BT.shape[1]
  pad_B = (T - lengths_B).astype(jnp.int32)
  t_BT = jnp.arange(T, dtype=jnp.int32)[None, :]
  positions_BT = jnp.maximum(t_BT - pad_B[:, None], 0)
  # Padding is its own segment: real tokens never see it, and a padding query
  # still sees itself, so no softmax row is empty.
  segment_ids_BT = (t_BT >= pad_B[:, None]).astype(jnp.int32)
  attend = transformer.self_attention(segment_ids_BT, config)

  def keep_kv(q_BTNH, k_BTKH, v_BTKH):  # a layer's aux: its keys and values, for the cache
    return attend(q_BTNH, k_BTKH, v_BTKH)[0], (k_BTKH, v_BTKH)

  body = lambda x_BTD, p: transformer.block(x_BTD, p, positions_BT, config, keep_kv)
  x_BTD = transformer.embed(params, tokens_BT, positions_BT, config)
  x_BTD, (k_LBTKH, v_LBTKH) = jax.lax.scan(body, x_BTD, params["layers"])
  logits_BV = transformer.unembed(params, x_BTD[:, -1:], config)[:, 0]
  return logits_BV, new_cache(k_LBTKH, v_LBTKH, pad_B, slots)


def decode_step(params: dict, cache: dict, tokens_B: jax.Array,
                config: ModelConfig) -> tuple[jax.Array, dict]:
  """A decoder-only model's step (see step): next-token logits (B, V) and the cache."""
  layer = lambda x_B1D, p, positions_B1, attend: transformer.block(
      x_B1D, p, positions_B1, config, attend)
  return step(params, cache, tokens_B, config, layer, params["layers"])
