import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import pytest

from jaxlm import params as params_lib
from jaxlm.config import OptimConfig
from jaxlm.models import layers, transformer
from jaxlm.tasks import lm
from jaxlm.train import optim
from jaxlm.train.step import TrainState, train_step
from tests.helpers import tiny_config, tiny_model

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


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_unrolled_layers_equal_scan(remat):
  # model.layer_loop changes how the stacked layers run, not what they compute.
  cfg = tiny_model(**VARIANTS["gpt2"], remat=remat)
  params = transformer.init(cfg, jax.random.key(0))
  x = _tokens()

  def value_and_grad(loop):
    c = tiny_model(**VARIANTS["gpt2"], remat=remat, layer_loop=loop)
    return jax.jit(jax.value_and_grad(lambda p: transformer.apply(p, x, c).std()))(params)

  (a, ga), (b, gb) = value_and_grad("scan"), value_and_grad("unroll")
  np.testing.assert_allclose(a, b, rtol=1e-6)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6), ga, gb)
  assert jax.tree.structure(ga) == jax.tree.structure(params)  # still one stacked tree


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


@pytest.mark.parametrize("mesh", [(2, 4, 1), (1, 4, 2)])
def test_chunked_loss_on_a_mesh_equals_the_full_loss(mesh):
  # Under activation_rules the chunks run on each device's own rows (a shard_map over
  # the batch axes); values and gradients are those of the whole-logits loss.
  import optax
  from jaxlm import sharding
  from jaxlm.config import DEFAULT_RULES, MeshConfig
  cfg = tiny_model(tie_embeddings=True)
  m = sharding.make_mesh(MeshConfig(data=mesh[0], fsdp=mesh[1], tensor=mesh[2]))
  params = transformer.init(cfg, jax.random.key(0))
  x, t = _tokens(B=8), _tokens(B=8, seed=1)

  @jax.jit
  def both(p):
    with sharding.activation_rules(m, DEFAULT_RULES):
      chunked = jax.value_and_grad(
          lambda p: transformer.next_token_nll(p, transformer.trunk(p, x, cfg), t, cfg, 8).mean())
      full = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
          transformer.apply(p, x, cfg), t).mean())
      return chunked(p), full(p)

  (a, ga), (b, gb) = both(params)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6), ga, gb)


# μP: model.parameterization="mup" (Yang et al. 2022), docs/mup.md.

def _adam(model, steps, lr=1e-2, tokens_BT=None):
  """Params after `steps` AdamW steps (lr multipliers from the specs) on one batch, jitted."""
  import optax
  opt = OptimConfig(lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0, grad_clip=0.0)
  specs = transformer.param_specs(model)
  tx = optim.make(opt, steps, params_lib.decay_mask(specs), params_lib.lr_scales(specs))
  tokens_BT = _tokens(B=4, T=9, V=model.vocab_size) if tokens_BT is None else tokens_BT

  def loss(p):
    logits = transformer.apply(p, tokens_BT[:, :-1], model)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens_BT[:, 1:, None], -1).mean()

  @jax.jit
  def run(params):
    def body(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, updates), s), None
    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, steps)
    return params

  return run(transformer.init(model, jax.random.key(0)))


def test_standard_parameterization_is_unchanged():
  # Recorded before μP existed (3f0a179): the loss of 4 AdamW steps of tiny_config's
  # model, byte vocabulary, on one random batch. Bit-identical on the recording machine.
  c = tiny_config()
  tx = optim.make(c.optim, c.train.steps, params_lib.decay_mask(transformer.param_specs(c.model)),
                  params_lib.lr_scales(transformer.param_specs(c.model)))
  params = transformer.init(c.model, jax.random.key(0))
  toks = jnp.asarray(np.random.default_rng(0).integers(0, 257, (8, 33)), jnp.int32)
  batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "weights": jnp.ones((8, 32)),
           "segment_ids": jnp.ones((8, 32), jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(32), (8, 32))}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), rng=jax.random.key(1),
                           nonfinite=jnp.zeros((), jnp.int32))
  loss_fn = lambda p, b: lm.loss_fn(p, b, c)
  step = jax.jit(lambda s, b: train_step(s, b, loss_fn=loss_fn, tx=tx))
  losses = []
  for _ in range(4):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  recorded = [float.fromhex(h) for h in ("0x1.63d69e0000000p+2", "0x1.63d69e0000000p+2",
                                         "0x1.6001fa0000000p+2", "0x1.58d0360000000p+2")]
  np.testing.assert_allclose(losses, recorded, rtol=1e-5)


@pytest.mark.parametrize("kw", [VARIANTS["llama"], dict(VARIANTS["gpt2"], tie_embeddings=False)],
                         ids=["llama", "gpt2_untied"])
def test_mup_at_base_width_equals_standard(kw):
  standard = tiny_model(**kw)
  mup = tiny_model(**kw, parameterization="mup", mup_base_width=standard.d_model)
  assert mup.width_mult == 1.0 and mup.readout_mult == 1.0
  assert mup.attention_scale == standard.attention_scale
  a, b = _adam(standard, 3), _adam(mup, 3)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  tokens = _tokens()
  np.testing.assert_array_equal(transformer.apply(a, tokens, standard),
                                transformer.apply(b, tokens, mup))


def test_mup_scales_hidden_matrices_only():
  std = 0.02
  cfg = tiny_model(d_model=128, n_heads=4, parameterization="mup", mup_base_width=32,
                   mup_base_head_dim=8, tie_embeddings=False, init_std=std)
  specs = transformer.param_specs(cfg)
  scales = params_lib.lr_scales(transformer.param_specs(cfg))
  assert cfg.width_mult == 4.0 and cfg.readout_mult == 0.25
  assert cfg.attention_scale == pytest.approx(math.sqrt(8) / 32)  # 1/H, equal to 1/sqrt(8) at H=8
  for path in (("layers", "attn", "wq"), ("layers", "attn", "wo"), ("layers", "mlp", "w_in"),
               ("layers", "mlp", "w_out")):
    assert scales[path[0]][path[1]][path[2]] == 0.25, path
  for path in (("embed",), ("unembed",), ("final_norm", "scale"),
               ("layers", "attn_norm", "scale")):
    node = scales
    for key in path:
      node = node[key]
    assert node == 1.0, path
  params = transformer.init(cfg, jax.random.key(0))
  L = cfg.n_layers
  assert float(jnp.std(params["layers"]["attn"]["wq"])) == pytest.approx(std / 2, rel=0.05)
  assert float(jnp.std(params["layers"]["mlp"]["w_out"])) == pytest.approx(
      std / 2 / math.sqrt(2 * L), rel=0.05)
  assert float(jnp.std(params["embed"])) == pytest.approx(std, rel=0.05)
  assert float(jnp.std(params["unembed"])) == pytest.approx(std, rel=0.05)
  assert specs["layers"]["attn"]["wq"].decay and not specs["embed"].decay


def _coordinates(parameterization, width, base_head_dim):
  """Std of what 4 AdamW steps change in the residual stream, logits and layer 0's scores."""
  # Two heads at every width, so the head dim grows (16..128) and the score scale matters.
  model = tiny_model(vocab_size=32, d_model=width, n_layers=1, n_heads=2, mlp="gelu",
                     parameterization=parameterization, mup_base_width=32,
                     mup_base_head_dim=base_head_dim)
  tokens_BT = _tokens(B=8, T=17, V=32, seed=1)
  x_BT = tokens_BT[:, :-1]
  positions_BT = jnp.broadcast_to(jnp.arange(16), x_BT.shape)

  def measure(params):
    p0 = jax.tree.map(lambda a: a[0], params["layers"])
    e_BTD = transformer.embed(params, x_BT, positions_BT, model)
    h_BTD = layers.norm(p0["attn_norm"], e_BTD, model.norm, model.norm_eps)
    q_BTNH, k_BTNH = layers.dense(h_BTD, p0["attn"]["wq"]), layers.dense(h_BTD, p0["attn"]["wk"])
    s_BNTS = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BTNH) * model.attention_scale
    return (transformer.trunk(params, x_BT, model), transformer.apply(params, x_BT, model),
            s_BNTS)

  @jax.jit
  def change(before, after):
    return jnp.stack([jnp.std(a - b) for a, b in zip(measure(after), measure(before))])

  return np.asarray(change(transformer.init(model, jax.random.key(0)),
                           _adam(model, 4, lr=1e-2, tokens_BT=tokens_BT)))


def test_mup_coordinate_check():
  # The μP coordinate check (Yang et al. 2022, sec. 7; mup's coord_check): what a few
  # Adam steps change in the residual stream, the logits and the attention scores
  # keeps its size as the width grows 8x under μP, and grows with width under the
  # standard parameterization (the scores through q·k over a growing head dim).
  widths = (32, 64, 128, 256)
  mup = np.stack([_coordinates("mup", w, 16) for w in widths])
  # Finite-width noise (uncorrelated terms, ~1/sqrt(width)) fades as the width grows;
  # nothing grows. (With 1/sqrt(H) scores, mup_base_head_dim=0, the scores' change
  # grows 1.7x here and fails this.)
  assert (mup / mup[0] > 0.5).all() and (mup / mup[0] < 1.5).all(), mup
  standard = np.stack([_coordinates("standard", w, 0) for w in (32, 256)])
  assert (standard[1] / standard[0] > 2.5).all(), standard


def test_qk_norm_bounds_the_attention_scores():
  # RMS-normed queries and keys: scaling wq and wk leaves the model unchanged; without
  # QK-norm the same scaling changes the attention and so the output.
  tokens = _tokens()
  for qk_norm in (True, False):
    cfg = tiny_model(qk_norm=qk_norm)
    params = transformer.init(cfg, jax.random.key(0))
    attn = params["layers"]["attn"]
    big = {**params, "layers": {**params["layers"], "attn": {
        **attn, "wq": attn["wq"] * 30.0, "wk": attn["wk"] * 30.0}}}
    a, b = (transformer.apply(p, tokens, cfg) for p in (params, big))
    if qk_norm:
      assert set(attn["q_norm"]) == {"scale"} and attn["q_norm"]["scale"].shape == (
          cfg.n_layers, cfg.head_dim)
      np.testing.assert_allclose(a, b, atol=2e-4)
    else:
      assert "q_norm" not in attn and float(jnp.max(jnp.abs(a - b))) > 1e-2
  # Nothing else: the same tree but for the two scales, and their initial value (ones)
  # makes the normalized model equal to one with unit scales folded in.
  def described(specs):  # initializers are fresh closures per call: compare the rest
    return {path: (s.shape, s.axes, s.decay, s.embedding, s.lr_scale)
            for path, s in traverse_util.flatten_dict(specs, sep="/").items()}
  on = described(transformer.param_specs(tiny_model(qk_norm=True)))
  off = described(transformer.param_specs(tiny_model()))
  assert set(on) - set(off) == {"layers/attn/q_norm/scale", "layers/attn/k_norm/scale"}
  assert {k: on[k] for k in off} == off


@pytest.mark.parametrize("dtype,out_dtype,tied,wide", [
    (jnp.float32, None, False, False), (jnp.bfloat16, jnp.float32, False, False),
    (jnp.float32, jnp.float32, True, False), (jnp.float32, None, False, True),
    (jnp.bfloat16, jnp.float32, False, True), (jnp.float32, None, True, True)])
def test_matmul_gradient_equals_autodiff_and_stays_in_ynnpack(dtype, out_dtype, tied, wide):
  # layers.matmul computes the weight gradient from a transposed copy of x (or, for an
  # x wider than the output, of dy), so that on CPU the product has the layout YNNPACK
  # takes; values and dtypes must be those of plain jnp.matmul's autodiff. tied: the
  # weight is the transpose of the parameter, as the tied embedding's output projection.
  rng = np.random.default_rng(0)
  k, n = (192, 64) if wide else (64, 192)
  x = jnp.asarray(rng.standard_normal((512, k)), dtype)
  w = jnp.asarray(rng.standard_normal((n, k) if tied else (k, n)), dtype)
  weight = (lambda w: w.T) if tied else (lambda w: w)
  loss = lambda mm: lambda x, w: jnp.sum(jnp.sin(mm(x, weight(w)).astype(jnp.float32)))
  ours = jax.jit(jax.grad(loss(lambda x, w: layers.matmul(x, w, out_dtype)), (0, 1)))
  plain = jax.grad(loss(lambda x, w: jnp.matmul(x, w, preferred_element_type=out_dtype)), (0, 1))
  tol = 1e-4 if dtype == jnp.float32 else 2e-2  # the products sum in another order
  for a, b in zip(ours(x, w), plain(x, w)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tol, atol=tol)
  if jax.default_backend() == "cpu" and dtype == jnp.float32:
    hlo = ours.lower(x, w).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]  # YNNPACK's products sit in fused computations
    assert not [line for line in entry[:entry.index("\n}")].splitlines() if " dot(" in line]
    # A wide x: dy goes through the one-trip loop that keeps its transposed copy out of
    # the fusions computing dy (a speed matter only this HLO shows).
    assert (" while(" in entry) == wide


def test_remat_dots_keeps_the_products_of_layers_matmul(capsys):
  # A remat policy sees layers.matmul's custom VJP as one opaque call: its output is
  # named so that model.remat="dots" keeps it, as it keeps plain products.
  x, w = jnp.ones((32, 16)), jnp.ones((16, 48))
  f = jax.checkpoint(lambda x, w: jnp.sum(jnp.tanh(layers.matmul(x, w))),
                     policy=transformer.REMAT_POLICIES["dots"])
  jax.ad_checkpoint.print_saved_residuals(f, x, w)
  assert "f32[32,48]" in capsys.readouterr().out
