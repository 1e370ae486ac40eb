"""--dry_run planning and the out-of-memory check before the first step."""

import jax
import numpy as np
import pytest

from jaxlm import config as config_lib, hardware, sharding
from jaxlm.config import ConfigError
from jaxlm.train import plan
from jaxlm.train.step import Trainer
from tests.helpers import tiny_config


def _compiled(**dotted):
  config = tiny_config(**{"mesh.data": 1, **dotted})
  trainer = Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]),
                    np.ones(config.model.vocab_size, np.int32))
  return plan.compile_step(trainer), config


def test_step_that_does_not_fit_says_what_to_change(monkeypatch):
  compiled, config = _compiled()
  monkeypatch.setattr(plan, "device_memory_limit", lambda: 1024)
  with pytest.raises(ConfigError,
                     match="train.microbatches.*train.batch_size.*model.remat=full.*mesh.fsdp"):
    plan.check_fits(compiled, config)


def test_step_that_fits_passes(monkeypatch):
  compiled, config = _compiled()
  monkeypatch.setattr(plan, "device_memory_limit", lambda: 64 * 2**30)
  plan.check_fits(compiled, config)


def test_describe_reports_sharded_bytes():
  config = tiny_config(**{"mesh.data": 1, "mesh.fsdp": 8})
  text = plan.describe(config)
  assert "params          " in text and "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in text
  assert "XLA temporaries" in text


def test_microbatches_shrink_the_step_temporaries():
  # The same batch in 4 parts: one part's activations alive at a time.
  temp = {k: _compiled(**{"train.batch_size": 16, "train.microbatches": k,
                          "model.d_model": 64})[0].memory_analysis().temp_size_in_bytes
          for k in (1, 4)}
  assert temp[4] < 0.6 * temp[1], temp


def test_hbm_bytes_count_every_layer_of_a_scanned_stack():
  # XLA's cost analysis takes a scan's body once; plan.hbm_bytes extrapolates from 1 and 2
  # unrolled layers, and lands within 2% of the same model compiled unrolled.
  c = tiny_config(**{"model.n_layers": 4, "model.layer_loop": "scan", "mesh.data": 1})
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  scanned = Trainer(c, mesh, np.ones(c.model.vocab_size, np.int32))
  unrolled = Trainer(config_lib.replace(c, **{"model.layer_loop": "unroll"}), mesh,
                     np.ones(c.model.vocab_size, np.int32))
  compiled = plan.compile_step(scanned)
  whole = hardware.bytes_accessed(plan.compile_step(unrolled))
  assert hardware.bytes_accessed(compiled) < 0.8 * whole  # the body counted once
  assert plan.hbm_bytes(compiled, scanned) == pytest.approx(whole, rel=0.02)


@pytest.mark.parametrize("overrides", [
    {"train.microbatches": 4, "model.n_layers": 3},                 # microbatches and layers
    {"task.kind": "seq2seq", "model.encoder_layers": 3, "model.n_layers": 3},  # both stacks
], ids=["microbatches", "encoder_decoder"])
def test_hbm_bytes_count_every_microbatch_and_both_stacks(overrides):
  # The microbatch loop and an encoder-decoder's two stacks, scanned, each counted once by
  # XLA; plan.hbm_bytes lands within 3% of the same step with every loop unrolled.
  c = tiny_config(**{"model.layer_loop": "scan", "mesh.data": 1, "train.batch_size": 8,
                     **overrides})
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  scanned = Trainer(c, mesh, np.ones(c.model.vocab_size, np.int32))
  unrolled = Trainer(config_lib.replace(c, **{"model.layer_loop": "unroll",
                                              "train.microbatch_loop": "unroll"}),
                     mesh, np.ones(c.model.vocab_size, np.int32))
  compiled = plan.compile_step(scanned)
  whole = hardware.bytes_accessed(plan.compile_step(unrolled))
  assert hardware.bytes_accessed(compiled) < 0.8 * whole
  assert plan.hbm_bytes(compiled, scanned) == pytest.approx(whole, rel=0.03)
