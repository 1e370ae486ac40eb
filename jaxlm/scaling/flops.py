"""Parameter and training-FLOP accounting from a model config, under a named convention.

Two conventions, and every result says which one it used:
  "6ND"    C = 6·N·D with N the total parameter count (Kaplan et al. 2020, eq. 2.1;
           Hoffmann et al. 2022 use total parameters, embeddings included).
  "exact"  the forward + backward count of Hoffmann et al. 2022, appendix F, which
           counts every matrix multiply including attention's and ignores the
           element-wise work of norms, biases and nonlinearities.
"""

from __future__ import annotations

from jaxlm.config import ModelConfig
from jaxlm.models import transformer

CONVENTIONS = ("6ND", "exact")


# Total and non-embedding parameters; derived from the model's spec tree, as init is.
params = transformer.param_count


def forward_flops_per_sequence(model: ModelConfig, seq_len: int) -> dict[str, float]:
  """Forward-pass FLOPs of one sequence, term by term, as in Chinchilla's appendix F.

  One multiply-add is 2 FLOPs. With T = seq_len, D = d_model, V = vocab, L = layers:
    embeddings  2·T·V·D (the lookup counted as a one-hot matmul, as the paper does)
    attention   per layer: Q/K/V projections 2·T·D·(N+2K)·H, logits 2·T²·N·H,
                softmax 3·N·T², softmax@V 2·T²·N·H, output projection 2·T·N·H·D
    dense       per layer: 2·T·D·F per weight matrix (2 for GELU, 3 for SwiGLU)
    logits      2·T·D·V
  The paper has multi-head attention (K = N) and two MLP matrices; grouped-query
  K < N and SwiGLU's third matrix are the natural extensions. Causal masking is
  not discounted, following the paper (PaLM-style MFU accounting halves it).
  """
  c = model
  T, D, V, L = seq_len, c.d_model, c.vocab_size, c.n_layers
  N, K, H, F = c.n_heads, c.kv_heads, c.head_dim, c.ff_dim
  n_mats = 3 if c.mlp == "swiglu" else 2
  attention = (2 * T * D * (N + 2 * K) * H + 2 * T * T * N * H + 3 * N * T * T
               + 2 * T * T * N * H + 2 * T * N * H * D)
  terms = {
      "embeddings": 2.0 * T * V * D,
      "attention": float(L * attention),
      "dense": float(L * n_mats * 2 * T * D * F),
      "logits": 2.0 * T * D * V,
  }
  terms["total"] = sum(terms.values())
  return terms


def training_flops(model: ModelConfig, seq_len: int, tokens: float,
                   convention: str = "exact") -> dict:
  """Training FLOPs for `tokens` tokens under `convention` ("6ND" or "exact").

  Returns {"flops", "convention", "params", "non_embedding_params"}. The exact
  count is forward + backward with the backward twice the forward (Chinchilla
  appendix F; Kaplan et al. 2020 section 2.1).
  """
  if convention not in CONVENTIONS:
    raise ValueError(f"flops convention {convention!r} is invalid: expected one of "
                     f"{', '.join(CONVENTIONS)}")
  counts = params(model)
  if convention == "6ND":
    flops = 6.0 * counts["total"] * tokens
  else:
    flops = 3.0 * forward_flops_per_sequence(model, seq_len)["total"] / seq_len * tokens
  return {"flops": flops, "convention": convention, "params": counts["total"],
          "non_embedding_params": counts["non_embedding"]}
