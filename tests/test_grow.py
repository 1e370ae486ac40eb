import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import grow, transformer
from jaxlm.params import is_spec
from tests.helpers import tiny_model

# (source overrides, grown overrides, depth). tiny_model: V64 D32 L2 N4 (head dim 8).
# Width cases set the grown norm_eps to eps * Ds/Dl, where RMSNorm growth is exact.
CASES = {
    "stack": (dict(), dict(n_layers=4), "stack"),
    "interleave_gpt2": (dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
                             tie_embeddings=False),
                        dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
                             tie_embeddings=False, n_layers=5), "interleave"),
    "width": (dict(d_ff=64), dict(d_model=64, n_heads=8, d_ff=128, norm_eps=5e-6), "none"),
    "both_gqa_bias_untied": (
        dict(n_kv_heads=2, use_bias=True, tie_embeddings=False, positions="learned"),
        dict(n_kv_heads=3, use_bias=True, tie_embeddings=False, positions="learned",
             n_layers=4, d_model=48, n_heads=6, norm_eps=1e-5 * 32 / 48), "interleave"),
    "gelu_group_grows": (dict(mlp="gelu"), dict(mlp="gelu", n_layers=3, d_model=64, n_heads=8,
                                                n_kv_heads=4, norm_eps=5e-6), "stack"),
    "group_shrinks": (dict(n_kv_heads=2), dict(n_layers=3, d_model=64, n_heads=8, n_kv_heads=8,
                                               norm_eps=5e-6), "interleave"),
    "group_3_to_2": (dict(d_model=48, n_heads=6, n_kv_heads=2),
                     dict(d_model=64, n_heads=8, n_kv_heads=4, norm_eps=1e-5 * 48 / 64),
                     "none"),
}


def _configs(name):
  s, l, depth = CASES[name]
  return tiny_model(**s), tiny_model(**l), depth


def _tokens(B=2, T=16, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, 64)


_apply = jax.jit(transformer.apply, static_argnums=2)
_jit_grow = jax.jit(grow.grow_params, static_argnames=("small", "large", "depth", "zero_new"))


def _trained_like(config, seed=0):
  """Params with nonzero biases and norm scales away from 1 (numpy: no compile per shape)."""
  r = np.random.default_rng(seed)

  def draw(path, spec):
    name = path[-1].key
    if name == "scale":
      return (1 + 0.3 * r.standard_normal(spec.shape)).astype(np.float32)
    std = 0.1 if name in ("embed", "pos_embed") else 0.05
    return (std * r.standard_normal(spec.shape)).astype(np.float32)

  specs = transformer.param_specs(config)
  return jax.tree_util.tree_map_with_path(draw, specs, is_leaf=is_spec)


def _grow(small, large, depth, zero_new=True, seed=0):
  params = _trained_like(small, seed)
  grown = _jit_grow(params, small, large, depth=depth, zero_new=zero_new,
                    rng=jax.random.key(seed + 1))
  return params, grown


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_and_same_function(name):
  small, large, depth = _configs(name)
  params, grown = _grow(small, large, depth)
  ref = jax.eval_shape(functools.partial(transformer.init, large), jax.random.key(0))
  assert jax.tree.structure(grown) == jax.tree.structure(ref)
  for g, r in zip(jax.tree.leaves(grown), jax.tree.leaves(ref)):
    assert (g.shape, g.dtype) == (r.shape, r.dtype)
  x = _tokens()
  np.testing.assert_allclose(_apply(grown, x, large),
                             _apply(params, x, small), atol=1e-5)
  assert "(function-preserving)" in grow.describe(small, large, depth)


@pytest.mark.parametrize("depth,expected", [("stack", [0, 1, 2, 0, 1, 2, 0]),
                                            ("interleave", [0, 0, 0, 1, 1, 2, 2])])
def test_layer_mapping(depth, expected):
  small, large = tiny_model(n_layers=3), tiny_model(n_layers=7)
  params, grown = _grow(small, large, depth)
  for i, j in enumerate(expected):
    np.testing.assert_array_equal(grown["layers"]["attn"]["wq"][i],
                                  params["layers"]["attn"]["wq"][j])
    first = expected.index(j) == i
    assert bool(np.any(grown["layers"]["attn"]["wo"][i] != 0)) == first
    assert bool(np.any(grown["layers"]["mlp"]["w_out"][i] != 0)) == first


@pytest.mark.parametrize("depth", ["stack", "interleave"])
def test_zero_new_false_copies_weights_and_changes_function(depth):
  small, large = tiny_model(), tiny_model(n_layers=4)
  params, grown = _grow(small, large, depth, zero_new=False)
  for i in range(4):
    j = i % 2 if depth == "stack" else i // 2
    for k in ("wq", "wo"):
      np.testing.assert_array_equal(grown["layers"]["attn"][k][i], params["layers"]["attn"][k][j])
  x = _tokens()
  diff = np.abs(_apply(grown, x, large) - _apply(params, x, small)).max()
  assert diff > 1e-3
  assert "not function-preserving" in grow.describe(small, large, depth, zero_new=False)


def _loss(params, x, config):
  logits = transformer.apply(params, x[:, :-1], config)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], -1))


@pytest.mark.parametrize("name", ["both_gqa_bias_untied", "gelu_group_grows", "stack"])
def test_new_zero_weights_get_gradients(name):
  # Every output weight grow_params zeroed can learn. After one backward pass each
  # zeroed tensor has gradient; after one step nearly every zeroed entry does. (Some
  # wait a step: a repeated layer's inputs get gradient once its outputs are nonzero,
  # and with tied embeddings writes into new dims that no later layer reads wait for
  # the embedding's new columns, which get gradient from the first step on.)
  small, large, depth = _configs(name)
  _, grown = _grow(small, large, depth)
  x = _tokens(B=4, T=32)
  grad = jax.jit(jax.grad(_loss), static_argnums=2)
  g = grad(grown, x, large)
  stepped = jax.tree.map(lambda w, d: w - 0.1 * d, grown, g)
  g2 = grad(stepped, x, large)
  for part, key in (("attn", "wo"), ("mlp", "w_out")):
    zero = np.asarray(grown["layers"][part][key] == 0)
    dw, dw2 = np.asarray(g["layers"][part][key]), np.asarray(g2["layers"][part][key])
    assert np.any(dw[zero] != 0)
    assert np.mean(dw2[zero] != 0) > 0.99, (part, key)
  if large.d_model > small.d_model:
    used = np.unique(np.asarray(x[:, :-1]))
    assert np.all(np.asarray(g["embed"])[used, small.d_model:] != 0)
    if "pos_embed" in grown:
      assert np.all(np.asarray(g["pos_embed"])[:31, small.d_model:] != 0)


def test_width_with_equal_eps_is_close():
  small, large = tiny_model(), tiny_model(d_model=64, n_heads=8)
  params, grown = _grow(small, large, "none")
  x = _tokens()
  a, b = _apply(grown, x, large), _apply(params, x, small)
  # Untrained embeddings (RMS 0.02) make eps weigh most; still a small change.
  assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
  assert grow.describe(small, large, "none") == (
      "grown from 2x32 to 2x64 in width, n_heads 4->8, n_kv_heads 4->8, d_ff 128->192 "
      "(function-preserving up to norm_eps)")


def test_layernorm_width_runs_and_stays_close():
  kw = dict(norm="layernorm", mlp="gelu", use_bias=True, positions="learned")
  small, large = tiny_model(**kw), tiny_model(**kw, n_layers=4, d_model=64, n_heads=8)
  params, grown = _grow(small, large, "interleave")
  x = _tokens()
  a, b = _apply(grown, x, large), _apply(params, x, small)
  other = _apply(_trained_like(large, seed=5), x, large)
  assert np.all(np.isfinite(a))
  # Not exact (the mean runs over the wider stream) but far nearer than another model.
  assert np.abs(a - b).mean() < 0.3 * np.abs(other - b).mean()
  assert "not function-preserving: LayerNorm" in grow.describe(small, large, "interleave")


def test_jit_agrees_and_casts_dtype():
  small, large = tiny_model(n_kv_heads=2), tiny_model(n_kv_heads=4, n_layers=3, d_model=64,
                                                     n_heads=8, param_dtype="bfloat16")
  params = _trained_like(small)
  fn = functools.partial(grow.grow_params, small=small, large=large, depth="interleave",
                         zero_new=True)
  eager, jitted = fn(params, rng=jax.random.key(1)), jax.jit(fn)(params, rng=jax.random.key(1))
  for e, j in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    assert e.dtype == j.dtype == jnp.bfloat16
    np.testing.assert_array_equal(e, j)


@pytest.mark.parametrize("small,large,key", [
    (dict(), dict(vocab_size=128), "model.vocab_size"),
    (dict(), dict(norm="layernorm"), "model.norm"),
    (dict(), dict(tie_embeddings=False), "model.tie_embeddings"),
    (dict(), dict(max_seq_len=64), "model.max_seq_len"),
    (dict(n_layers=4), dict(n_layers=2), "model.n_layers"),
    (dict(), dict(d_ff=64), "model.d_ff"),
    (dict(), dict(d_model=64), "model.d_model / model.n_heads"),
    (dict(n_kv_heads=2), dict(n_kv_heads=1), "model.n_kv_heads"),
    (dict(d_model=48, n_heads=6, n_kv_heads=2), dict(d_model=48, n_heads=6, n_kv_heads=3),
     "model.n_kv_heads=3"),
])
def test_errors_name_the_key(small, large, key):
  with pytest.raises(ValueError, match=key) as e:
    grow.check_growable(tiny_model(**small), tiny_model(**large))
  assert "expected" in str(e.value)


def test_bad_depth_and_params_raise():
  small, large = tiny_model(), tiny_model(n_layers=4)
  params = _trained_like(small)
  with pytest.raises(ValueError, match="init.grow"):
    grow.grow_params(params, small, large, depth="none", zero_new=True, rng=jax.random.key(1))
  with pytest.raises(ValueError, match="params embed has shape"):
    grow.grow_params(_trained_like(tiny_model(d_model=64, n_heads=8)),
                     tiny_model(), large, depth="stack", zero_new=True, rng=jax.random.key(1))
