"""Plan a run before spending hardware: parameters, per-device memory, FLOPs, communication.

`describe()` backs `--dry_run`; `check_fits()` stops a run whose compiled step
needs more memory than a device has, before the first step.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from jaxlm import params as params_lib
from jaxlm import sharding
from jaxlm.config import Config, ConfigError
from jaxlm.train import comm
from jaxlm.train.step import Trainer


def _device_bytes(abstract_tree) -> int:
  """Bytes of a sharded abstract tree that one device holds (the largest shard)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return total


def device_memory_limit() -> int | None:
  """Usable bytes of device 0, where the backend reports it (GPU, TPU); None on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("bytes_limit")


def compile_step(trainer):
  """Ahead-of-time compiled train step for the trainer's abstract state and batch."""
  return trainer.step.lower(trainer.abstract_state(), trainer.abstract_batch()).compile()


def check_fits(compiled, config: Config) -> None:
  """Raises ConfigError naming what to change when the step does not fit device memory."""
  limit = device_memory_limit()
  mem = compiled.memory_analysis()
  if limit is None or mem is None:
    return
  need = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  if need > limit:
    raise ConfigError(
        f"the train step needs {need / 2**30:.1f} GiB per device but "
        f"{limit / 2**30:.1f} GiB are available: raise train.microbatches "
        f"({config.train.microbatches}; the same batch in parts), lower train.batch_size "
        f"({config.train.batch_size}) or data.seq_len ({config.data.seq_len}), set "
        "model.remat=full, or shard wider with mesh.fsdp / mesh.tensor")


def describe(config: Config) -> str:
  """A human-readable plan: sizes, per-device bytes, FLOPs and XLA's memory analysis."""
  c = config
  mesh = sharding.make_mesh(c.mesh)
  trainer = Trainer(c, mesh, np.ones(c.model.vocab_size, np.int32))
  counts = params_lib.param_count(trainer.specs)
  state = trainer.abstract_state()
  tokens = c.train.batch_size * c.data.seq_len
  per_token = trainer.task.flops_per_token()
  compiled = compile_step(trainer)
  mem = compiled.memory_analysis()
  lines = [
      f"experiment      {c.name}",
      f"devices         {jax.device_count()} x {jax.devices()[0].device_kind}; "
      f"mesh {dict(mesh.shape)}",
      f"params          {counts['total']:,} ({counts['non_embedding']:,} non-embedding)",
      f"params/device   {_device_bytes(state.params) / 2**20:,.1f} MiB",
      f"optimizer/dev   {_device_bytes(state.opt_state) / 2**20:,.1f} MiB",
      f"tokens/step     {tokens:,} (batch {c.train.batch_size} x length {c.data.seq_len}"
      + (f", in {c.train.microbatches} microbatches)" if c.train.microbatches > 1 else ")"),
      f"FLOPs/step      {per_token * tokens:.3e} ({c.task.kind}: {per_token:.3e} per token)",
  ]
  if mem is not None:
    lines += [
        f"XLA arguments   {mem.argument_size_in_bytes / 2**20:,.1f} MiB per device",
        f"XLA temporaries {mem.temp_size_in_bytes / 2**20:,.1f} MiB per device "
        "(activations and workspace)",
        f"XLA outputs     {mem.output_size_in_bytes / 2**20:,.1f} MiB per device "
        f"({mem.alias_size_in_bytes / 2**20:,.1f} MiB aliased to donated inputs)",
    ]
  limit = device_memory_limit()
  if limit:
    lines.append(f"device memory   {limit / 2**30:,.1f} GiB")
  try:
    check_fits(compiled, c)
    lines.append("fits            yes" if limit else "fits            (no device memory limit "
                 "reported on this backend)")
  except ConfigError as e:
    lines.append(f"fits            NO: {e}")
  return "\n".join(lines + comm.report(*communication(compiled, trainer, counts["total"])))


def communication(compiled, trainer, n_params: int) -> tuple[list, dict]:
  """(the compiled step's collectives, the analytic minimum for its mesh) (comm.py)."""
  c, shape = trainer.config, dict(trainer.mesh.shape)
  replicas = shape.get("data", 1) * shape.get("fsdp", 1)
  items = comm.collectives(compiled.as_text(), trainer.mesh.size)
  least = comm.minimum(
      n_params, shape, tokens_per_device=c.train.batch_size * c.data.seq_len // replicas,
      d_model=c.model.d_model, n_layers=c.model.n_layers,
      grad_bytes=np.dtype(c.model.param_dtype).itemsize,
      param_bytes=np.dtype(c.model.param_dtype).itemsize,
      act_bytes=np.dtype(c.model.compute_dtype).itemsize)
  return items, least
