"""dot_product_attention(): one attention API over the XLA, cuDNN and Pallas implementations.

Dimension legend (docs/architecture.md): B batch, T query length, S key length,
N query heads, K key/value heads (N divisible by K), H head dim.

The implementations live in jaxlm/kernels/ (xla_attention.py, flash_attention.py,
each beside its jnp reference in reference.py); cuDNN is jax.nn's. This module
checks the call, picks the fastest implementation that serves it, and says why
a forced one cannot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlm import sharding
from jaxlm.kernels import flash_attention
from jaxlm.kernels.xla_attention import xla_attention

IMPLEMENTATIONS = ("xla", "cudnn", "pallas")


class AttentionUnsupportedError(ValueError):
  """The requested implementation cannot serve this call; the message says why."""


def _cudnn_unsupported(q, k, segment_ids) -> str:
  if sharding.platform() != "gpu":
    return f"it needs a GPU, and the backend is {sharding.platform()}"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"it needs bfloat16 or float16 inputs, got {q.dtype}"
  if segment_ids is not None:
    return "packed segment ids are not supported by this path; use xla or pallas"
  if q.shape[-1] % 8 or q.shape[-1] > 128:
    return f"head dim must be a multiple of 8 and at most 128, got {q.shape[-1]}"
  return ""


def choose(q, k, segment_ids=None) -> str:
  """The fastest implementation that serves this backend, dtype and shape."""
  if not _cudnn_unsupported(q, k, segment_ids):
    return "cudnn"
  # Pallas only on GPU (elsewhere it is interpreted or unverified) and for packed sequences,
  # which cuDNN cannot mask here (without segment ids cuDNN is expected to be faster).
  if (sharding.platform() == "gpu" and segment_ids is not None
      and not flash_attention.unsupported(q, k)):
    return "pallas"
  return "xla"


def dot_product_attention(q_BTNH, k_BSKH, v_BSKH, *, is_causal=False, segment_ids=None,
                          implementation=None, scale=None, return_max_logit=False):
  """Scaled dot-product attention, shaped like jax.nn.dot_product_attention.

  Args:
    q_BTNH: queries (B, T, N, H).
    k_BSKH, v_BSKH: keys and values (B, S, K, H); N must be divisible by K.
    is_causal: query t attends to keys s <= t (aligned at the end when S > T).
    segment_ids: (B, T) ids for self-attention, or a (query, kv) pair; tokens
      attend only within their own segment.
    implementation: None or "auto" (best available), "xla", "cudnn", "pallas".
    scale: multiplier of the scores q·k before the softmax; None: 1/sqrt(H)
      (μP uses ∝ 1/H: ModelConfig.attention_scale).
    return_max_logit: also return the largest score a query gives a key it may
      see (float32; training statistics); the xla implementation has it for
      free, the others give None.
  Returns:
    (B, T, N, H) attention output in the dtype of v; with return_max_logit,
    (output, largest score or None).
  """
  if q_BTNH.ndim != 4 or k_BSKH.ndim != 4 or v_BSKH.shape != k_BSKH.shape:
    raise ValueError(f"expected q (B,T,N,H) and k, v (B,S,K,H), got {q_BTNH.shape}, "
                     f"{k_BSKH.shape}, {v_BSKH.shape}")
  if q_BTNH.shape[2] % k_BSKH.shape[2]:
    raise ValueError(f"query heads {q_BTNH.shape[2]} not divisible by kv heads "
                     f"{k_BSKH.shape[2]}")
  if implementation in (None, "auto"):
    implementation = choose(q_BTNH, k_BSKH, segment_ids)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}: expected None, 'auto' or one of "
                     f"{', '.join(IMPLEMENTATIONS)}")
  kw = dict(is_causal=is_causal, segment_ids=segment_ids, scale=scale)
  if implementation == "xla":
    return xla_attention(q_BTNH, k_BSKH, v_BSKH, return_max_logit=return_max_logit, **kw)
  why = (_cudnn_unsupported(q_BTNH, k_BSKH, segment_ids) if implementation == "cudnn"
         else flash_attention.unsupported(q_BTNH, k_BSKH, v_BSKH))
  if why:
    raise AttentionUnsupportedError(f"{implementation} attention cannot serve this call: {why}")
  if implementation == "cudnn":
    out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, is_causal=is_causal,
                                            scale=scale, implementation="cudnn")
  else:
    # On CPU this runs the GPU kernel in the Pallas interpreter: exact but slow. The platform
    # is the mesh's: compiling for a TPU topology from a CPU builds the Mosaic kernel.
    platform = sharding.platform()
    out_BTNH = flash_attention.flash_attention(q_BTNH, k_BSKH, v_BSKH, **kw, backend=platform,
                                               interpret=platform not in ("gpu", "tpu"))
  return (out_BTNH, None) if return_max_logit else out_BTNH
