"""Flash attention in Pallas: blockwise online softmax forward, recomputing backward.

Dimension legend (docs/architecture.md): B batch, T query length, S key length,
N query heads, K key/value heads, G = N // K query heads per kv head, H head
dim; a trailing `p` marks a padded size (Tp, Sp, Hp).

The forward keeps a running max and sum per query row (FlashAttention-2, Dao 2023,
https://arxiv.org/abs/2307.08691) and saves the log-sum-exp; the backward recomputes
the probabilities from it, with one kernel for dk and dv (looping over the G query
heads that share a kv head, so K and V are never copied per head) and one for dq.
Softmax runs in base 2 (exp2 of scores scaled by log2(e)), and the saved log-sum-exp
is in base 2 too. Kv blocks that causality hides are skipped, and masks are applied
only to the blocks that need them.

This module is the entry point: input checks, padding to whole blocks, and the
custom VJP over the two variants, flash_attention_gpu.py (Triton; on CPU the same
kernels interpreted) and flash_attention_tpu.py (Mosaic). What they share is in
flash_blocks.py; the jnp reference they are tested against is reference.py.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxlm.kernels import flash_attention_gpu, flash_attention_tpu
from jaxlm.kernels.flash_blocks import Config, Tuning, default_tuning, pow2_at_least_16, round_up
from jaxlm.kernels.reference import split_segments

__all__ = ["flash_attention", "unsupported", "Tuning", "default_tuning"]

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 128
BACKENDS = ("gpu", "tpu", "cpu")
# Each kernel variant's module: its forward and backward.
_VARIANTS = {"gpu": flash_attention_gpu, "tpu": flash_attention_tpu}


def unsupported(q, k, v=None, backend: str | None = None) -> str:
  """Why the Pallas kernels cannot serve these inputs, or "" if they can."""
  backend = backend or jax.default_backend()
  if backend not in BACKENDS:
    return f"no Pallas flash attention for backend {backend!r}; expected one of {BACKENDS}"
  dtypes = {jnp.dtype(x.dtype) for x in (q, k, v) if x is not None}
  if len(dtypes) != 1:
    return f"q, k and v must share one dtype, got {sorted(map(str, dtypes))}"
  if q.dtype not in DTYPES:
    return f"dtype must be float32, bfloat16 or float16, got {q.dtype}"
  if q.shape[-1] > MAX_HEAD_DIM:
    return f"head dim must be at most {MAX_HEAD_DIM}, got {q.shape[-1]}"
  return ""


def flash_attention(q_BTNH, k_BSKH, v_BSKH, *, is_causal=False, segment_ids=None,
                    scale=None, backend=None, interpret=None, **tuning):
  """Pallas flash attention, numerically the same as reference.reference_attention.

  Args:
    q_BTNH, k_BSKH, v_BSKH: queries (B, T, N, H), keys and values (B, S, K, H).
    is_causal: query t sees keys s <= t + S - T.
    segment_ids: (B, T) ids for self-attention or a (query, kv) pair.
    scale: multiplier of the scores q·k; None: 1/sqrt(H).
    backend: "gpu" (Triton kernel), "tpu" (Mosaic kernel) or "cpu" (the GPU kernel
      interpreted); default jax.default_backend().
    interpret: run the kernel in the Pallas interpreter; default: when the kernel's
      platform is not the default backend.
    **tuning: overrides of Tuning fields, e.g. block_q=64, num_warps=4.
  Returns:
    (B, T, N, H) in the dtype of q.
  """
  if (q_BTNH.ndim != 4 or k_BSKH.ndim != 4 or v_BSKH.shape != k_BSKH.shape
      or k_BSKH.shape[0] != q_BTNH.shape[0] or k_BSKH.shape[3] != q_BTNH.shape[3]
      or q_BTNH.shape[2] % k_BSKH.shape[2]):
    raise ValueError(f"expected q (B,T,N,H) and k, v (B,S,K,H) with N divisible by K, got "
                     f"{q_BTNH.shape}, {k_BSKH.shape}, {v_BSKH.shape}")
  backend = backend or jax.default_backend()
  why = unsupported(q_BTNH, k_BSKH, v_BSKH, backend)
  if why:
    raise ValueError(f"pallas flash attention: {why}")
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  variant = "tpu" if backend == "tpu" else "gpu"
  if interpret is None:
    interpret = jax.default_backend() != variant
  t = _resolve_tuning(default_tuning(variant, q_BTNH.dtype), tuning, T, S)
  # Pad to whole blocks (masked as keys, sliced off as queries) and the head dim to
  # a power of two >= 16, the smallest shape Triton's dot accepts; zero columns
  # change no score.
  Tp = round_up(T, max(t.block_q, t.block_q_dkv, t.block_q_dq))
  Sp = round_up(S, max(t.block_k, t.block_k_dkv, t.block_k_dq))
  Hp = pow2_at_least_16(H)
  segs = None
  if segment_ids is not None:
    segs = tuple(x.astype(jnp.int32) for x in split_segments(segment_ids, T, S))
    if any(x.shape[0] != B for x in segs):
      raise ValueError(f"segment ids must have the batch size {B} of q, got "
                       f"{[x.shape for x in segs]}")
    segs = tuple(jnp.pad(x, ((0, 0), (0, Lp - L)), constant_values=-1)
                 for x, L, Lp in zip(segs, (T, S), (Tp, Sp)))
  sm_scale = H ** -0.5 if scale is None else float(scale)
  cfg = Config(bool(is_causal), sm_scale, T, S, t, variant, bool(interpret))
  pad = lambda x, L, Lp: jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, Hp - H)))
  q, k, v = pad(q_BTNH, T, Tp), pad(k_BSKH, S, Sp), pad(v_BSKH, S, Sp)
  o_BTpNHp, lse_BNTp = _flash(q, k, v, segs, cfg)
  o_BTNH = o_BTpNHp[:, :T, :, :H]

  # A query that sees no key at all (causal with T > S, or cross-attention segments)
  # gets the mean of all values in the reference, whose masked scores are all equal.
  if (is_causal and T > S) or isinstance(segment_ids, (tuple, list)):
    G = N // K
    empty_BTKG1 = (lse_BNTp[:, :, :T] == jnp.inf).transpose(0, 2, 1).reshape(B, T, K, G, 1)
    mean_B1K1H = v_BSKH.astype(jnp.float32).mean(axis=1)[:, None, :, None, :]
    o_BTKGH = jnp.where(empty_BTKG1, mean_B1K1H.astype(o_BTNH.dtype), o_BTNH.reshape(B, T, K, G, H))
    o_BTNH = o_BTKGH.reshape(B, T, N, H)
  return o_BTNH


def _resolve_tuning(base: Tuning, overrides: dict, T: int, S: int) -> Tuning:
  names = [f.name for f in dataclasses.fields(Tuning)]
  for key, value in overrides.items():
    if key not in names:
      raise ValueError(f"unknown tuning keyword {key!r}; expected one of {names}")
    if key.startswith("block_") and (value < 16 or value & (value - 1)):
      raise ValueError(f"{key}={value}: expected a power of two >= 16")
  t = dataclasses.replace(base, **overrides)
  # A block never needs to be longer than the (power-of-two-rounded) sequence.
  cap = {"q": pow2_at_least_16(T), "k": pow2_at_least_16(S)}
  return dataclasses.replace(t, **{n: min(getattr(t, n), cap[n.split("_")[1]])
                                   for n in names if n.startswith("block_")})


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, segs, cfg):
  return _VARIANTS[cfg.variant].forward(q, k, v, segs, cfg)


def _flash_fwd(q, k, v, segs, cfg):
  o, lse = _VARIANTS[cfg.variant].forward(q, k, v, segs, cfg)
  return (o, lse), (q, k, v, segs, o, lse)


def _flash_bwd(cfg, res, cotangents):
  q, k, v, segs, o, lse = res
  do, _ = cotangents  # lse only marks empty rows; it carries no gradient
  # delta_i = sum_h o_ih do_ih = sum_j p_ij dp_ij: the softmax Jacobian's row term.
  delta_BNT = jnp.einsum("btnh,btnh->bnt", o.astype(jnp.float32), do.astype(jnp.float32))
  dq, dk, dv = _VARIANTS[cfg.variant].backward(q, k, v, segs, do.astype(q.dtype), lse,
                                               delta_BNT, cfg)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)
