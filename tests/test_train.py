import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import config as config_lib
from jaxlm import params as params_lib
from jaxlm import sharding
from jaxlm.config import ConfigError, OptimConfig
from jaxlm.data import pipeline
from jaxlm.models import transformer
from jaxlm.tasks import lm
from jaxlm.train import optim
from jaxlm.train.step import Trainer
from jaxlm.train.workdir import prepare_workdir
from tests.helpers import tiny_config


def _setup(config):
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  trainer = Trainer(config, sharding.make_mesh(config.mesh), tok.token_bytes())
  batch = next(pipeline.train_iterator(
      pipeline.train_dataset(config.data, tok, config.train.batch_size, 0)))
  return trainer, trainer.device_batch(batch), tok


def _train(config, n):
  """(losses, final state) of n steps on one fixed batch."""
  trainer, batch, _ = _setup(config)
  state = trainer.init(jax.random.key(0))
  losses = []
  for _ in range(n):
    state, m = trainer.step(state, batch)
    losses.append(float(m["loss"]))
  return losses, state


def test_tiny_model_overfits_one_batch():
  config = tiny_config(**{"train.steps": 80, "optim.warmup_steps": 5, "optim.lr": 1e-2,
                          "optim.schedule": "constant", "optim.weight_decay": 0.0,
                          "model.d_model": 64})
  losses, state = _train(config, 80)
  assert losses[0] > 5.0  # about ln(257)
  assert losses[-1] < 0.5, losses[::10]
  assert int(state.step) == 80


def test_one_step_lowers_loss_on_fixed_batch():
  config = tiny_config(**{"optim.warmup_steps": 0, "optim.schedule": "constant"})
  trainer, batch, _ = _setup(config)
  state = trainer.init(jax.random.key(0))
  before = lm.loss_fn(state.params, batch, config)[0]
  state, _ = trainer.step(state, batch)
  after = lm.loss_fn(state.params, batch, config)[0]
  assert float(after) < float(before)


def test_layer_loop_leaves_training_unchanged():
  # Scanned or unrolled layers (and the blocked causal attention under both):
  # the same losses step after step, and the same params.
  runs = {}
  for loop in ("scan", "unroll"):
    config = tiny_config(**{"model.layer_loop": loop, "data.seq_len": 64,
                            "model.max_seq_len": 64})
    losses, state = _train(config, 3)
    runs[loop] = losses, state.params
  assert runs["scan"][0] == pytest.approx(runs["unroll"][0], rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), runs["scan"][1],
               runs["unroll"][1])


def test_eval_bits_per_byte_is_loss_over_bytes():
  config = tiny_config()
  trainer, batch, tok = _setup(config)
  state = trainer.init(jax.random.key(0))
  out = trainer.run_eval(state.params, [jax.device_get(batch)])
  # Byte tokenizer: each target is one byte, so bpb = loss / ln 2.
  assert out["val_bpb"] == pytest.approx(out["val_loss"] / math.log(2), rel=1e-5)


def test_weight_decay_mask_skips_norms_and_embeddings():
  mask = params_lib.decay_mask(transformer.param_specs(tiny_config().model))
  assert mask["embed"] is False
  assert mask["layers"]["attn_norm"]["scale"] is False
  assert mask["layers"]["mlp"]["w_in"] is True


def test_schedule_warmup_and_cosine():
  s = optim.schedule(OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1), 110)
  assert float(s(0)) == 0.0
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(60)) == pytest.approx(0.55, abs=1e-3)
  assert float(s(110)) == pytest.approx(0.1, abs=1e-3)


def test_workdir_with_another_config_is_refused(tmp_path):
  prepare_workdir(tiny_config(), str(tmp_path))
  prepare_workdir(tiny_config(), str(tmp_path))  # same config: resume is fine
  with pytest.raises(ConfigError, match="differs in model.d_model"):
    prepare_workdir(tiny_config(**{"model.d_model": 64}), str(tmp_path))


def test_lr_scales_multiply_each_update():
  import jax.numpy as jnp
  import numpy as np
  c = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.1)
  params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
  grads = {"w": jnp.full((3, 3), 0.5), "b": jnp.full(3, -2.0)}
  mask = {"w": True, "b": False}
  plain = optim.make(c, 10, mask)
  scaled = optim.make(c, 10, mask, {"w": 0.25, "b": 1.0})
  want, _ = plain.update(grads, plain.init(params), params)
  got, _ = scaled.update(grads, scaled.init(params), params)
  np.testing.assert_allclose(got["w"], 0.25 * want["w"], rtol=1e-6)  # decay included
  np.testing.assert_array_equal(got["b"], want["b"])
  # All ones (standard, or μP at its base width): the very same optimizer state.
  ones = optim.make(c, 10, mask, {"w": 1.0, "b": 1.0})
  assert (jax.tree.structure(ones.init(params)) == jax.tree.structure(plain.init(params)))


def test_z_loss_adds_the_mean_squared_log_normalizer():
  config = tiny_config()
  trainer, batch, _ = _setup(config)
  params = trainer.init(jax.random.key(0)).params
  plain, _ = lm.loss_fn(params, batch, config)
  z = config_lib.replace(config, **{"train.z_loss": 1e-2})
  loss, stats = lm.loss_fn(params, batch, z)
  logits = transformer.apply(params, batch["inputs"], config.model,
                             positions_BT=batch["positions"])
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  w = batch["weights"]
  want = 1e-2 * float(jnp.sum(jnp.square(lse) * w) / jnp.sum(w))
  np.testing.assert_allclose(float(stats["z_loss"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(loss), float(plain) + want, rtol=1e-5)
  with pytest.raises(ConfigError, match="train.z_loss"):
    config_lib.replace(config, **{"train.z_loss": 1e-4, "task.kind": "classify"})


@pytest.mark.parametrize("mesh", [dict(data=1), dict(data=2, fsdp=2),
                                  dict(data=1, fsdp=2, tensor=2)],
                         ids=["1", "data2_fsdp2", "fsdp2_tensor2"])
def test_microbatches_take_the_same_step_as_the_whole_batch(mesh):
  # Gradient accumulation over 4 parts equals one step on the whole batch (to float
  # rounding), on a mesh that splits the batch and the params; the parts unrolled
  # (train.microbatch_loop=unroll) on the first mesh too.
  dotted = {"train.batch_size": 16, **{f"mesh.{k}": v for k, v in mesh.items()},
            "optim.warmup_steps": 0, "optim.schedule": "constant"}
  runs = {}
  for k in (1, 4) + (("unroll",) if mesh == dict(data=1) else ()):
    parts = {"train.microbatches": 4, "train.microbatch_loop": k} if k == "unroll" else \
        {"train.microbatches": k}
    config = tiny_config(**dotted, **parts)
    devices = jax.devices()[:math.prod(mesh.values())]
    tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
    trainer = Trainer(config, sharding.make_mesh(config.mesh, devices), tok.token_bytes())
    it = pipeline.train_iterator(pipeline.train_dataset(config.data, tok, 16, 0))
    state, losses = trainer.init(jax.random.key(0)), []
    for _ in range(3):
      state, m = trainer.step(state, trainer.device_batch(next(it)))
      losses.append(float(m["loss"]))
    runs[k] = losses, state.params
  for k in set(runs) - {1}:
    np.testing.assert_allclose(runs[k][0], runs[1][0], rtol=2e-5)
    for a, b in zip(jax.tree.leaves(runs[k][1]), jax.tree.leaves(runs[1][1])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_microbatches_that_do_not_split_the_batch_evenly_are_refused():
  with pytest.raises(ConfigError, match="train.microbatches=3.*divisor of train.batch_size=8"):
    tiny_config(**{"train.batch_size": 8, "train.microbatches": 3})
  config = tiny_config(**{"train.batch_size": 8, "train.microbatches": 4, "mesh.data": 8})
  with pytest.raises(ConfigError, match="8 devices.*divisible by microbatches x 8"):
    Trainer(config, sharding.make_mesh(config.mesh), np.ones(257))
  config = tiny_config(**{"train.batch_size": 12, "mesh.data": 8})
  with pytest.raises(ConfigError, match="train.batch_size=12 .* 8 devices.*multiple of 8"):
    Trainer(config, sharding.make_mesh(config.mesh), np.ones(257))


@pytest.mark.parametrize("mesh", [dict(data=4), dict(data=2, tensor=2)],
                         ids=["data4", "data2_tensor2"])
def test_microbatches_per_data_group_weight_uneven_rows(mesh):
  # Each data group accumulates its own parts (accumulated_grad's local form): with the
  # target weights on a few rows only, groups and parts carry different weights (one none),
  # and the loss, the statistics (max_* as maxima) and the params still equal one step on
  # the whole batch.
  dotted = {"train.batch_size": 16, **{f"mesh.{k}": v for k, v in mesh.items()},
            "optim.warmup_steps": 0, "optim.schedule": "constant"}
  runs = {}
  for k in (1, 4):
    config = tiny_config(**dotted, **{"train.microbatches": k})
    devices = jax.devices()[:math.prod(mesh.values())]
    tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
    trainer = Trainer(config, sharding.make_mesh(config.mesh, devices), tok.token_bytes())
    batch = next(pipeline.train_iterator(pipeline.train_dataset(config.data, tok, 16, 0)))
    batch["weights"] = batch["weights"] * (np.arange(16)[:, None] < 5)
    state, metrics = trainer.step(trainer.init(jax.random.key(0)), trainer.device_batch(batch))
    runs[k] = metrics, state.params
  (whole, p1), (parts, p4) = runs[1], runs[4]
  np.testing.assert_allclose(float(parts["loss"]), float(whole["loss"]), rtol=2e-5)
  np.testing.assert_allclose(float(parts["grad_norm"]), float(whole["grad_norm"]), rtol=2e-5)
  for key in ("max_attention_logit", "logits_rms"):
    np.testing.assert_allclose(np.asarray(parts["stats"][key]),
                               np.asarray(whole["stats"][key]), rtol=2e-3)
  # Adam's first step moves each weight by about lr (3e-3) whatever its gradient's size, so
  # the rounding of near-zero gradients (rows without weight) shows: 3e-5 here before the
  # per-group loop too.
  for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_unlogged_step_takes_the_same_step_without_statistics():
  """The loop's steps between log steps drop the statistics, not the update; with
  train.layer_stats off there is one step function."""
  trainer, batch, _ = _setup(tiny_config())
  logged, m = trainer.step(trainer.init(jax.random.key(0)), batch)
  unlogged, m2 = trainer.unlogged_step(trainer.init(jax.random.key(0)), batch)
  assert "layers.attn.wq" in m["stats"] and "max_attention_logit" in m["stats"]
  assert "stats" not in m2 and float(m2["loss"]) == float(m["loss"])
  for a, b in zip(*(jax.tree.leaves((s.params, s.opt_state)) for s in (logged, unlogged))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  trainer.compile_steps()  # ahead of time, then called as before
  assert isinstance(trainer.unlogged_step, jax.stages.Compiled)
  assert "stats" in trainer.step(logged, batch)[1]
  quiet = Trainer(tiny_config(**{"train.layer_stats": False}), trainer.mesh, trainer.token_bytes)
  assert quiet.unlogged_step is quiet.step
  quiet.compile_steps()
  assert quiet.unlogged_step is quiet.step
