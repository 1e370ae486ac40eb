import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import transformer
from tests.helpers import tiny_model

VARIANTS = {
    "llama": dict(),
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True),
    "untied": dict(tie_embeddings=False),
}


def _tokens(B=2, T=16, V=64, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_shapes_and_param_count(name):
  cfg = tiny_model(**VARIANTS[name])
  params = transformer.init(cfg, jax.random.key(0))
  logits = transformer.apply(params, _tokens(), cfg)
  assert logits.shape == (2, 16, 64) and logits.dtype == jnp.float32
  n = sum(x.size for x in jax.tree.leaves(params))
  assert transformer.param_count(cfg)["total"] == n


def test_param_count_matches_closed_form():
  # GPT-2 style: per layer 4D^2+4D (attention with biases) + 8D^2+5D (MLP with biases)
  # + 4D (two LayerNorms); embeddings V*D + T*D; final LayerNorm 2D.
  V, D, L, T = 64, 32, 2, 32
  cfg = tiny_model(**VARIANTS["gpt2"])
  per_layer = (4 * D * D + 4 * D) + (8 * D * D + 5 * D) + 4 * D
  expected = L * per_layer + V * D + T * D + 2 * D
  counts = transformer.param_count(cfg)
  assert counts["total"] == expected
  assert counts["non_embedding"] == expected - V * D - T * D
  # LLaMA style: no biases, RMSNorm, SwiGLU with F = 128 (8/3*32 rounded up to 64).
  cfg = tiny_model(n_kv_heads=2, tie_embeddings=False)
  F, H, K = cfg.ff_dim, cfg.head_dim, 2
  per_layer = D * D + 2 * D * K * H + D * D + 3 * D * F + 2 * D
  assert transformer.param_count(cfg)["total"] == L * per_layer + 2 * V * D + D


@pytest.mark.parametrize("name", ["llama", "gpt2", "gqa"])
def test_causal(name):
  cfg = tiny_model(**VARIANTS[name])
  params = transformer.init(cfg, jax.random.key(0))
  a = _tokens(T=16)
  t = 7
  b = a.at[:, t + 1:].set((a[:, t + 1:] + 5) % 64)
  la, lb = transformer.apply(params, a, cfg), transformer.apply(params, b, cfg)
  np.testing.assert_allclose(la[:, :t + 1], lb[:, :t + 1], atol=1e-5)
  assert not np.allclose(la[:, t + 1:], lb[:, t + 1:], atol=1e-3)


def test_segments_isolate_documents():
  cfg = tiny_model()
  params = transformer.init(cfg, jax.random.key(0))
  a = _tokens(B=1, T=16)
  seg = jnp.array([[1] * 8 + [2] * 8])
  pos = jnp.array([list(range(8)) * 2])
  packed = transformer.apply(params, a, cfg, segment_ids_BT=seg, positions_BT=pos)
  alone = transformer.apply(params, a[:, 8:], cfg)
  np.testing.assert_allclose(packed[:, 8:], alone, atol=1e-5)


def test_jit_and_no_jit_agree():
  cfg = tiny_model(n_kv_heads=2)
  params = transformer.init(cfg, jax.random.key(0))
  x = _tokens()
  eager = transformer.apply(params, x, cfg)
  jitted = jax.jit(transformer.apply, static_argnames="config")(params, x, config=cfg)
  np.testing.assert_allclose(eager, jitted, atol=1e-5)


def test_bfloat16_params_and_compute():
  cfg = tiny_model(param_dtype="bfloat16", compute_dtype="bfloat16")
  params = transformer.init(cfg, jax.random.key(0))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  f32 = transformer.apply(jax.tree.map(lambda x: x.astype(jnp.float32), params), _tokens(),
                          tiny_model())
  bf16 = transformer.apply(params, _tokens(), cfg)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, f32, atol=0.1)


def test_initial_loss_is_near_uniform():
  cfg = tiny_model()
  params = transformer.init(cfg, jax.random.key(0))
  logp = jax.nn.log_softmax(transformer.apply(params, _tokens(), cfg))
  assert abs(float(-logp.mean()) - math.log(64)) < 0.2


def test_remat_gives_same_gradients():
  cfg = tiny_model()
  params = transformer.init(cfg, jax.random.key(0))
  x = _tokens()
  loss = lambda p, c: transformer.apply(p, x, c).mean()
  g1 = jax.grad(loss)(params, cfg)
  for policy in ("full", "dots"):
    g2 = jax.grad(loss)(params, tiny_model(remat=policy))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


@pytest.mark.parametrize("chunk", [0, 7, 32, 1000])
def test_chunked_loss_equals_full_logits_loss(chunk):
  import optax
  cfg = tiny_model(tie_embeddings=False)
  params = transformer.init(cfg, jax.random.key(0))
  x, t = _tokens(), _tokens(seed=1)

  def chunked(p):
    h = transformer.trunk(p, x, cfg)
    return transformer.next_token_nll(p, h, t, cfg, chunk).mean()

  def full(p):
    return optax.softmax_cross_entropy_with_integer_labels(transformer.apply(p, x, cfg),
                                                           t).mean()

  (a, ga), (b, gb) = jax.value_and_grad(chunked)(params), jax.value_and_grad(full)(params)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6), ga, gb)
