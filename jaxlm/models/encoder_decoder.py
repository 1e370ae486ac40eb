"""Encoder-decoder Transformer (Vaswani et al. 2017) on the decoder-only model's layers.

Dimension legend: B batch, S source length, T target length, D model width,
N query heads, K kv heads, H head dim, F MLP width, V vocab, L decoder layers,
C cache slots.

An encoder layer *is* a decoder-only layer (transformer.block, its spec tree
built by transformer.param_specs) with bidirectional attention within the
source; padding is segment 0, so real tokens never attend to it. A decoder
layer is pre-norm causal self-attention (transformer's projections and rotary
embedding), cross-attention (queries from the decoder, keys and values from the
encoder's output) and the MLP. The token embedding (and learned positions) is
shared by encoder, decoder and the tied output projection. Positions count
from 0 in the source and in the target, one example a row. Cross-attention
rotates its queries by target and its keys by source positions, as learned
positions add the same embedding to both: a head can then attend by offset
(the source token near the one being written). Without it the model first has
to find positions in a rotary encoder's output, which carries none directly:
in our first run it was still a plain language model of the targets after 300
steps (docs/seq2seq.md).

Cached decoding (init_cache, decode_step) follows jaxlm.models.decode: the
decoder's self-attention keys and values go to a preallocated (L, B, K, C, H)
cache, one slot a step; the cross-attention keys and values are projected from
the encoder's output once and read at every step. Every row starts from the
same start token at position 0, so there is no left padding and no prefill.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm import sharding
from jaxlm.config import ModelConfig
from jaxlm.models import decode as lm_decode
from jaxlm.models import layers, transformer
from jaxlm.models.attention import dot_product_attention

# The decoder-only model's pieces, reused rather than copied: its attention
# sublayer (projections, biases, rotary embedding, a pluggable `attend`), and
# the cache layout and one-query attention of its KV-cache decoding.
_attention_sublayer = transformer.attention_sublayer
_cached_attention = lm_decode.cached_attention
_CACHE_AXES = lm_decode.CACHE_AXES


def _check(config: ModelConfig) -> None:
  if config.encoder_layers < 1:
    raise ValueError(f"model.encoder_layers={config.encoder_layers} is invalid for an "
                     "encoder-decoder: expected > 0")


def param_specs(config: ModelConfig) -> dict:
  """{embed, encoder: {layers, final_norm}, decoder: {layers}, final_norm, [pos_embed, unembed]}.

  The encoder's layers are transformer.param_specs' own for encoder_layers
  layers; the decoder's (n_layers of them) add cross_norm and cross (an
  attention's wq, wk, wv, wo) to the decoder-only layer.
  """
  _check(config)
  c = config
  specs = transformer.param_specs(c)  # embed, layers (n_layers), final_norm, ...
  decoder_layers = specs.pop("layers")
  decoder_layers["cross_norm"] = dict(decoder_layers["attn_norm"])
  decoder_layers["cross"] = dict(decoder_layers["attn"])
  encoder = transformer.param_specs(dataclasses.replace(c, n_layers=c.encoder_layers))
  specs["encoder"] = {"layers": encoder["layers"], "final_norm": layers.norm_specs(c.norm,
                                                                                   c.d_model)}
  specs["decoder"] = {"layers": decoder_layers}
  return specs


def init(config: ModelConfig, rng: jax.Array) -> dict:
  """Draws initial params (a nested dict of arrays) from the spec tree."""
  return layers.init_params(param_specs(config), rng, jnp.dtype(config.param_dtype))


def param_count(config: ModelConfig) -> dict[str, int]:
  """Total and non-embedding parameter counts, from the config alone."""
  leaves = jax.tree.leaves(param_specs(config), is_leaf=layers.is_spec)
  total = sum(s.size for s in leaves)
  return {"total": total, "non_embedding": total - sum(s.size for s in leaves if s.embedding)}


def _positions(tokens_BT):
  B, T = tokens_BT.shape
  return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))


def _impl(config: ModelConfig):
  return None if config.attention == "auto" else config.attention


def encode(params: dict, src_BS: jax.Array, config: ModelConfig,
           segment_ids_BS=None) -> jax.Array:
  """The encoder's final-normed output (B, S, D): the memory the decoder attends to.

  Args:
    params: the tree from init().
    src_BS: int source token ids.
    config: the model config.
    segment_ids_BS: 1 on source tokens, 0 on padding (which no real token sees);
      None: every token is real.
  """
  _check(config)
  positions_BS = _positions(src_BS)
  impl = _impl(config)

  def attend(q_BSNH, k_BSKH, v_BSKH):
    return dot_product_attention(q_BSNH, k_BSKH, v_BSKH, segment_ids=segment_ids_BS,
                                 implementation=impl, scale=config.attention_scale), None

  x_BSD = transformer.embed(params, src_BS, positions_BS, config)
  def body(x_BSD, p):
    return transformer.block(x_BSD, p, positions_BS, config, attend)

  x_BSD, _ = transformer.layer_stack(body, x_BSD, params["encoder"]["layers"], config)
  p = params["encoder"]["final_norm"]
  return layers.norm(p, x_BSD, config.norm, config.norm_eps)


def memory_kv(p: dict, memory_BSD: jax.Array, config: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """One decoder layer's cross-attention keys (rotated by source position) and values
  (B, S, K, H) of the encoder output."""
  dtype = memory_BSD.dtype
  k_BSKH = layers.dense(memory_BSD, p["wk"])
  v_BSKH = layers.dense(memory_BSD, p["wv"])
  if "bk" in p:
    k_BSKH, v_BSKH = k_BSKH + p["bk"].astype(dtype), v_BSKH + p["bv"].astype(dtype)
  if config.positions == "rope":
    k_BSKH = layers.rope(k_BSKH, _positions(memory_BSD[..., 0]), config.rope_theta)
  return k_BSKH, v_BSKH


def cross_attention(src_segments_BS, config: ModelConfig):
  """The cross-attention `attend(q, k, v) -> o`: every query sees every real source token.

  Padding (segment 0) is masked by passing (query, kv) segment ids to
  dot_product_attention, which its xla and pallas paths serve for T != S
  (cudnn takes no segment ids, so the automatic choice skips it).
  """
  impl = _impl(config)
  kv_seg_BS = None if src_segments_BS is None else (src_segments_BS > 0).astype(jnp.int32)

  def attend(q_BTNH, k_BSKH, v_BSKH):
    segments = None
    if kv_seg_BS is not None:
      segments = (jnp.ones(q_BTNH.shape[:2], jnp.int32), kv_seg_BS)
    return dot_product_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids=segments,
                                 implementation=impl, scale=config.attention_scale)

  return attend


def _cross(p, x_BTD, positions_BT, k_BSKH, v_BSKH, config, attend, constrain):
  dtype = x_BTD.dtype
  q_BTNH = layers.dense(x_BTD, p["wq"])
  if "bq" in p:
    q_BTNH = q_BTNH + p["bq"].astype(dtype)
  if config.positions == "rope":
    q_BTNH = layers.rope(q_BTNH, positions_BT, config.rope_theta)
  q_BTNH = constrain(q_BTNH, ("batch", "length", "act_heads", "head_dim"))
  out_BTD = layers.dense(attend(q_BTNH, k_BSKH, v_BSKH), p["wo"], n_in=2)
  if "bo" in p:
    out_BTD = out_BTD + p["bo"].astype(dtype)
  return out_BTD


def decoder_block(x_BTD, p, kv, positions_BT, config: ModelConfig, self_attend, cross_attend):
  """One pre-norm decoder layer; kv = this layer's (k_BSKH, v_BSKH) of the memory.

  `self_attend(q, k, v) -> (o, aux)` is plugged in as in transformer.block (a
  cache's own), `cross_attend(q, k, v) -> o`. Returns (x_BTD, aux).
  """
  c = config
  constrain = sharding.constrain
  h_BTD = layers.norm(p["attn_norm"], x_BTD, c.norm, c.norm_eps)
  a_BTD, aux = _attention_sublayer(p["attn"], h_BTD, positions_BT, c, constrain, self_attend)
  x_BTD = x_BTD + a_BTD
  h_BTD = layers.norm(p["cross_norm"], x_BTD, c.norm, c.norm_eps)
  x_BTD = x_BTD + _cross(p["cross"], h_BTD, positions_BT, *kv, c, cross_attend, constrain)
  h_BTD = layers.norm(p["mlp_norm"], x_BTD, c.norm, c.norm_eps)
  x_BTD = x_BTD + layers.mlp(p["mlp"], h_BTD, c.mlp, constrain)
  return constrain(x_BTD, ("batch", "length", "act_embed")), aux


def decoder_trunk(params: dict, memory_BSD: jax.Array, tgt_BT: jax.Array, config: ModelConfig,
                  *, src_segments_BS=None) -> jax.Array:
  """Decoder residual stream (B, T, D) before the final norm, for teacher-forced targets.

  Target padding needs no mask: it comes after the real tokens, which causal
  attention keeps from seeing it.
  """
  positions_BT = _positions(tgt_BT)
  self_attend = transformer.self_attention(None, config)
  cross_attend = cross_attention(src_segments_BS, config)

  def body(x_BTD, p):
    kv = memory_kv(p["cross"], memory_BSD, config)
    return decoder_block(x_BTD, p, kv, positions_BT, config, self_attend, cross_attend)

  x_BTD = transformer.embed(params, tgt_BT, positions_BT, config)
  x_BTD, _ = transformer.layer_stack(body, x_BTD, params["decoder"]["layers"], config)
  return x_BTD


def decode(params: dict, memory_BSD: jax.Array, tgt_BT: jax.Array, config: ModelConfig, *,
           src_segments_BS=None) -> jax.Array:
  """Next-token logits (B, T, V), float32, of decoder inputs tgt_BT given the memory."""
  x_BTD = decoder_trunk(params, memory_BSD, tgt_BT, config, src_segments_BS=src_segments_BS)
  return transformer.unembed(params, x_BTD, config)


def apply(params: dict, src_BS: jax.Array, tgt_BT: jax.Array, config: ModelConfig, *,
          src_segments_BS=None) -> jax.Array:
  """Logits (B, T, V) of the target's next tokens: encode, then decode teacher-forced."""
  memory_BSD = encode(params, src_BS, config, src_segments_BS)
  return decode(params, memory_BSD, tgt_BT, config, src_segments_BS=src_segments_BS)


# ---------------------------------------------------------------------------
# Cached decoding.


def init_cache(params: dict, memory_BSD: jax.Array, config: ModelConfig, cache_len: int,
               src_segments_BS=None) -> dict:
  """The decoder's state before its first token.

  Returns {k, v: (L, B, K, C, H) empty self-attention cache of cache_len slots;
  cross_k, cross_v: (L, B, S, K, H) each layer's keys and values of the memory;
  src_segments: (B, S); index: the next slot (0)}.
  """
  c = config
  B, S, _ = memory_BSD.shape
  cross_k, cross_v = jax.lax.map(lambda p: memory_kv(p, memory_BSD, c),
                                 params["decoder"]["layers"]["cross"])
  empty = jnp.zeros((c.n_layers, B, c.kv_heads, cache_len, c.head_dim), memory_BSD.dtype)
  empty = sharding.constrain(empty, _CACHE_AXES)
  if src_segments_BS is None:
    src_segments_BS = jnp.ones((B, S), jnp.int32)
  return {"k": empty, "v": empty, "cross_k": cross_k, "cross_v": cross_v,
          "src_segments": src_segments_BS, "index": jnp.asarray(0, jnp.int32)}


def decode_step(params: dict, cache: dict, tokens_B: jax.Array,
                config: ModelConfig) -> tuple[jax.Array, dict]:
  """Feeds one token per row at position cache["index"]; returns its next-token logits
  (B, V) and the cache. The caller keeps index < C (a full cache is not checked here)."""
  index = cache["index"]
  B = tokens_B.shape[0]
  C = cache["k"].shape[3]
  positions_B1 = jnp.full((B, 1), index, jnp.int32)
  valid_BC = jnp.broadcast_to(jnp.arange(C, dtype=jnp.int32)[None, :] < index, (B, C))
  cross_attend = cross_attention(cache["src_segments"], config)

  def body(x_B1D, layer):
    p, k_BKCH, v_BKCH, cross_k_BSKH, cross_v_BSKH = layer

    def self_attend(q_B1NH, k_B1KH, v_B1KH):
      o_B1NH = _cached_attention(q_B1NH, k_B1KH, v_B1KH, k_BKCH, v_BKCH, valid_BC,
                                 config.attention_scale)
      return o_B1NH, (k_B1KH[:, 0], v_B1KH[:, 0])

    return decoder_block(x_B1D, p, (cross_k_BSKH, cross_v_BSKH), positions_B1, config,
                         self_attend, cross_attend)

  x_B1D = transformer.embed(params, tokens_B[:, None], positions_B1, config)
  x_B1D, (k_LBKH, v_LBKH) = jax.lax.scan(
      body, x_B1D, (params["decoder"]["layers"], cache["k"], cache["v"], cache["cross_k"],
                    cache["cross_v"]))
  logits_BV = transformer.unembed(params, x_B1D, config)[:, 0]

  def write(cache_LBKCH, new_LBKH):
    new_LBK1H = new_LBKH[:, :, :, None].astype(cache_LBKCH.dtype)
    return sharding.constrain(
        jax.lax.dynamic_update_slice(cache_LBKCH, new_LBK1H, (0, 0, 0, index, 0)), _CACHE_AXES)

  return logits_BV, dict(cache, k=write(cache["k"], k_LBKH), v=write(cache["v"], v_LBKH),
                         index=index + 1)
