"""kernels/xla_attention.py: blocked causal attention and its hand-written gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.kernels.reference import mask_BTS, reference_attention
from jaxlm.kernels.xla_attention import causal_query_blocks, xla_attention
from tests.helpers import qkv as _qkv
from tests.helpers import value_and_grads as _grads


@pytest.mark.parametrize("T,S,K,segments", [(32, 32, 4, False), (100, 100, 2, True),
                                            (200, 200, 1, False), (40, 72, 2, False)])
def test_causal_blocks_match_one_masked_softmax(T, S, K, segments):
  # xla_attention skips fully masked key blocks (causal_query_blocks); values and
  # gradients must equal one softmax over all keys, with or without a cache prefix.
  q, k, v = _qkv(T=T, S=S, K=K)
  assert len(causal_query_blocks(T, S)) > 1
  seg = None
  if segments:
    seg = jnp.concatenate([jnp.ones((2, T // 3), jnp.int32),
                           2 * jnp.ones((2, T - T // 3), jnp.int32)], 1)
  w = jax.random.normal(jax.random.key(1), q.shape)
  ours = lambda q, k, v: xla_attention(q, k, v, is_causal=True, segment_ids=seg)
  naive = lambda q, k, v: reference_attention(q, k, v, is_causal=True, segment_ids=seg)
  np.testing.assert_allclose(jax.jit(ours)(q, k, v), naive(q, k, v), atol=1e-5)
  (a, ga), (b, gb) = _grads(ours, q, k, v, w), _grads(naive, q, k, v, w)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_causal_query_blocks_cover_the_queries():
  for T in (1, 31, 32, 100, 256, 1000):
    blocks = causal_query_blocks(T, T)
    assert blocks[0][0] == 0 and blocks[-1][1] == T
    assert all(b == c for (_, b), (c, _) in zip(blocks, blocks[1:]))
    assert all(0 < b - a <= 128 for a, b in blocks)
  assert causal_query_blocks(16, 16) == [(0, 16)]
  assert causal_query_blocks(64, 8) == [(0, 64)]  # more queries than keys: one block


@pytest.mark.parametrize("is_causal", [False, True])
def test_hand_written_gradient_matches_autodiff_with_fully_masked_rows(is_causal):
  # Cross-attention segments where some queries (segment 3) see no key at all:
  # those rows softmax uniformly over masked keys, and, as under autodiff of
  # the masked scores, they pass gradient to v but none to q or k. (Causal
  # blocks average such a row over its block's keys only, so there the loss
  # leaves those rows out.)
  T, S = 40, 40
  q, k, v = _qkv(T=T, S=S, K=2)
  q_seg = jnp.concatenate([jnp.ones((2, 30), jnp.int32), 3 * jnp.ones((2, 10), jnp.int32)], 1)
  kv_seg = jnp.concatenate([jnp.ones((2, 20), jnp.int32), 2 * jnp.ones((2, 20), jnp.int32)], 1)
  mask = mask_BTS(T, S, is_causal, q_seg, kv_seg)
  assert not bool(mask[:, 30:].any())  # the last 10 queries see nothing
  w = jax.random.normal(jax.random.key(2), q.shape)
  if is_causal:
    w = w.at[:, 30:].set(0.0)
  ours = lambda q, k, v: xla_attention(q, k, v, is_causal=is_causal,
                                                 segment_ids=(q_seg, kv_seg))
  naive = lambda q, k, v: reference_attention(q, k, v, is_causal=is_causal,
                                              segment_ids=(q_seg, kv_seg))
  (a, ga), (b, gb) = _grads(ours, q, k, v, w), _grads(naive, q, k, v, w)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(x, y, atol=1e-4)
  assert float(jnp.abs(gb[0][:, 30:]).max()) == 0.0 and float(jnp.abs(gb[2]).max()) > 0


def test_bfloat16_keeps_dtypes_and_tracks_float32():
  q, k, v = _qkv(T=64, S=64, K=2)
  w = jax.random.normal(jax.random.key(3), q.shape)
  ours = lambda q, k, v: xla_attention(q, k, v, is_causal=True)
  out = jax.jit(ours)(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
  assert out.dtype == jnp.bfloat16
  _, g16 = _grads(ours, *(x.astype(jnp.bfloat16) for x in (q, k, v)), w)
  _, g32 = _grads(ours, q, k, v, w)
  for a, b in zip(g16, g32):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=0.1, rtol=0.05)


def test_every_product_has_the_layout_ynnpack_takes():
  # XLA's CPU backend sends a product to YNNPACK only when it contracts the
  # last axis of the left operand (and the first or last non-batch axis of the
  # right one); others run in Eigen at about half the speed. Forward and backward of
  # xla_attention must leave no such product to Eigen.
  q, k, v = _qkv(B=2, T=256, S=256, N=4, K=2, H=64)
  f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(xla_attention(q, k, v, is_causal=True)),
                       (0, 1, 2)))
  hlo = f.lower(q, k, v).compile().as_text()
  # YNNPACK products sit inside fused computations; Eigen's are in the entry one.
  entry = hlo[hlo.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  products = [line.strip()[:160] for line in entry.splitlines() if " dot(" in line]
  assert jax.default_backend() != "cpu" or not products, products


@pytest.mark.parametrize("T,S,is_causal", [(16, 16, True), (64, 64, False), (96, 40, True)])
def test_bfloat16_gradient_of_a_single_query_block(T, S, is_causal):
  # One query block with a constant cotangent once let XLA fold the final
  # transposes of dK, dV into a bf16 x bf16 -> f32 product that only Eigen
  # would take, and Eigen cannot run.
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(T=T, S=S, K=2))
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(
      xla_attention(q, k, v, is_causal=is_causal).astype(jnp.float32)),
      (0, 1, 2)))(q, k, v)
  ref = jax.grad(lambda q, k, v: jnp.sum(reference_attention(
      q, k, v, is_causal=is_causal).astype(jnp.float32)), (0, 1, 2))(q, k, v)
  for a, b in zip(grads, ref):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=0.05, rtol=0.05)


def test_float16_score_gradients_do_not_underflow():
  # Small cotangents (no loss scaling): dS is kept in float32 for dQ and dK,
  # as autodiff did; rounding it to float16 first lost a third of dQ.
  q, k, v = _qkv(B=1, T=256, S=256, N=2, K=1, H=32)
  w = 1e-5 * jax.random.normal(jax.random.key(4), q.shape)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w)
  ours = loss(lambda q, k, v: xla_attention(q, k, v))
  g16 = jax.jit(jax.grad(ours, (0, 1)))(*(x.astype(jnp.float16) for x in (q, k, v)))
  g32 = jax.jit(jax.grad(ours, (0, 1)))(q, k, v)
  for a, b in zip(g16, g32):
    err = np.linalg.norm(np.asarray(a, np.float32) - b) / np.linalg.norm(b)
    assert err < 0.05, err


def test_gradients_under_a_mesh_with_explicit_axes():
  mesh = jax.make_mesh((4, 2), ("data", "tensor"),
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None, "tensor"))
  q, k, v = _qkv(B=4, T=64, S=64, N=4, K=4)
  f = lambda q, k, v: jnp.sum(jnp.sin(xla_attention(q, k, v, is_causal=True)))
  want = jax.jit(jax.grad(f, (0, 1, 2)))(q, k, v)
  with jax.set_mesh(mesh):
    got = jax.jit(jax.grad(f, (0, 1, 2)))(*(jax.device_put(x, spec) for x in (q, k, v)))
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-5)


def test_traced_scale_is_differentiable():
  q, k, v = _qkv(K=2)
  f = lambda s, impl: jnp.sum(jnp.sin(impl(q, k, v, s)))
  ours = lambda q, k, v, s: xla_attention(q, k, v, is_causal=True, scale=s)
  ref = lambda q, k, v, s: reference_attention(q, k, v, is_causal=True, scale=s)
  a = jax.jit(jax.value_and_grad(lambda s: f(s, ours)))(0.3)
  b = jax.value_and_grad(lambda s: f(s, ref))(0.3)
  np.testing.assert_allclose(a, b, rtol=1e-5)
