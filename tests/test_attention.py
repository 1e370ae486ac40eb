"""dot_product_attention: dispatch, checks, and agreement with its references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.kernels.reference import reference_attention
from jaxlm.models import attention
from tests.helpers import qkv as _qkv


@pytest.mark.parametrize("K", [1, 2, 4])
def test_xla_matches_naive_gqa_causal_segments(K):
  q, k, v = _qkv(K=K)
  seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2], [1] * 8])
  out = attention.dot_product_attention(q, k, v, is_causal=True, segment_ids=seg,
                                        implementation="xla")
  want = reference_attention(q, k, v, is_causal=True, segment_ids=seg)
  np.testing.assert_allclose(out, want, atol=1e-5)


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
