"""Encoder-decoder Transformer (Vaswani et al. 2017) on the decoder-only model's layers.

Dimension legend (docs/architecture.md): B batch, S source length, T target
length, D model width, N query heads, K kv heads, H head dim, F MLP width,
V vocab, L decoder layers, C cache slots.

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

Cached decoding (start, decode_step) uses jaxlm.models.decode's cache and
step: the decoder's self-attention keys and values go to the same (L, B, K, C,
H) cache as a decoder-only model's, one slot a step; the cross-attention keys
and values are projected from the encoder's output once, kept in the cache, and
read at every step. Every row starts from the same start token at position 0,
so there is no left padding and no prefill.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxlm import params as params_lib
from jaxlm.config import ModelConfig
from jaxlm.models import decode as decoding
from jaxlm.models import layers, transformer
from jaxlm.models.attention import dot_product_attention


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
  specs = transformer.param_specs(config)  # embed, layers (n_layers), final_norm, ...
  decoder_layers = specs.pop("layers")
  decoder_layers["cross_norm"] = dict(decoder_layers["attn_norm"])
  decoder_layers["cross"] = dict(decoder_layers["attn"])
  encoder = transformer.param_specs(dataclasses.replace(config, n_layers=config.encoder_layers))
  specs["encoder"] = {"layers": encoder["layers"], "final_norm": encoder["final_norm"]}
  specs["decoder"] = {"layers": decoder_layers}
  return specs


def init(config: ModelConfig, rng: jax.Array) -> dict:
  """Draws initial params (a nested dict of arrays) from the spec tree."""
  return params_lib.init_params(param_specs(config), rng, jnp.dtype(config.param_dtype))


def encode(params: dict, src_BS: jax.Array, config: ModelConfig, segment_ids_BS=None) -> jax.Array:
  """The encoder's final-normed output (B, S, D): the memory the decoder attends to.

  segment_ids_BS: 1 on source tokens, 0 on padding (which no real token sees); None: every
  token is real.
  """
  _check(config)
  positions_BS = transformer.default_positions(src_BS)
  attend = transformer.self_attention(segment_ids_BS, config, causal=False)
  body = lambda x_BSD, p: transformer.block(x_BSD, p, positions_BS, config, attend)
  x_BSD = transformer.embed(params, src_BS, positions_BS, config)
  x_BSD, _ = transformer.layer_stack(body, x_BSD, params["encoder"]["layers"], config,
                                     param_specs(config)["encoder"]["layers"])
  return layers.norm(params["encoder"]["final_norm"], x_BSD, config.norm, config.norm_eps)


def memory_kv(p: dict, memory_BSD: jax.Array, config: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """One decoder layer's cross-attention keys (rotated by source position) and values
  (B, S, K, H) of the encoder output."""
  positions_BS = transformer.default_positions(memory_BSD[..., 0])
  return transformer.project_keys_values(p, memory_BSD, positions_BS, config)


def cross_attention(src_segments_BS, config: ModelConfig):
  """The cross-attention `attend(q, k, v) -> o`: every query sees every real source token.

  Padding (segment 0) is masked by passing (query, kv) segment ids to
  dot_product_attention, which its xla and pallas paths serve for T != S
  (cudnn takes no segment ids, so the automatic choice skips it).
  """
  kv_seg_BS = None if src_segments_BS is None else (src_segments_BS > 0).astype(jnp.int32)

  def attend(q_BTNH, k_BSKH, v_BSKH):
    segments = None if kv_seg_BS is None else (jnp.ones(q_BTNH.shape[:2], jnp.int32), kv_seg_BS)
    return dot_product_attention(q_BTNH, k_BSKH, v_BSKH, segment_ids=segments,
                                 implementation=config.attention, scale=config.attention_scale)

  return attend


def decoder_block(x_BTD, p, kv, positions_BT, config: ModelConfig, self_attend, cross_attend):
  """One pre-norm decoder layer; kv = this layer's (k_BSKH, v_BSKH) of the memory.

  `self_attend(q, k, v) -> (o, aux)` is plugged in as in transformer.block (a
  cache's own), `cross_attend(q, k, v) -> o`. Returns (x_BTD, aux).
  """
  c = config
  h_BTD = layers.norm(p["attn_norm"], x_BTD, c.norm, c.norm_eps)
  a_BTD, aux = transformer.attention_sublayer(p["attn"], h_BTD, positions_BT, c, self_attend)
  x_BTD = x_BTD + a_BTD
  h_BTD = layers.norm(p["cross_norm"], x_BTD, c.norm, c.norm_eps)
  q_BTNH = transformer.project_queries(p["cross"], h_BTD, positions_BT, c)
  x_BTD = x_BTD + transformer.project_out(p["cross"], cross_attend(q_BTNH, *kv))
  return transformer.mlp_sublayer(p, x_BTD, c), aux


def decoder_trunk(params: dict, memory_BSD: jax.Array, tgt_BT: jax.Array, config: ModelConfig,
                  *, src_segments_BS=None) -> jax.Array:
  """Decoder residual stream (B, T, D) before the final norm, for teacher-forced targets.

  Target padding needs no mask: it comes after the real tokens, which causal
  attention keeps from seeing it.
  """
  positions_BT = transformer.default_positions(tgt_BT)
  self_attend = transformer.self_attention(None, config)
  cross_attend = cross_attention(src_segments_BS, config)

  def body(x_BTD, p):
    kv = memory_kv(p["cross"], memory_BSD, config)
    return decoder_block(x_BTD, p, kv, positions_BT, config, self_attend, cross_attend)

  x_BTD = transformer.embed(params, tgt_BT, positions_BT, config)
  return transformer.layer_stack(body, x_BTD, params["decoder"]["layers"], config,
                                 param_specs(config)["decoder"]["layers"])[0]


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


def init_cache(params: dict, memory_BSD: jax.Array, config: ModelConfig, slots: int,
               src_segments_BS=None) -> dict:
  """The decoder's cache before its first token: decode.new_cache's layout with no entries,
  plus cross_k, cross_v (L, B, S, K, H), each layer's keys and values of the memory,
  and src_segments (B, S)."""
  c = config
  B, S, _ = memory_BSD.shape
  cross_k, cross_v = jax.lax.map(lambda p: memory_kv(p, memory_BSD, c),
                                 params["decoder"]["layers"]["cross"])
  empty_LBTKH = jnp.zeros((c.n_layers, B, 0, c.kv_heads, c.head_dim), memory_BSD.dtype)
  if src_segments_BS is None:
    src_segments_BS = jnp.ones((B, S), jnp.int32)
  return decoding.new_cache(empty_LBTKH, empty_LBTKH, jnp.zeros((B,), jnp.int32), slots,
                          cross_k=cross_k, cross_v=cross_v, src_segments=src_segments_BS)


def decode_step(params: dict, cache: dict, tokens_B: jax.Array,
                config: ModelConfig) -> tuple[jax.Array, dict]:
  """Feeds one token per row at position cache["index"] (decode.step); returns its
  next-token logits (B, V) and the cache."""
  cross_attend = cross_attention(cache["src_segments"], config)

  def layer(x_B1D, p, positions_B1, self_attend, cross_k_BSKH, cross_v_BSKH):
    return decoder_block(x_B1D, p, (cross_k_BSKH, cross_v_BSKH), positions_B1, config,
                         self_attend, cross_attend)

  return decoding.step(params, cache, tokens_B, config, layer, params["decoder"]["layers"],
                     (cache["cross_k"], cache["cross_v"]))


def start(params: dict, src_BS: jax.Array, src_segments_BS: jax.Array, start_B: jax.Array,
          config: ModelConfig, slots: int) -> tuple[jax.Array, dict]:
  """Encodes the sources and feeds the start token: the first token's logits (B, V) and
  a cache of `slots` slots (one taken by the start token)."""
  memory_BSD = encode(params, src_BS, config, src_segments_BS)
  cache = init_cache(params, memory_BSD, config, slots, src_segments_BS)
  return decode_step(params, cache, start_B, config)
