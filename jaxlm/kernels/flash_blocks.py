"""What the flash attention kernels share: tuning, the static call description, block
bounds and the masked base-2 softmax math (plain jnp, traced inside either kernel).

Dimension legend (docs/architecture.md): T query length, S key length, H head
dim; a trailing `p` marks a padded size (Tp, Sp, Hp).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxlm.kernels.reference import MASKED

LOG2E = math.log2(math.e)

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


def pow2_at_least_16(n: int) -> int:
  return max(16, pl.next_power_of_2(n))


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


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
  return s if mask is None else jnp.where(mask, s, MASKED)


def finish(acc, m, l):
  """Output and base-2 log-sum-exp; a row that saw no unmasked key gets 0 and +inf."""
  empty = m < 0.5 * MASKED
  l_safe = jnp.where(empty, 1.0, l)
  o = jnp.where(empty[:, None], 0.0, acc / l_safe[:, None])
  return o, jnp.where(empty, jnp.inf, m + jnp.log2(l_safe))
