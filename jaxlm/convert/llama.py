"""Llama-family models (LlamaForCausalLM, MistralForCausalLM) and jaxlm: configs and layouts.

Dimension legend (docs/architecture.md): V vocab, D model width, N query
heads, K kv heads, H head dim, F MLP width, L layers.

transformers keeps nn.Linear weights as (out, in), the transpose of jaxlm's
(in, out). Its rotary embedding rotates halves of each head (rotate_half), as
jaxlm.models.layers.rope does, with frequencies theta^(-2i/H) in both, so q and k
need no permutation. gate_proj, up_proj and down_proj are jaxlm's w_gate, w_in
and w_out: down(silu(gate(x)) * up(x)).
"""

from __future__ import annotations

import json

import jax
import numpy as np

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.convert.hf_config import expect, positive, require_model, value

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
IGNORED = (".rotary_emb.inv_freq",)  # a buffer that older transformers saved
_WHAT = "Llama-family models (LlamaForCausalLM, MistralForCausalLM)"


def _rope_theta(hf: dict) -> float:
  """The rotary base; any rope scaling (linear, dynamic, yarn, llama3, ...) is an error."""
  theta = value(hf, "rope_theta", 10000.0)
  # transformers < 5 writes rope_theta and rope_scaling; 5 writes rope_parameters.
  for key in ("rope_scaling", "rope_parameters"):
    rope = hf.get(key)
    if rope is None:
      continue
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else rope
    partial = rope.get("partial_rotary_factor", 1.0) if isinstance(rope, dict) else 1.0
    if kind != "default" or partial != 1.0:
      raise ConfigError(f"config.json {key}={json.dumps(rope)} is not supported: jaxlm converts "
                        f"unscaled rotary embeddings only, {key}=null or "
                        '{"rope_type": "default"}')
    theta = rope.get("rope_theta", theta)
  expect(hf, "partial_rotary_factor", (1.0,), 1.0, _WHAT)
  return float(theta)


def config_from_hf(hf: dict) -> ModelConfig:
  """The jaxlm model config of a Llama or Mistral config.json; errors name unsupported keys."""
  expect(hf, "hidden_act", ("silu",), "silu", _WHAT)
  D, N = positive(hf, "hidden_size"), positive(hf, "num_attention_heads")
  if D % N:
    raise ConfigError(f"config.json num_attention_heads={N} is invalid: expected a divisor of "
                      f"hidden_size={D}")
  head_dim = value(hf, "head_dim", D // N)
  if head_dim != D // N:
    raise ConfigError(f"config.json head_dim={head_dim} is not supported: jaxlm's head dimension "
                      f"is hidden_size / num_attention_heads = {D // N}")
  K = value(hf, "num_key_value_heads", N)
  if not isinstance(K, int) or K <= 0 or N % K:
    raise ConfigError(f"config.json num_key_value_heads={K!r} is invalid: expected a divisor of "
                      f"num_attention_heads={N}")
  theta = _rope_theta(hf)
  attention_bias = bool(value(hf, "attention_bias", False))
  mlp_bias = bool(value(hf, "mlp_bias", False))
  max_len = positive(hf, "max_position_embeddings")
  window = hf.get("sliding_window") if hf.get("model_type") == "mistral" else None
  if window:
    # Sliding-window attention equals full causal attention on sequences no longer than the
    # window, and jaxlm never attends to more than max_seq_len tokens.
    max_len = min(max_len, positive(hf, "sliding_window"))
  return ModelConfig(
      vocab_size=positive(hf, "vocab_size"), d_model=D, n_layers=positive(hf, "num_hidden_layers"),
      n_heads=N, n_kv_heads=K, d_ff=positive(hf, "intermediate_size"), max_seq_len=max_len,
      positions="rope", norm="rmsnorm", mlp="swiglu", use_bias=attention_bias or mlp_bias,
      tie_embeddings=bool(value(hf, "tie_word_embeddings", False)), rope_theta=theta,
      norm_eps=float(value(hf, "rms_norm_eps", 1e-6)),
      init_std=float(value(hf, "initializer_range", 0.02)))


def config_to_hf(c: ModelConfig) -> dict:
  """A minimal LlamaForCausalLM config.json for a jaxlm model config with rotary positions."""
  arch = ARCHITECTURES["llama"]
  require_model(c, arch, positions="rope", norm="rmsnorm", mlp="swiglu", qk_norm=False)
  return {
      "architectures": [arch], "model_type": "llama", "vocab_size": c.vocab_size,
      "hidden_size": c.d_model, "intermediate_size": c.ff_dim, "num_hidden_layers": c.n_layers,
      "num_attention_heads": c.n_heads, "num_key_value_heads": c.kv_heads,
      "head_dim": c.head_dim, "hidden_act": "silu", "max_position_embeddings": c.max_seq_len,
      "rms_norm_eps": c.norm_eps,
      # Both spellings, so that transformers 4 (rope_theta) and 5 (rope_parameters) read it.
      "rope_theta": c.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
      # jaxlm's use_bias puts biases on all of q, k, v, o and the three MLP projections.
      "attention_bias": c.use_bias, "mlp_bias": c.use_bias,
      "tie_word_embeddings": c.tie_embeddings, "initializer_range": c.init_std,
  }


def params_from_hf(t, c: ModelConfig, hf: dict) -> dict:
  """jaxlm params (numpy, stacked over layers; hf.read_hf adds the untied unembedding) from
  HF tensors `t` (has(), take(name, shape)).

  jaxlm has one use_bias for attention and MLP; where config.json has only one of
  attention_bias and mlp_bias, the other projections get zero biases (the same function).
  """
  V, D, N, K, H, F, L = (c.vocab_size, c.d_model, c.n_heads, c.kv_heads, c.head_dim, c.ff_dim,
                         c.n_layers)
  attention_bias = bool(value(hf, "attention_bias", False))
  mlp_bias = bool(value(hf, "mlp_bias", False))
  pre = "model." if t.has("model.embed_tokens.weight") else ""  # LlamaModel saves no prefix

  def linear(name, n_out, n_in):  # (out, in) -> (in, out)
    return t.take(f"{name}.weight", (n_out, n_in)).T

  def bias(name, n, present):
    return t.take(f"{name}.bias", (n,)) if present else np.zeros((n,), np.float32)

  def layer(i):
    s, m = f"{pre}layers.{i}.self_attn.", f"{pre}layers.{i}.mlp."
    attn = {"wq": linear(s + "q_proj", N * H, D).reshape(D, N, H),
            "wk": linear(s + "k_proj", K * H, D).reshape(D, K, H),
            "wv": linear(s + "v_proj", K * H, D).reshape(D, K, H),
            "wo": linear(s + "o_proj", D, N * H).reshape(N, H, D)}
    mlp = {"w_gate": linear(m + "gate_proj", F, D), "w_in": linear(m + "up_proj", F, D),
           "w_out": linear(m + "down_proj", D, F)}
    if c.use_bias:
      attn.update(bq=bias(s + "q_proj", N * H, attention_bias).reshape(N, H),
                  bk=bias(s + "k_proj", K * H, attention_bias).reshape(K, H),
                  bv=bias(s + "v_proj", K * H, attention_bias).reshape(K, H),
                  bo=bias(s + "o_proj", D, attention_bias))
      mlp.update(b_gate=bias(m + "gate_proj", F, mlp_bias), b_in=bias(m + "up_proj", F, mlp_bias),
                 b_out=bias(m + "down_proj", D, mlp_bias))
    return {"attn_norm": {"scale": t.take(f"{pre}layers.{i}.input_layernorm.weight", (D,))},
            "attn": attn,
            "mlp_norm": {"scale": t.take(f"{pre}layers.{i}.post_attention_layernorm.weight", (D,))},
            "mlp": mlp}

  params = {"embed": t.take(pre + "embed_tokens.weight", (V, D)),
            "layers": jax.tree.map(lambda *x_L: np.stack(x_L), *map(layer, range(L))),
            "final_norm": {"scale": t.take(pre + "norm.weight", (D,))}}
  return params


def params_to_hf(params: dict, c: ModelConfig) -> dict[str, np.ndarray]:
  """HF tensor name -> array for LlamaForCausalLM (hf.to_hf adds an untied lm_head)."""
  D = c.d_model
  lay = params["layers"]
  a, m = lay["attn"], lay["mlp"]
  out = {"model.embed_tokens.weight": params["embed"],
         "model.norm.weight": params["final_norm"]["scale"]}
  for i in range(c.n_layers):
    s, p = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
    out[f"model.layers.{i}.input_layernorm.weight"] = lay["attn_norm"]["scale"][i]
    out[f"model.layers.{i}.post_attention_layernorm.weight"] = lay["mlp_norm"]["scale"][i]
    for proj, w in (("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv")):
      out[s + proj + ".weight"] = a[w][i].reshape(D, -1).T
    out[s + "o_proj.weight"] = a["wo"][i].reshape(-1, D).T
    for proj, w in (("gate_proj", "w_gate"), ("up_proj", "w_in"), ("down_proj", "w_out")):
      out[p + proj + ".weight"] = m[w][i].T
    if c.use_bias:
      for proj, b in (("q_proj", "bq"), ("k_proj", "bk"), ("v_proj", "bv"), ("o_proj", "bo")):
        out[s + proj + ".bias"] = a[b][i].reshape(-1)
      for proj, b in (("gate_proj", "b_gate"), ("up_proj", "b_in"), ("down_proj", "b_out")):
        out[p + proj + ".bias"] = m[b][i]
  return out
