import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import ModelConfig
from jaxlm.kernels import flash_attention as fa
from jaxlm.kernels.reference import reference_attention
from jaxlm.models import attention, transformer

# Small blocks keep the interpreted grids short on CPU; the GPU defaults are tested
# natively in test_native_gpu_matches_reference.
SMALL = dict(block_q=16, block_k=16, block_q_dkv=16, block_k_dkv=16, block_q_dq=16,
             block_k_dq=16)
MEDIUM = dict(block_q=64, block_k=32, block_q_dkv=32, block_k_dkv=64, block_q_dq=64,
              block_k_dq=32)
ON_GPU = jax.default_backend() == "gpu"


def _inputs(B, T, S, N, K, H, segments, dtype, seed=0):
  kq, kk, kv, ko, ks = jax.random.split(jax.random.key(seed), 5)
  q = jax.random.normal(kq, (B, T, N, H), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (B, S, K, H), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (B, S, K, H), jnp.float32).astype(dtype)
  do = jax.random.normal(ko, (B, T, N, H), jnp.float32).astype(dtype)
  if segments == "self":  # packed documents of uneven lengths, ids increasing
    seg = jnp.cumsum(jax.random.bernoulli(ks, 4 / max(T, 1), (B, T)), axis=1)
  elif segments == "pair":  # cross-attention: some queries match no key at all
    k1, k2 = jax.random.split(ks)
    seg = (jax.random.randint(k1, (B, T), 0, 3), jax.random.randint(k2, (B, S), 0, 3))
  else:
    seg = None
  return q, k, v, do, seg


@functools.partial(jax.jit, static_argnames=("fn",))
def _value_and_vjp(fn, q, k, v, do):
  o, vjp = jax.vjp(fn, q, k, v)
  return (o, *vjp(do))


def _check(B, T, S, N, K, H, causal, segments, dtype, backend=None, scale=None, **tuning):
  q, k, v, do, seg = _inputs(B, T, S, N, K, H, segments, dtype)
  ours = functools.partial(fa.flash_attention, is_causal=causal, segment_ids=seg,
                           backend=backend, scale=scale, **tuning)
  ref = functools.partial(reference_attention, is_causal=causal, segment_ids=seg, scale=scale)
  with jax.default_matmul_precision("highest"):  # TF32 would blur the f32 reference on GPU
    got = _value_and_vjp(ours, q, k, v, do)
    want = _value_and_vjp(ref, q, k, v, do)
  for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
    assert a.shape == b.shape and a.dtype == b.dtype, name
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = max(1.0, float(np.abs(b).max()))
    tol = 1e-4 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(a, b, atol=tol * scale, rtol=0, err_msg=name)


# Every value of every axis appears: lengths 1/17/128/256 (and T != S both ways),
# GQA ratios 1/2/4, head dims 32/64/128, causal or not, no/self/cross segments,
# float32 and bfloat16.
CASES = [
    # B, T,   S,   N, K, H,   causal, segments, dtype
    (2, 1, 1, 2, 2, 32, True, None, jnp.float32),
    (1, 17, 17, 4, 2, 64, True, "self", jnp.float32),
    (2, 17, 17, 4, 1, 32, False, None, jnp.bfloat16),
    (1, 128, 128, 4, 1, 128, True, "self", jnp.float32),
    (1, 128, 128, 2, 2, 64, False, "self", jnp.bfloat16),
    (1, 256, 256, 2, 1, 32, True, None, jnp.bfloat16),
    (1, 256, 256, 2, 2, 128, False, None, jnp.float32),
    (1, 17, 128, 4, 2, 32, True, "pair", jnp.float32),   # cache prefix: T < S
    (1, 128, 17, 4, 4, 64, True, "pair", jnp.float32),   # T > S: leading rows see nothing
    (2, 17, 1, 2, 1, 32, False, "pair", jnp.bfloat16),
]


@pytest.mark.parametrize("B,T,S,N,K,H,causal,segments,dtype", CASES)
def test_gpu_kernel_matches_reference(B, T, S, N, K, H, causal, segments, dtype):
  tuning = MEDIUM if max(T, S) > 64 else SMALL
  _check(B, T, S, N, K, H, causal, segments, dtype, **({} if ON_GPU else tuning))


TPU_CASES = [
    (1, 17, 17, 4, 2, 32, True, "self", jnp.float32),
    (1, 128, 128, 4, 1, 64, False, None, jnp.bfloat16),
    (1, 40, 17, 2, 1, 128, True, "pair", jnp.float32),
]


@pytest.mark.parametrize("B,T,S,N,K,H,causal,segments,dtype", TPU_CASES)
def test_tpu_kernel_matches_reference_interpreted(B, T, S, N, K, H, causal, segments, dtype):
  tuning = dict(SMALL, block_k=32, block_q_dkv=32) if T > 64 else SMALL
  with jax.default_device(jax.devices("cpu")[0]):  # the TPU interpreter is a host program
    _check(B, T, S, N, K, H, causal, segments, dtype, backend="tpu", interpret=True, **tuning)


def test_default_blocks_and_uneven_blocks():
  # Forward and backward kernels with different block sizes pad to a common length.
  _check(1, 100, 70, 2, 1, 32, True, "pair", jnp.float32, block_q=32, block_k=16,
         block_q_dkv=16, block_k_dkv=64, block_q_dq=64, block_k_dq=16)


def test_custom_scale_in_both_kernels():
  # μP's 1/H score scale (ModelConfig.attention_scale), forward and backward.
  _check(1, 17, 17, 4, 2, 32, True, "self", jnp.float32, scale=1 / 32,
         **({} if ON_GPU else SMALL))
  with jax.default_device(jax.devices("cpu")[0]):
    _check(1, 17, 17, 4, 2, 32, True, "self", jnp.float32, backend="tpu", interpret=True,
           scale=1 / 32, **SMALL)


def test_tiny_model_trains_like_xla():
  def config(impl):
    return ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       max_seq_len=32, attention=impl)

  params = transformer.init(config("xla"), jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 33), 0, 64)
  segments = jnp.array([[0] * 11 + [1] * 21, [0] * 32]) + 1
  starts = jnp.argmax(segments[:, :, None] == segments[:, None, :], axis=2)
  positions = jnp.arange(32)[None] - starts

  def losses(impl):
    cfg = config(impl)

    def loss_fn(p):
      logits = transformer.apply(p, tokens[:, :-1], cfg, positions_BT=positions,
                                 segment_ids_BT=segments)
      logp = jax.nn.log_softmax(logits)
      return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    p, out = params, []
    for _ in range(3):
      loss, grads = step(p)
      out.append((loss, grads))
      p = jax.tree.map(lambda w, g: w - 0.5 * g, p, grads)
    return out

  with jax.default_matmul_precision("highest"):  # no TF32 on GPU: compare exact f32
    pallas, xla = losses("pallas"), losses("xla")
  for (l_pallas, g_pallas), (l_xla, g_xla) in zip(pallas, xla):
    np.testing.assert_allclose(l_pallas, l_xla, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g_pallas, g_xla)


def test_unsupported_calls_say_why():
  q = jnp.zeros((1, 8, 2, 256))
  with pytest.raises(attention.AttentionUnsupportedError, match="head dim.*256"):
    attention.dot_product_attention(q, q, q, implementation="pallas")
  q = jnp.zeros((1, 8, 2, 32), jnp.int32)
  with pytest.raises(attention.AttentionUnsupportedError, match="dtype.*int32"):
    attention.dot_product_attention(q, q, q, implementation="pallas")
  q = jnp.zeros((1, 8, 2, 32))
  with pytest.raises(attention.AttentionUnsupportedError, match="one dtype"):
    attention.dot_product_attention(q, q, q.astype(jnp.bfloat16), implementation="pallas")
  with pytest.raises(ValueError, match="unknown tuning keyword 'block_m'"):
    fa.flash_attention(q, q, q, block_m=32)
  with pytest.raises(ValueError, match="block_q=48: expected a power of two"):
    fa.flash_attention(q, q, q, block_q=48)
  q = jnp.zeros((2, 8, 2, 32))
  for seg, message in ((jnp.ones((1, 8), jnp.int32), "batch size 2"),
                       (jnp.ones((2, 9), jnp.int32), r"query segment ids must be \(B, 8\)")):
    with pytest.raises(ValueError, match=message):
      fa.flash_attention(q, q, q, segment_ids=seg)


def test_choose_prefers_cudnn_then_pallas_for_segments_on_gpu():
  q = jnp.zeros((1, 8, 2, 32), jnp.bfloat16)
  seg = jnp.zeros((1, 8), jnp.int32)
  if ON_GPU:
    assert attention.choose(q, q) == "cudnn"
    assert attention.choose(q, q, seg) == "pallas"
  else:
    assert attention.choose(q, q) == attention.choose(q, q, seg) == "xla"


@pytest.mark.skipif(not ON_GPU, reason="runs the native Triton kernel; needs a GPU")
@pytest.mark.parametrize("B,T,S,N,K,H,causal,segments,dtype", [
    (2, 1024, 1024, 8, 2, 128, True, "self", jnp.bfloat16),
    (1, 2048, 2048, 4, 4, 64, False, None, jnp.bfloat16),
    (2, 333, 333, 4, 1, 32, True, "self", jnp.float32),
    (1, 200, 700, 4, 2, 128, True, "pair", jnp.float32),
    (4, 512, 512, 16, 16, 128, True, None, jnp.float16),
])
def test_native_gpu_matches_reference(B, T, S, N, K, H, causal, segments, dtype):
  _check(B, T, S, N, K, H, causal, segments, dtype, interpret=False)
