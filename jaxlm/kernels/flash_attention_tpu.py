"""TPU (Mosaic) variant of the flash attention kernels (entry point: flash_attention.py).

Same math and conventions (base-2 scores, saved base-2 log-sum-exp, +inf for rows
that see no key), laid out for the TPU: heads before length (B, N, T, H), the kv
loop is the innermost grid axis ("arbitrary") with running statistics in VMEM
scratch, and per-row vectors are replicated across the 128 lanes. Blocks hidden by
causality are skipped with pl.when, and their index maps repeat the previous block
so that no copy is issued for them.

Dimension legend (docs/architecture.md): B batch, T query length, S key length,
N query heads, K kv heads, G = N // K, H head dim, W the 128 lanes a per-row
vector is replicated over; a trailing `p` marks a padded size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxlm.kernels import flash_blocks as fb
from jaxlm.kernels.reference import MASKED

LANES = 128    # per-row vectors (m, l, lse, delta, query segment ids) span the lanes
SUBLANES = 8   # kv segment ids span the sublanes


def _scores(q, k, i, j, qseg_ref, kvseg_ref, cfg, positional):
  bq, bk = q.shape[0], k.shape[0]
  s = fb.dot(q, k, fb.NT) * (cfg.sm_scale * fb.LOG2E)
  mask = None
  if positional:
    row = i * bq + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    col = j * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    mask = col < cfg.kv_len
    if cfg.causal:
      mask = mask & (col <= row + cfg.offset)
  if qseg_ref is not None:
    same = qseg_ref[:, :1] == kvseg_ref[:1, :]
    mask = same if mask is None else mask & same
  return s if mask is None else jnp.where(mask, s, MASKED)


def _dispatch(idx, unmasked, masked, fn):
  """Runs fn(positional=False) for idx in [*unmasked) and fn(True) in [*masked)."""
  if masked is None:
    fn(False)
    return
  pl.when((idx >= unmasked[0]) & (idx < unmasked[1]))(lambda: fn(False))
  pl.when((idx >= masked[0]) & (idx < masked[1]))(lambda: fn(True))


def _kv_blocks(i, cfg, nk):
  """Unmasked and masked kv-block ranges for query block i (masked None if none)."""
  t = cfg.tuning
  full, hi = fb.kv_range(i, t.block_q, t.block_k, nk, cfg)
  if not (cfg.causal or cfg.kv_len % t.block_k):
    return (0, nk), None
  return (0, full), (full, hi)


def _fwd_kernel(q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc,
                *, cfg, nk):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def step(positional):
    s = _scores(q_ref[...], k_ref[...], i, j, qseg_ref, kvseg_ref, cfg, positional)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
    alpha = jnp.exp2(m_prev - m_new)
    p = jnp.exp2(s - m_new[:, :1])
    m_sc[...] = m_new
    l_sc[...] = alpha * l_sc[...] + p.sum(axis=1, keepdims=True)
    v = v_ref[...]
    acc_sc[...] = acc_sc[...] * alpha[:, :1] + fb.dot(p.astype(v.dtype), v, fb.NN)

  _dispatch(j, *_kv_blocks(i, cfg, nk), step)

  @pl.when(j == nk - 1)
  def _store():
    m, l = m_sc[...], l_sc[...]
    empty = m < 0.5 * MASKED
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = jnp.where(empty[:, :1], 0.0, acc_sc[...] / l_safe[:, :1]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log2(l_safe))


def _dq_kernel(q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref, delta_ref, dq_ref,
               dq_sc, *, cfg, nk):
  i, j = pl.program_id(2), pl.program_id(3)

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

  def step(positional):
    k = k_ref[...]
    s = _scores(q_ref[...], k, i, j, qseg_ref, kvseg_ref, cfg, positional)
    p = jnp.exp2(s - lse_ref[:, :1])
    ds = p * (fb.dot(do_ref[...], v_ref[...], fb.NT) - delta_ref[:, :1])
    dq_sc[...] += fb.dot(ds.astype(k.dtype), k, fb.NN)

  _dispatch(j, *_kv_blocks(i, cfg, nk), step)

  @pl.when(j == nk - 1)
  def _store():
    dq_ref[...] = (dq_sc[...] * cfg.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qseg_ref, kvseg_ref, do_ref, lse_ref, delta_ref, dk_ref,
                dv_ref, dk_sc, dv_sc, *, cfg, nq, G):
  j, g, i = pl.program_id(2), pl.program_id(3), pl.program_id(4)

  @pl.when((g == 0) & (i == 0))
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  def step(positional):
    q, do, k, v = q_ref[...], do_ref[...], k_ref[...], v_ref[...]
    s = _scores(q, k, i, j, qseg_ref, kvseg_ref, cfg, positional)
    p = jnp.exp2(s - lse_ref[:, :1])
    dv_sc[...] += fb.dot(p.astype(do.dtype), do, fb.TN)
    ds = p * (fb.dot(do, v, fb.NT) - delta_ref[:, :1])
    dk_sc[...] += fb.dot(ds.astype(q.dtype), q, fb.TN)

  # As on the GPU, padded keys need no mask here: their dk, dv rows are sliced off.
  lo, mid = fb.q_range(j, cfg.tuning.block_q_dkv, cfg.tuning.block_k_dkv, nq, cfg)
  _dispatch(i, (mid, nq), (lo, mid) if cfg.causal else None, step)

  @pl.when((g == G - 1) & (i == nq - 1))
  def _store():
    dk_ref[...] = (dk_sc[...] * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _lanes(x_BNT):
  return jnp.broadcast_to(x_BNT[..., None], (*x_BNT.shape, LANES))


def _seg_inputs(segs, Sp):
  if segs is None:
    return None, None
  q_seg, kv_seg = segs
  return _lanes(q_seg), jnp.broadcast_to(kv_seg[:, None, :], (kv_seg.shape[0], SUBLANES, Sp))


def _seg_specs(segs, bq, bk, q_map, kv_map):
  if segs is None:
    return [None, None]
  return [pl.BlockSpec((None, bq, LANES), q_map), pl.BlockSpec((None, SUBLANES, bk), kv_map)]


def _pallas_call(kernel, name, cfg, n_reduced, **kw):
  """pl.pallas_call on a grid whose last n_reduced axes reduce ("arbitrary")."""
  semantics = ("parallel",) * (len(kw["grid"]) - n_reduced) + ("arbitrary",) * n_reduced
  # The TPU interpreter models VMEM, DMAs and grid semantics (uninitialised scratch
  # reads NaN, out-of-bounds blocks raise), so it checks more than interpret=True.
  return pl.pallas_call(kernel, compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
                        interpret=pltpu.InterpretParams() if cfg.interpret else False, name=name,
                        **kw)


def _last_visible_kv(i, j, cfg, nk, bq, bk):
  """Kv block to fetch at (i, j): j itself, or the last visible one if j is skipped."""
  if not cfg.causal:
    return j
  return jnp.clip(j, 0, jnp.maximum(fb.kv_range(i, bq, bk, nk, cfg)[1] - 1, 0))


def forward(q, k, v, segs, cfg):
  """(o_BTNH, lse_BNT) from padded BTNH inputs, like flash_attention_gpu.forward."""
  B, Tp, N, Hp = q.shape
  Sp, K = k.shape[1], k.shape[2]
  G, bq, bk = N // K, cfg.tuning.block_q, cfg.tuning.block_k
  nq, nk = Tp // bq, Sp // bk
  q_BNTH, k_BKSH, v_BKSH = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
  kv_j = lambda i, j: _last_visible_kv(i, j, cfg, nk, bq, bk)
  q_spec = pl.BlockSpec((None, None, bq, Hp), lambda b, n, i, j: (b, n, i, 0))
  kv_spec = pl.BlockSpec((None, None, bk, Hp), lambda b, n, i, j: (b, lax.div(n, G), kv_j(i, j), 0))
  row_spec = pl.BlockSpec((None, None, bq, LANES), lambda b, n, i, j: (b, n, i, 0))
  seg_specs = _seg_specs(segs, bq, bk, lambda b, n, i, j: (b, i, 0),
                         lambda b, n, i, j: (b, 0, kv_j(i, j)))
  o_BNTH, lse_BNTW = _pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg, nk=nk), "flash_attention_fwd_tpu", cfg, 1,
      grid=(B, N, nq, nk), in_specs=[q_spec, kv_spec, kv_spec, *seg_specs],
      out_specs=[q_spec, row_spec],
      out_shape=[jax.ShapeDtypeStruct(q_BNTH.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, N, Tp, LANES), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
                      pltpu.VMEM((bq, Hp), jnp.float32)],
  )(q_BNTH, k_BKSH, v_BKSH, *_seg_inputs(segs, Sp))
  return o_BNTH.transpose(0, 2, 1, 3), lse_BNTW[..., 0]


def backward(q, k, v, segs, do, lse, delta, cfg):
  """(dq, dk, dv) in padded BTNH/BSKH layout, like flash_attention_gpu.backward."""
  B, Tp, N, Hp = q.shape
  Sp, K = k.shape[1], k.shape[2]
  G, t = N // K, cfg.tuning
  q_BNTH, k_BKSH, v_BKSH, do_BNTH = (x.transpose(0, 2, 1, 3) for x in (q, k, v, do))
  lse_BNTW, delta_BNTW = _lanes(lse), _lanes(delta)
  seg_args = _seg_inputs(segs, Sp)

  # dk, dv: grid (B, K, kv block, head in group, query block); the last two reduce.
  bq, bk = t.block_q_dkv, t.block_k_dkv
  nq, nk = Tp // bq, Sp // bk

  def q_i(j, i):  # skipped early query blocks repeat the first visible one
    if not cfg.causal:
      return i
    return jnp.minimum(jnp.maximum(i, fb.q_range(j, bq, bk, nq, cfg)[0]), nq - 1)

  q_spec = pl.BlockSpec((None, None, bq, Hp), lambda b, h, j, g, i: (b, h * G + g, q_i(j, i), 0))
  row_spec = pl.BlockSpec((None, None, bq, LANES),
                          lambda b, h, j, g, i: (b, h * G + g, q_i(j, i), 0))
  kv_spec = pl.BlockSpec((None, None, bk, Hp), lambda b, h, j, g, i: (b, h, j, 0))
  seg_specs = _seg_specs(segs, bq, bk, lambda b, h, j, g, i: (b, q_i(j, i), 0),
                         lambda b, h, j, g, i: (b, 0, j))
  dk_BKSH, dv_BKSH = _pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, nq=nq, G=G), "flash_attention_dkv_tpu", cfg, 2,
      grid=(B, K, nk, G, nq),
      in_specs=[q_spec, kv_spec, kv_spec, *seg_specs, q_spec, row_spec, row_spec],
      out_specs=[kv_spec, kv_spec], out_shape=[jax.ShapeDtypeStruct(k_BKSH.shape, k.dtype)] * 2,
      scratch_shapes=[pltpu.VMEM((bk, Hp), jnp.float32)] * 2,
  )(q_BNTH, k_BKSH, v_BKSH, *seg_args, do_BNTH, lse_BNTW, delta_BNTW)

  # dq: grid (B, N, query block, kv block), like the forward.
  bq, bk = t.block_q_dq, t.block_k_dq
  nq, nk = Tp // bq, Sp // bk
  kv_j = lambda i, j: _last_visible_kv(i, j, cfg, nk, bq, bk)
  q_spec = pl.BlockSpec((None, None, bq, Hp), lambda b, n, i, j: (b, n, i, 0))
  row_spec = pl.BlockSpec((None, None, bq, LANES), lambda b, n, i, j: (b, n, i, 0))
  kv_spec = pl.BlockSpec((None, None, bk, Hp), lambda b, n, i, j: (b, lax.div(n, G), kv_j(i, j), 0))
  seg_specs = _seg_specs(segs, bq, bk, lambda b, n, i, j: (b, i, 0),
                         lambda b, n, i, j: (b, 0, kv_j(i, j)))
  dq_BNTH = _pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, nk=nk), "flash_attention_dq_tpu", cfg, 1,
      grid=(B, N, nq, nk),
      in_specs=[q_spec, kv_spec, kv_spec, *seg_specs, q_spec, row_spec, row_spec],
      out_specs=q_spec, out_shape=jax.ShapeDtypeStruct(q_BNTH.shape, q.dtype),
      scratch_shapes=[pltpu.VMEM((bq, Hp), jnp.float32)],
  )(q_BNTH, k_BKSH, v_BKSH, *seg_args, do_BNTH, lse_BNTW, delta_BNTW)
  return (dq_BNTH.transpose(0, 2, 1, 3), dk_BKSH.transpose(0, 2, 1, 3),
          dv_BKSH.transpose(0, 2, 1, 3))
