"""GPT-2 (transformers' GPT2LMHeadModel) and jaxlm: config keys and parameter layouts.

Dimension legend (docs/architecture.md): V vocab, P positions, D model
width, N heads, H head dim, F MLP width, L layers.

GPT-2 keeps its projections as Conv1D, whose weights are (in, out) like
jaxlm's: `c_attn` is (D, 3D) with q, k and v side by side along the output,
`c_proj` (N*H, D). Its MLP is gelu_new, the tanh approximation of GELU that
jaxlm's gelu computes (jax.nn.gelu(approximate=True)).
"""

from __future__ import annotations

import jax
import numpy as np

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.convert.hf_config import expect, positive, require_model, value

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel"}
# Causal-mask buffers that transformers < 4.30 saved with the weights; not parameters.
IGNORED = (".attn.bias", ".attn.masked_bias")
_WHAT = "GPT-2 (GPT2LMHeadModel)"


def config_from_hf(hf: dict) -> ModelConfig:
  """The jaxlm model config of a GPT-2 config.json; an error naming any unsupported key."""
  expect(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new", _WHAT)
  expect(hf, "scale_attn_weights", (True,), True, _WHAT)
  expect(hf, "scale_attn_by_inverse_layer_idx", (False,), False, _WHAT)
  expect(hf, "add_cross_attention", (False,), False, _WHAT)
  D, N = positive(hf, "n_embd"), positive(hf, "n_head")
  if D % N:
    raise ConfigError(f"config.json n_head={N} is invalid: expected a divisor of n_embd={D}")
  return ModelConfig(
      vocab_size=positive(hf, "vocab_size"), d_model=D, n_layers=positive(hf, "n_layer"),
      n_heads=N, d_ff=value(hf, "n_inner", 4 * D), max_seq_len=positive(hf, "n_positions"),
      positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
      tie_embeddings=bool(value(hf, "tie_word_embeddings", True)),
      norm_eps=float(value(hf, "layer_norm_epsilon", 1e-5)),
      init_std=float(value(hf, "initializer_range", 0.02)))


def config_to_hf(c: ModelConfig) -> dict:
  """A minimal GPT2LMHeadModel config.json for a jaxlm model config with learned positions."""
  arch = ARCHITECTURES["gpt2"]
  require_model(c, arch, positions="learned", norm="layernorm", mlp="gelu", n_kv_heads=c.n_heads,
                qk_norm=False)
  return {
      "architectures": [arch], "model_type": "gpt2", "vocab_size": c.vocab_size,
      "n_positions": c.max_seq_len, "n_embd": c.d_model, "n_layer": c.n_layers,
      "n_head": c.n_heads, "n_inner": c.ff_dim, "activation_function": "gelu_new",
      "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
      "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
      "reorder_and_upcast_attn": False, "add_cross_attention": False,
      # jaxlm trains without dropout; GPT-2's default is 0.1.
      "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
      "initializer_range": c.init_std,
  }


def params_from_hf(t, c: ModelConfig, hf: dict) -> dict:
  """jaxlm params (numpy, stacked over layers; hf.read_hf adds the untied unembedding) from
  HF tensors `t` (has(), take(name, shape))."""
  del hf  # every GPT-2 option that changes the weights is checked by config_from_hf
  V, P, D, N, H, F, L = (c.vocab_size, c.max_seq_len, c.d_model, c.n_heads, c.head_dim,
                         c.ff_dim, c.n_layers)
  # GPT2LMHeadModel saves "transformer.h.0...", GPT2Model (e.g. the original gpt2) "h.0...".
  pre = "transformer." if t.has("transformer.wte.weight") else ""

  def norm(name):
    return {"scale": t.take(f"{name}.weight", (D,)), "bias": t.take(f"{name}.bias", (D,))}

  def layer(i):
    h = f"{pre}h.{i}."
    w_q_k_v = np.split(t.take(h + "attn.c_attn.weight", (D, 3 * D)), 3, axis=1)
    b_q_k_v = np.split(t.take(h + "attn.c_attn.bias", (3 * D,)), 3)
    attn = {f"w{x}": w_DD.reshape(D, N, H) for x, w_DD in zip("qkv", w_q_k_v)}
    attn.update({f"b{x}": b_D.reshape(N, H) for x, b_D in zip("qkv", b_q_k_v)})
    attn["wo"] = t.take(h + "attn.c_proj.weight", (D, D)).reshape(N, H, D)
    attn["bo"] = t.take(h + "attn.c_proj.bias", (D,))
    mlp = {"w_in": t.take(h + "mlp.c_fc.weight", (D, F)), "b_in": t.take(h + "mlp.c_fc.bias", (F,)),
           "w_out": t.take(h + "mlp.c_proj.weight", (F, D)),
           "b_out": t.take(h + "mlp.c_proj.bias", (D,))}
    return {"attn_norm": norm(h + "ln_1"), "attn": attn, "mlp_norm": norm(h + "ln_2"),
            "mlp": mlp}

  params = {"embed": t.take(pre + "wte.weight", (V, D)),
            "pos_embed": t.take(pre + "wpe.weight", (P, D)),
            "layers": jax.tree.map(lambda *x_L: np.stack(x_L), *map(layer, range(L))),
            "final_norm": norm(pre + "ln_f")}
  return params


def params_to_hf(params: dict, c: ModelConfig) -> dict[str, np.ndarray]:
  """HF tensor name -> array for GPT2LMHeadModel (hf.to_hf adds an untied lm_head); a model
  without biases gets zero biases."""
  D, F = c.d_model, c.ff_dim
  lay = params["layers"]
  a, m = lay["attn"], lay["mlp"]
  zero = lambda n: np.zeros((n,), params["embed"].dtype)
  bias = lambda tree, key, i, n: tree[key][i].reshape(n) if key in tree else zero(n)
  out = {"transformer.wte.weight": params["embed"], "transformer.wpe.weight": params["pos_embed"],
         "transformer.ln_f.weight": params["final_norm"]["scale"],
         "transformer.ln_f.bias": params["final_norm"]["bias"]}
  for i in range(c.n_layers):
    h = f"transformer.h.{i}."
    for hf_name, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
      out[h + hf_name + ".weight"] = lay[ours]["scale"][i]
      out[h + hf_name + ".bias"] = lay[ours]["bias"][i]
    out[h + "attn.c_attn.weight"] = np.concatenate([a[w][i].reshape(D, D)
                                                    for w in ("wq", "wk", "wv")], axis=1)
    out[h + "attn.c_attn.bias"] = np.concatenate([bias(a, b, i, D) for b in ("bq", "bk", "bv")])
    out[h + "attn.c_proj.weight"] = a["wo"][i].reshape(D, D)
    out[h + "attn.c_proj.bias"] = bias(a, "bo", i, D)
    out[h + "mlp.c_fc.weight"] = m["w_in"][i]
    out[h + "mlp.c_fc.bias"] = bias(m, "b_in", i, F)
    out[h + "mlp.c_proj.weight"] = m["w_out"][i]
    out[h + "mlp.c_proj.bias"] = bias(m, "b_out", i, D)
  return out

