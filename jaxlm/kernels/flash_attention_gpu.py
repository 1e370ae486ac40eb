"""GPU (Triton) variant of the flash attention kernels; on CPU the same kernels run interpreted.

Dimension legend (docs/architecture.md): B batch, T query length, S key length,
N query heads, K key/value heads, G = N // K, H head dim; a trailing `p` marks
a padded size (Tp, Sp, Hp).

Each program owns one block and loops over the other axis with lax.fori_loop;
K and V (or Q and dO) of one head stay in HBM as whole sequences and are sliced
per iteration.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxlm.kernels.flash_blocks import NN, NT, TN, Config, dot, finish, kv_range, q_range, scores

# Older jax named the Triton compiler params TritonCompilerParams (renamed in 0.6.2).
_GpuCompilerParams = getattr(plgpu, "CompilerParams", None) or getattr(
    plgpu, "TritonCompilerParams")


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
    s = scores(q, k_ref[rows, :], q_pos, j * bk + jnp.arange(bk), q_ids, kv_ids, cfg, positional)
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


def _pallas_call(kernel, name: str, cfg: Config, Hp: int, **kw):
  warps = cfg.tuning.num_warps or (4 if Hp <= 64 else 8)
  params = _GpuCompilerParams(num_warps=warps, num_stages=cfg.tuning.num_stages)
  return pl.pallas_call(kernel, compiler_params=params, interpret=cfg.interpret, name=name, **kw)


def _seg_specs(segs, q_spec, kv_spec):
  if segs is None:
    return [None, None], [None, None]
  return [q_spec, kv_spec], list(segs)


def forward(q, k, v, segs, cfg: Config):
  """(o_BTpNHp, lse_BNTp) from padded inputs (flash_attention pads them)."""
  B, Tp, N, Hp = q.shape
  Sp, K = k.shape[1], k.shape[2]
  G, bq = N // K, cfg.tuning.block_q
  nq, nk = Tp // bq, Sp // cfg.tuning.block_k
  qi = lambda i: _block_index(i, nq, cfg.causal)
  kv_spec = pl.BlockSpec((None, Sp, None, Hp), lambda i, b, n: (b, 0, lax.div(n, G), 0))
  q_spec = pl.BlockSpec((None, bq, None, Hp), lambda i, b, n: (b, qi(i), n, 0))
  seg_specs, seg_args = _seg_specs(segs, pl.BlockSpec((None, bq), lambda i, b, n: (b, qi(i))),
                                   pl.BlockSpec((None, Sp), lambda i, b, n: (b, 0)))
  return _pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg, nq=nq, nk=nk), "flash_attention_fwd", cfg, Hp,
      grid=(nq, B, N), in_specs=[q_spec, kv_spec, kv_spec, *seg_specs],
      out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, qi(i)))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, N, Tp), jnp.float32)],
  )(q, k, v, *seg_args)


def backward(q, k, v, segs, do, lse, delta, cfg: Config):
  """(dq, dk, dv) in the padded layout of the inputs."""
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
  dk, dv = _pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, nq=nq, G=G), "flash_attention_dkv", cfg, Hp,
      grid=(nk, B, K),
      in_specs=[qg_spec, kv_spec, kv_spec, *seg_specs, qg_spec, rowg_spec, rowg_spec],
      out_specs=[kv_spec, kv_spec], out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
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
  dq = _pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, nq=nq, nk=nk), "flash_attention_dq", cfg, Hp,
      grid=(nq, B, N), in_specs=[q_spec, kv_spec, kv_spec, *seg_specs, q_spec, row_spec, row_spec],
      out_specs=q_spec, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
  )(q, k, v, *seg_args, do, lse, delta)
  return dq, dk, dv
