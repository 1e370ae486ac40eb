import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import attention


def _qkv(B=2, T=8, S=8, N=4, K=2, H=16, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k1, (B, T, N, H)), jax.random.normal(k2, (B, S, K, H)),
          jax.random.normal(k3, (B, S, K, H)))


def _naive(q, k, v, mask):
  G = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
  s = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  s = jnp.where(mask[:, None], s, -jnp.inf)
  return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, -1), v)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_xla_matches_naive_gqa_causal_segments(K):
  q, k, v = _qkv(K=K)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2], [1] * 8])
  mask = attention.mask_BTS(8, 8, True, seg, seg)
  out = attention.dot_product_attention(q, k, v, is_causal=True, segment_ids=seg,
                                        implementation="xla")
  np.testing.assert_allclose(out, _naive(q, k, v, mask), atol=1e-5)


def test_matches_jax_nn():
  q, k, v = _qkv(K=4)
  ours = attention.dot_product_attention(q, k, v, is_causal=True)
  ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_forced_implementations_explain_why_not():
  q, k, v = _qkv()
  with pytest.raises(attention.AttentionUnsupportedError, match="cudnn attention cannot serve"):
    attention.dot_product_attention(q, k, v, implementation="cudnn")
  with pytest.raises(ValueError, match="implementation='flash'"):
    attention.dot_product_attention(q, k, v, implementation="flash")


def test_shape_errors():
  q, k, v = _qkv(N=3, K=2)
  with pytest.raises(ValueError, match="not divisible"):
    attention.dot_product_attention(q, k, v)


def test_scale_is_honored():
  # μP scores scale as 1/H rather than 1/sqrt(H) (ModelConfig.attention_scale).
  q, k, v = _qkv(K=4, H=16)
  for impl in ("xla", None):
    ours = attention.dot_product_attention(q, k, v, is_causal=True, scale=1 / 16,
                                           implementation=impl)
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=1 / 16)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
  default = attention.dot_product_attention(q, k, v, implementation="xla")
  explicit = attention.dot_product_attention(q, k, v, implementation="xla", scale=16 ** -0.5)
  np.testing.assert_array_equal(default, explicit)
