"""Planning for a TPU slice from this CPU: slice names, the step compiled by XLA's TPU compiler
for libtpu's compile-only devices, per-chip memory, communication and the roofline
(jaxlm/hardware.py, jaxlm/train/plan.py, `--dry_run --topology`)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxlm import config as config_lib
from jaxlm import hardware, registry, sharding
from jaxlm import params as params_lib
from jaxlm.train import plan
from jaxlm.train.step import Trainer
from tests.conftest import xla_flags

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu (pip install 'jaxlm[topology]') is not installed")
TINY = ["--set", "model.d_model=128", "--set", "model.n_layers=2", "--set", "model.n_heads=4",
        "--set", "model.n_kv_heads=2", "--set", "model.vocab_size=1024",
        "--set", "model.max_seq_len=256", "--set", "data.seq_len=256",
        "--set", "data.vocab_size=1024", "--set", "train.batch_size=16"]


def test_slice_names_give_chips_grid_and_libtpu_options():
  s = hardware.parse_slice("v5p-256")  # v5p counts TensorCores, two per chip
  assert (s.chips, s.topology_name, s.chip.name) == (128, "v5:4x4x8", "TPU v5p")
  assert s.options() == {"chips_per_host_bounds": (2, 2, 1), "wrap": (True, True, True),
                         "chip_config_name": "megacore"}
  assert hardware.parse_slice("v5e-64").topology_name == "v5e:8x8"
  assert hardware.parse_slice("v6e-256").options()["wrap"] == (True, True, False)
  assert hardware.parse_slice("v5p:2x4x4").chips == 32
  for bad, says in [("v7-8", "not a TPU slice name"), ("v5p-100", "known: v5p-8, v5p-16"),
                    ("v5e:4x4x4", "2-D grids")]:
    with pytest.raises(ValueError, match=says):
      hardware.parse_slice(bad)


def test_roofline_takes_the_slowest_of_compute_memory_and_links():
  chip = hardware.CHIPS["v5p"]
  est = hardware.estimate(chip, flops=459e12, hbm_bytes=2765e9 / 2, comm_bytes=600e9 / 4,
                          model_flops=459e12 * 0.75)
  assert (est.compute_s, est.memory_s, est.comm_s) == pytest.approx((1.0, 0.5, 0.25))
  assert est.overlapped_s == pytest.approx(1.0) and est.serial_s == pytest.approx(1.75)
  assert est.bound == "compute" and est.mfu(est.overlapped_s) == pytest.approx(0.75)
  assert hardware.chip_of(type("D", (), {"device_kind": "TPU v5 lite"})()).name == "TPU v5e"
  assert hardware.chip_of(type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()).peak_flops \
      == 989e12


def _run(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="")
  return subprocess.run([sys.executable, "-m", "jaxlm.main", *args], capture_output=True,
                        text=True, env=env, timeout=600)


@needs_libtpu
def test_dry_run_compiles_the_step_for_a_tpu_slice_on_this_cpu():
  # Layers unrolled: the step's HBM bytes need no second compile (tests/test_plan.py checks
  # the scanned stack's re-compiles, on CPU devices); a TPU compile takes seconds even here.
  out = _run("--experiment=llama_small", "--dry_run", "--topology=v5e-8", *TINY,
             "--set", "mesh.data=2", "--set", "mesh.fsdp=4", "--set", "model.layer_loop=unroll")
  assert out.returncode == 0, out.stderr[-2000:]
  text = out.stdout
  assert "8 x TPU v5 lite (v5e-8, chips v5e:2x4" in text
  assert "device memory   16.0 GiB" in text and "fits            yes" in text
  assert "communication" in text and "step time" in text and "on TPU v5e" in text
  assert out.stderr.strip() == ""  # libtpu's metadata-server warnings are kept quiet


@needs_libtpu
def test_dry_run_says_when_the_step_does_not_fit_a_chip():
  # (B, T, V) float32 logits of 2048 x 2048 x 32768 split 8 ways: 64 GiB per chip, which
  # XLA's TPU compiler itself refuses.
  c = config_lib.replace(registry.experiment("llama_small"), **{
      "model.d_model": 128, "model.n_layers": 2, "model.n_heads": 4, "model.n_kv_heads": 2,
      "model.max_seq_len": 2048, "data.seq_len": 2048, "train.batch_size": 2048})
  text = plan.describe(c, "v5e-8")
  assert "fits            NO: XLA: Ran out of memory on HBM" in text
  assert "raise train.microbatches" in text


def test_topology_needs_dry_run_and_a_known_slice():
  out = _run("--experiment=llama_small", "--topology=v5e-8")
  assert out.returncode == 2 and out.stderr.strip() == (
      "error: --topology=v5e-8 only plans a run; add --dry_run")
  out = _run("--experiment=llama_small", "--dry_run", "--topology=v9-8")
  assert out.returncode == 2 and out.stderr.strip().startswith(
      "error: --topology='v9-8' is not a TPU slice name")


@needs_libtpu
def test_fsdp_gradients_are_reduce_scattered_on_a_tpu_slice():
  # XLA's TPU compiler, unlike its CPU one, reduce-scatters FSDP's gradients, but only where
  # their layout allows: with each weight constrained whole for its use (a plain
  # constraint), the layers' and the embedding's gradients were all-reduced whole, 1.01x
  # the minimum here; sharding.gathered scatters them back into the parameters' shards:
  # 0.65x (bf16 gradients of bf16 matmuls are reduced in bf16, below the minimum's float32).
  _, devices = hardware.devices("v5p-16")
  c = config_lib.replace(registry.experiment("llama_small"), **{
      "mesh.data": 1, "mesh.fsdp": 8, "train.batch_size": 16, "model.remat": "full",
      "model.n_layers": 2, "model.d_model": 256, "model.n_heads": 4, "model.n_kv_heads": 2,
      "model.vocab_size": 8192, "model.max_seq_len": 256, "data.seq_len": 256})
  trainer = Trainer(c, sharding.make_mesh(c.mesh, devices), np.ones(c.model.vocab_size, np.int32))
  items, least = plan.communication(plan.compile_step(trainer), trainer,
                                    params_lib.param_count(trainer.specs)["total"])
  assert "all-gather" in {x.kind for x in items}
  assert sum(x.moved_bytes for x in items) <= 0.8 * sum(least.values())


@needs_libtpu
def test_tied_table_gradient_is_reduced_once_on_a_tpu_slice_with_tensor_axes():
  # Under data x fsdp x tensor, XLA's TPU compiler reduced a tied table's two gradients
  # apart (the lookup's scatter-add over data x fsdp, the output projection's over data):
  # 1.55x the minimum here. transformer.device_tables sums them on each device first and
  # reduces the sum once: 1.08x (gpt2_small at its own size: 1.13 -> 0.99); gathering the
  # copies in the compute dtype (bf16), not the parameters' float32: 1.01x.
  _, devices = hardware.devices("v5p-16")
  c = config_lib.replace(registry.experiment("gpt2_small"), **{
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "train.batch_size": 16,
      "model.n_layers": 2, "model.d_model": 256, "model.n_heads": 4, "model.vocab_size": 8192,
      "model.max_seq_len": 256, "data.seq_len": 256})
  trainer = Trainer(c, sharding.make_mesh(c.mesh, devices), np.ones(c.model.vocab_size, np.int32))
  items, least = plan.communication(plan.compile_step(trainer), trainer,
                                    params_lib.param_count(trainer.specs)["total"])
  assert sum(x.moved_bytes for x in items) <= 1.05 * sum(least.values())
  copies = [x for x in items if x.kind == "all-gather" and "broadcast_in_dim" in x.op_name]
  assert copies and all(x.shape.startswith("bf16[") for x in copies)
