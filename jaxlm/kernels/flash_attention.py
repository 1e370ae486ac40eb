"""Flash attention in Pallas: blockwise online softmax forward, recomputing backward.

Dimension legend: B batch, T query length, S key length, N query heads, K key/value
heads, G = N // K query heads per kv head, H head dim; a trailing `p` marks a padded
size (Tp, Sp, Hp).

The forward keeps a running max and sum per query row (FlashAttention-2, Dao 2023,
https://arxiv.org/abs/2307.08691) and saves the log-sum-exp; the backward recomputes
the probabilities from it, with one kernel for dk and dv (looping over the G query
heads that share a kv head, so K and V are never copied per head) and one for dq.
Softmax runs in base 2 (exp2 of scores scaled by log2(e)), and the saved log-sum-exp
is in base 2 too. Kv blocks that causality hides are skipped, and masks are applied
only to the blocks that need them.

Variants: the GPU kernel below (Triton lowering), the TPU kernel in
flash_attention_tpu.py (Mosaic), and on CPU the GPU kernel in interpret mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Older jax named the Triton compiler params TritonCompilerParams (renamed in 0.6.2).
_GpuCompilerParams = getattr(plgpu, "CompilerParams", None) or getattr(
    plgpu, "TritonCompilerParams")

# Large but finite, like attention._MASKED: a row whose keys are all masked sees
# equal scores rather than exp(-inf - -inf) = NaN.
MASK = -0.7 * float(jnp.finfo(jnp.float32).max)
LOG2E = math.log2(math.e)
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 128
BACKENDS = ("gpu", "tpu", "cpu")

NN = ((1,), (0,))  # a @ b
NT = ((1,), (1,))  # a @ b.T
TN = ((0,), (0,))  # a.T @ b


@dataclasses.dataclass(frozen=True)
class Tuning:
  """Block sizes (powers of two, >= 16) and Triton launch parameters."""
  block_q: int = 128       # forward query block
  block_k: int = 64        # forward key block
  block_q_dkv: int = 64    # dk/dv kernel: query block it loops over
  block_k_dkv: int = 64    # dk/dv kernel: key block it owns
  block_q_dq: int = 64     # dq kernel: query block it owns
  block_k_dq: int = 64     # dq kernel: key block it loops over
  num_warps: int = 0       # 0: 4 for head dim <= 64, else 8 (GPU only)
  num_stages: int = 2      # software pipelining depth (GPU only)


def default_tuning(backend: str, dtype=jnp.bfloat16) -> Tuning:
  """Defaults per backend and dtype; the GPU ones are a starting point for an H100 sweep."""
  if backend == "tpu":
    return Tuning(128, 128, 128, 128, 128, 128)
  if jnp.dtype(dtype).itemsize == 4:
    # float32 tiles are twice the bytes: halve them to stay inside shared memory.
    return Tuning(64, 32, 32, 32, 32, 32)
  return Tuning()


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


@dataclasses.dataclass(frozen=True)
class Config:
  """Static description of one call, shared by the GPU and TPU kernels."""
  causal: bool
  sm_scale: float
  q_len: int       # T before padding
  kv_len: int      # S before padding
  tuning: Tuning   # block sizes already clamped to the padded lengths
  variant: str     # "gpu" or "tpu"
  interpret: bool

  @property
  def offset(self) -> int:
    """Causal alignment of the ends: query t sees keys s <= t + offset."""
    return self.kv_len - self.q_len


def _pow2_at_least_16(n: int) -> int:
  return max(16, pl.next_power_of_2(n))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _segments(segment_ids, B, T, S):
  if segment_ids is None:
    return None
  if isinstance(segment_ids, (tuple, list)):
    q_seg, kv_seg = segment_ids
  else:
    if T != S:
      raise ValueError(f"segment_ids as one array needs T == S, got T={T}, S={S}; "
                       "pass (query_segment_ids, kv_segment_ids)")
    q_seg = kv_seg = segment_ids
  for name, seg, L in (("query", q_seg, T), ("kv", kv_seg, S)):
    if seg.shape != (B, L):
      raise ValueError(f"{name} segment ids must be (B, {L}) = {(B, L)}, got {seg.shape}")
  return q_seg.astype(jnp.int32), kv_seg.astype(jnp.int32)


def flash_attention(q_BTNH, k_BSKH, v_BSKH, *, is_causal=False, segment_ids=None,
                    scale=None, backend=None, interpret=None, **tuning):
  """Pallas flash attention, numerically the same as attention.xla_attention.

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
  segs = _segments(segment_ids, B, T, S)
  sm_scale = H ** -0.5 if scale is None else float(scale)
  cfg = Config(bool(is_causal), sm_scale, T, S, t, variant, bool(interpret))

  # Pad to whole blocks (masked as keys, sliced off as queries) and the head dim to
  # a power of two >= 16, the smallest shape Triton's dot accepts; zero columns
  # change no score.
  Tp = _round_up(T, max(t.block_q, t.block_q_dkv, t.block_q_dq))
  Sp = _round_up(S, max(t.block_k, t.block_k_dkv, t.block_k_dq))
  Hp = _pow2_at_least_16(H)
  pad = lambda x, L, Lp: jnp.pad(x, ((0, 0), (0, Lp - L), (0, 0), (0, Hp - H)))
  q, k, v = pad(q_BTNH, T, Tp), pad(k_BSKH, S, Sp), pad(v_BSKH, S, Sp)
  if segs is not None:
    segs = (jnp.pad(segs[0], ((0, 0), (0, Tp - T)), constant_values=-1),
            jnp.pad(segs[1], ((0, 0), (0, Sp - S)), constant_values=-1))
  o_BTpNHp, lse_BNTp = _flash(q, k, v, segs, cfg)
  o_BTNH = o_BTpNHp[:, :T, :, :H]

  # A query that sees no key at all (causal with T > S, or cross-attention segments)
  # gets the mean of all values in the reference, whose masked scores are all equal.
  if (is_causal and T > S) or isinstance(segment_ids, (tuple, list)):
    G = N // K
    empty_BTKG1 = (lse_BNTp[:, :, :T] == jnp.inf).transpose(0, 2, 1).reshape(B, T, K, G, 1)
    mean_B1K1H = v_BSKH.astype(jnp.float32).mean(axis=1)[:, None, :, None, :]
    o_BTKGH = jnp.where(empty_BTKG1, mean_B1K1H.astype(o_BTNH.dtype),
                        o_BTNH.reshape(B, T, K, G, H))
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
  qcap, kcap = _pow2_at_least_16(T), _pow2_at_least_16(S)
  return dataclasses.replace(
      t, block_q=min(t.block_q, qcap), block_k=min(t.block_k, kcap),
      block_q_dkv=min(t.block_q_dkv, qcap), block_k_dkv=min(t.block_k_dkv, kcap),
      block_q_dq=min(t.block_q_dq, qcap), block_k_dq=min(t.block_k_dq, kcap))


def _kernels(cfg: Config):
  if cfg.variant == "tpu":
    from jaxlm.kernels import flash_attention_tpu  # pylint: disable=import-outside-toplevel
    return flash_attention_tpu.forward, flash_attention_tpu.backward
  return _gpu_forward, _gpu_backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, segs, cfg):
  return _kernels(cfg)[0](q, k, v, segs, cfg)


def _flash_fwd(q, k, v, segs, cfg):
  o, lse = _kernels(cfg)[0](q, k, v, segs, cfg)
  return (o, lse), (q, k, v, segs, o, lse)


def _flash_bwd(cfg, res, cotangents):
  q, k, v, segs, o, lse = res
  do, _ = cotangents  # lse only marks empty rows; it carries no gradient
  # delta_i = sum_h o_ih do_ih = sum_j p_ij dp_ij: the softmax Jacobian's row term.
  delta_BNT = jnp.einsum("btnh,btnh->bnt", o.astype(jnp.float32), do.astype(jnp.float32))
  dq, dk, dv = _kernels(cfg)[1](q, k, v, segs, do.astype(q.dtype), lse, delta_BNT, cfg)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------------
# Block bounds and shared math (plain jnp, so the TPU kernel reuses them).


def kv_range(i, bq, bk, nk, cfg: Config):
  """For query block i: kv blocks [0, full) need no position mask, [full, hi) do."""
  n_real = cfg.kv_len // bk
  if not cfg.causal:
    return n_real, nk
  r0 = i * bq
  full = jnp.minimum(lax.div(jnp.maximum(r0 + cfg.offset + 1, 0), bk), n_real)
  hi = jnp.minimum(lax.div(jnp.maximum(r0 + bq + cfg.offset, 0) + bk - 1, bk), nk)
  return jnp.minimum(full, hi), hi


def q_range(j, bq, bk, nq, cfg: Config):
  """For kv block j: query blocks [lo, mid) need the causal mask, [mid, nq) don't."""
  if not cfg.causal:
    return 0, 0
  lo = jnp.minimum(lax.div(jnp.maximum(j * bk - cfg.offset, 0), bq), nq)
  mid = lax.div(jnp.maximum((j + 1) * bk - 1 - cfg.offset, 0) + bq - 1, bq)
  return lo, jnp.clip(mid, lo, nq)


def dot(a, b, dims):
  """2-D matmul with float32 accumulation; dims is NN, NT or TN."""
  return lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32)


def scores(q, k, q_pos, kv_pos, q_ids, kv_ids, cfg: Config, positional: bool):
  """Masked scores in base 2; positional adds the causal and padded-key masks."""
  s = dot(q, k, NT) * (cfg.sm_scale * LOG2E)
  mask = None
  if positional:
    mask = kv_pos[None, :] < cfg.kv_len
    if cfg.causal:
      mask = mask & (kv_pos[None, :] <= q_pos[:, None] + cfg.offset)
  if q_ids is not None:
    same = q_ids[:, None] == kv_ids[None, :]
    mask = same if mask is None else mask & same
  return s if mask is None else jnp.where(mask, s, MASK)


def finish(acc, m, l):
  """Output and base-2 log-sum-exp; a row that saw no unmasked key gets 0 and +inf."""
  empty = m < 0.5 * MASK
  l_safe = jnp.where(empty, 1.0, l)
  o = jnp.where(empty[:, None], 0.0, acc / l_safe[:, None])
  return o, jnp.where(empty, jnp.inf, m + jnp.log2(l_safe))


# ----------------------------------------------------------------------------------
# GPU kernels (Triton lowering). Each program owns one block and loops over the other
# axis with lax.fori_loop; K and V (or Q and dO) of one head stay in HBM as whole
# sequences and are sliced per iteration.


def _block_index(pid, n, causal):
  # Causal query blocks near the end have the most keys: launch them first so the
  # short ones fill the tail of the schedule.
  return n - 1 - pid if causal else pid


def _fwd_kernel(q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, o_ref, lse_ref, *, cfg, nq, nk):
  bq, bk = cfg.tuning.block_q, cfg.tuning.block_k
  i = _block_index(pl.program_id(0), nq, cfg.causal)
  q = q_ref[...]
  q_pos = i * bq + jnp.arange(bq)
  q_ids = None if qseg_ref is None else qseg_ref[...]

  def body(j, carry, positional):
    acc, m, l = carry
    rows = pl.ds(j * bk, bk)
    kv_ids = None if kvseg_ref is None else kvseg_ref[rows]
    s = scores(q, k_ref[rows, :], q_pos, j * bk + jnp.arange(bk), q_ids, kv_ids, cfg,
               positional)
    m_new = jnp.maximum(m, s.max(axis=1))
    alpha = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    v = v_ref[rows, :]
    acc = acc * alpha[:, None] + dot(p.astype(v.dtype), v, NN)
    return acc, m_new, alpha * l + p.sum(axis=1)

  full, hi = kv_range(i, bq, bk, nk, cfg)
  carry = (jnp.zeros((bq, q.shape[-1]), jnp.float32),
           jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32))
  carry = lax.fori_loop(0, full, functools.partial(body, positional=False), carry)
  if cfg.causal or cfg.kv_len % bk:
    carry = lax.fori_loop(full, hi, functools.partial(body, positional=True), carry)
  o, lse = finish(*carry)
  o_ref[...] = o.astype(o_ref.dtype)
  lse_ref[...] = lse


def _dq_kernel(q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref, delta_ref, dq_ref,
               *, cfg, nq, nk):
  bq, bk = cfg.tuning.block_q_dq, cfg.tuning.block_k_dq
  i = _block_index(pl.program_id(0), nq, cfg.causal)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_pos = i * bq + jnp.arange(bq)
  q_ids = None if qseg_ref is None else qseg_ref[...]

  def body(j, dq, positional):
    rows = pl.ds(j * bk, bk)
    kv_ids = None if kvseg_ref is None else kvseg_ref[rows]
    k = k_ref[rows, :]
    s = scores(q, k, q_pos, j * bk + jnp.arange(bk), q_ids, kv_ids, cfg, positional)
    p = jnp.exp2(s - lse[:, None])
    ds = p * (dot(do, v_ref[rows, :], NT) - delta[:, None])
    return dq + dot(ds.astype(k.dtype), k, NN)

  full, hi = kv_range(i, bq, bk, nk, cfg)
  dq = jnp.zeros(q.shape, jnp.float32)
  dq = lax.fori_loop(0, full, functools.partial(body, positional=False), dq)
  if cfg.causal or cfg.kv_len % bk:
    dq = lax.fori_loop(full, hi, functools.partial(body, positional=True), dq)
  dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref, delta_ref, dk_ref,
                dv_ref, *, cfg, nq, G):
  bq, bk = cfg.tuning.block_q_dkv, cfg.tuning.block_k_dkv
  j = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]
  kv_pos = j * bk + jnp.arange(bk)
  kv_ids = None if kvseg_ref is None else kvseg_ref[...]

  # Padded keys are left unmasked where no position mask is needed: their rows of
  # dk and dv are sliced off, and padded queries carry zero q and dO.
  def body(i, carry, g, positional):
    dk, dv = carry
    rows = pl.ds(i * bq, bq)
    q, do = q_ref[rows, g, :], do_ref[rows, g, :]
    q_ids = None if qseg_ref is None else qseg_ref[rows]
    s = scores(q, k, i * bq + jnp.arange(bq), kv_pos, q_ids, kv_ids, cfg, positional)
    p = jnp.exp2(s - lse_ref[g, rows][:, None])
    dv = dv + dot(p.astype(do.dtype), do, TN)
    ds = p * (dot(do, v, NT) - delta_ref[g, rows][:, None])
    return dk + dot(ds.astype(q.dtype), q, TN), dv

  lo, mid = q_range(j, bq, bk, nq, cfg)

  def head(g, carry):  # the G query heads that share this kv head
    if cfg.causal:
      carry = lax.fori_loop(lo, mid, functools.partial(body, g=g, positional=True), carry)
    return lax.fori_loop(mid, nq, functools.partial(body, g=g, positional=False), carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, G, head, (zeros, zeros))
  dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _compiler_params(cfg: Config, Hp: int):
  warps = cfg.tuning.num_warps or (4 if Hp <= 64 else 8)
  return _GpuCompilerParams(num_warps=warps, num_stages=cfg.tuning.num_stages)


def _seg_specs(segs, q_spec, kv_spec):
  if segs is None:
    return [None, None], [None, None]
  return [q_spec, kv_spec], list(segs)


def _gpu_forward(q, k, v, segs, cfg: Config):
  B, Tp, N, Hp = q.shape
  Sp, K = k.shape[1], k.shape[2]
  G, bq = N // K, cfg.tuning.block_q
  nq, nk = Tp // bq, Sp // cfg.tuning.block_k
  qi = lambda i: _block_index(i, nq, cfg.causal)
  kv_spec = pl.BlockSpec((None, Sp, None, Hp), lambda i, b, n: (b, 0, lax.div(n, G), 0))
  q_spec = pl.BlockSpec((None, bq, None, Hp), lambda i, b, n: (b, qi(i), n, 0))
  seg_specs, seg_args = _seg_specs(segs, pl.BlockSpec((None, bq), lambda i, b, n: (b, qi(i))),
                                   pl.BlockSpec((None, Sp), lambda i, b, n: (b, 0)))
  return pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg, nq=nq, nk=nk),
      grid=(nq, B, N),
      in_specs=[q_spec, kv_spec, kv_spec, *seg_specs],
      out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, qi(i)))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, N, Tp), jnp.float32)],
      compiler_params=_compiler_params(cfg, Hp),
      interpret=cfg.interpret,
      name="flash_attention_fwd",
  )(q, k, v, *seg_args)


def _gpu_backward(q, k, v, segs, do, lse, delta, cfg: Config):
  B, Tp, N, Hp = q.shape
  Sp, K = k.shape[1], k.shape[2]
  G, t = N // K, cfg.tuning

  # dk, dv: one program per (kv block, batch, kv head), looping over its G heads.
  bq, bk = t.block_q_dkv, t.block_k_dkv
  nq, nk = Tp // bq, Sp // bk
  qg_spec = pl.BlockSpec((None, Tp, None, G, Hp), lambda j, b, h: (b, 0, h, 0, 0))
  rowg_spec = pl.BlockSpec((None, None, G, Tp), lambda j, b, h: (b, h, 0, 0))
  kv_spec = pl.BlockSpec((None, bk, None, Hp), lambda j, b, h: (b, j, h, 0))
  seg_specs, seg_args = _seg_specs(segs, pl.BlockSpec((None, Tp), lambda j, b, h: (b, 0)),
                                   pl.BlockSpec((None, bk), lambda j, b, h: (b, j)))
  split = lambda x: x.reshape(B, Tp, K, G, Hp)
  rows = lambda x: x.reshape(B, K, G, Tp)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, nq=nq, G=G),
      grid=(nk, B, K),
      in_specs=[qg_spec, kv_spec, kv_spec, *seg_specs, qg_spec, rowg_spec, rowg_spec],
      out_specs=[kv_spec, kv_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
      compiler_params=_compiler_params(cfg, Hp),
      interpret=cfg.interpret,
      name="flash_attention_dkv",
  )(split(q), k, v, *seg_args, split(do), rows(lse), rows(delta))

  # dq: one program per (query block, batch, head), like the forward.
  bq = t.block_q_dq
  nq, nk = Tp // bq, Sp // t.block_k_dq
  qi = lambda i: _block_index(i, nq, cfg.causal)
  q_spec = pl.BlockSpec((None, bq, None, Hp), lambda i, b, n: (b, qi(i), n, 0))
  row_spec = pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, qi(i)))
  kv_spec = pl.BlockSpec((None, Sp, None, Hp), lambda i, b, n: (b, 0, lax.div(n, G), 0))
  seg_specs, seg_args = _seg_specs(segs, pl.BlockSpec((None, bq), lambda i, b, n: (b, qi(i))),
                                   pl.BlockSpec((None, Sp), lambda i, b, n: (b, 0)))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, nq=nq, nk=nk),
      grid=(nq, B, N),
      in_specs=[q_spec, kv_spec, kv_spec, *seg_specs, q_spec, row_spec, row_spec],
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_compiler_params(cfg, Hp),
      interpret=cfg.interpret,
      name="flash_attention_dq",
  )(q, k, v, *seg_args, do, lse, delta)
  return dq, dk, dv
