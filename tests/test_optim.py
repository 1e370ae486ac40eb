"""train/optim.py: schedules (cosine, constant, WSD) and the optimizers optax offers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import config as config_lib
from jaxlm import sharding
from jaxlm.config import ConfigError, OptimConfig
from jaxlm.data import pipeline
from jaxlm.models import transformer
from jaxlm.run import checkpoint
from jaxlm.train import optim
from jaxlm.train.step import Trainer
from tests.helpers import tiny_config


def _lrs(total, **kw):
  s = optim.schedule(OptimConfig(lr=1.0, **kw), total)
  return [float(s(i)) for i in range(total)]


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_warms_up_holds_and_decays(shape):
  lrs = _lrs(100, schedule="wsd", warmup_steps=10, decay_steps=20, decay_shape=shape,
             min_lr_ratio=0.0)
  assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)
  assert all(x == 1.0 for x in lrs[10:81])  # stable from warmup to the decay
  frac = np.arange(1, 20) / 20  # steps 81..99 decay from 1 toward 0
  want = {"linear": 1 - frac, "cosine": 0.5 * (1 + np.cos(math.pi * frac)),
          "1-sqrt": 1 - np.sqrt(frac)}[shape]
  np.testing.assert_allclose(lrs[81:], want, atol=1e-6)


def test_wsd_decay_fraction_and_min_lr():
  lrs = _lrs(50, schedule="wsd", warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.1)
  assert lrs[39] == 1.0 and lrs[40] == 1.0 and lrs[41] < 1.0  # the last 10 steps decay
  assert lrs[49] == pytest.approx(0.1 + 0.9 * 0.1)
  with pytest.raises(ConfigError, match="optim.decay_shape='sqrt'"):
    OptimConfig(schedule="wsd", decay_shape="sqrt")


def _trainer(**dotted):
  config = tiny_config(**{"train.batch_size": 8, **dotted})
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  return Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]),
                 tok.token_bytes()), tok


@pytest.mark.parametrize("name", ["adamw", "lion", "adafactor", "muon"])
def test_each_optimizer_learns_and_resumes_exactly(name, tmp_path):
  lr = {"lion": 3e-4, "muon": 3e-3}.get(name, 3e-3)
  trainer, tok = _trainer(**{"optim.name": name, "optim.lr": lr, "optim.warmup_steps": 0,
                             "optim.schedule": "constant", "train.steps": 8})
  it = pipeline.train_iterator(trainer.task.train_dataset(tok, 0))
  batches = [trainer.device_batch(next(it)) for _ in range(4)]
  state = trainer.init(jax.random.key(0))
  losses = []
  for b in batches[:2]:
    state, m = trainer.step(state, b)
    losses.append(float(m["loss"]))
  mngr = checkpoint.manager(str(tmp_path), keep=1, async_save=False)
  checkpoint.save(mngr, 2, state, {}, trainer.config)
  restored, _ = checkpoint.restore(mngr, trainer.abstract_state())
  for b in batches[2:]:
    state, m = trainer.step(state, b)
    restored, m2 = trainer.step(restored, b)
    losses.append(float(m["loss"]))
    assert float(m["loss"]) == float(m2["loss"])  # exact resume
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert losses[-1] < losses[0], losses


def test_muon_takes_the_hidden_matrices_and_adam_the_rest():
  specs = transformer.param_specs(tiny_config().model)
  dims = optim.muon_dimensions(specs)
  attn, mlp = dims["layers"]["attn"], dims["layers"]["mlp"]
  # (L, D, N, H): reduce over D, out over (N, H); (L, N, H, D): reduce over (N, H), out D.
  assert attn["wq"].reduction_axis == 1 and attn["wq"].output_axis == (2, 3)
  assert attn["wo"].reduction_axis == (1, 2) and attn["wo"].output_axis == 3
  assert mlp["w_out"].reduction_axis == (1,) and mlp["w_out"].output_axis == 2
  assert dims["embed"] is None and dims["layers"]["attn_norm"]["scale"] is None
  with pytest.raises(ConfigError, match="optim.name='muon'.*mup"):
    tiny_config(**{"optim.name": "muon", "model.parameterization": "mup"})


def test_decay_mask_and_lr_scales_apply_to_every_optimizer():
  # One step from zero gradients: only decay moves a parameter, and only where the
  # mask says; μP's multipliers scale it.
  for name in ("adamw", "lion", "adafactor"):
    c = config_lib.replace(OptimConfig(), name=name, lr=0.1, warmup_steps=0,
                           schedule="constant", weight_decay=0.5, grad_clip=0.0)
    params = {"w": jnp.ones((4, 4)), "b": jnp.ones((4,))}
    tx = optim.make(c, 10, {"w": True, "b": False}, {"w": 0.5, "b": 1.0})
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * 0.5, rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(updates["b"], 0.0)
