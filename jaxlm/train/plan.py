"""Plan a run before spending hardware: parameters, per-device memory, FLOPs, communication,
and a roofline estimate of step time.

`describe()` backs `--dry_run`, also for a TPU slice this machine does not have
(`--topology=v5p-256`: the step compiled ahead of time by XLA's TPU compiler for
libtpu's compile-only devices, jaxlm/hardware.py); `check_fits()` stops a run whose
compiled step needs more memory than a device has, before the first step.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from jaxlm import config as config_lib
from jaxlm import hardware
from jaxlm import params as params_lib
from jaxlm import sharding
from jaxlm.config import Config, ConfigError
from jaxlm.models import transformer
from jaxlm.train import comm
from jaxlm.train.step import Trainer


def _device_bytes(abstract_tree) -> int:
  """Bytes of a sharded abstract tree that one device holds (the largest shard)."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(abstract_tree))


def device_memory_limit() -> int | None:
  """Usable bytes of device 0, where the backend reports it (GPU, TPU); None on CPU."""
  return (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")


def compile_step(trainer):
  """Ahead-of-time compiled train step for the trainer's abstract state and batch."""
  return trainer.step.lower(trainer.abstract_state(), trainer.abstract_batch()).compile()


def check_fits(compiled, config: Config, limit: int | None = None) -> None:
  """Raises ConfigError naming what to change when the step does not fit device memory
  (`limit` bytes; default: what device 0 reports)."""
  limit = limit or device_memory_limit()
  mem = compiled.memory_analysis()
  if limit is None or mem is None:
    return
  need = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  if need > limit:
    raise ConfigError(f"the train step needs {need / 2**30:.1f} GiB per device but "
                      f"{limit / 2**30:.1f} GiB are available: {_remedies(config)}")


def _remedies(config: Config) -> str:
  return (f"raise train.microbatches ({config.train.microbatches}; the same batch in parts), "
          f"lower train.batch_size ({config.train.batch_size}) or data.seq_len "
          f"({config.data.seq_len}), set model.remat=full, or shard wider with mesh.fsdp / "
          "mesh.tensor")


def describe(config: Config, topology: str | None = None) -> str:
  """A human-readable plan: sizes, per-device bytes, FLOPs, XLA's memory analysis, the
  step's communication and its roofline time, on this machine's devices or, given a
  TPU slice name (`v5p-256`), on that slice's."""
  c = config
  devices, limit = jax.devices(), device_memory_limit()
  chip = hardware.chip_of(devices[0])
  where = f"{len(devices)} x {devices[0].device_kind}"
  if topology:
    spec, devices = hardware.devices(topology)
    chip, limit = spec.chip, int(spec.chip.hbm_bytes)
    where = (f"{len(devices)} x {devices[0].device_kind} ({spec.name}, chips "
             f"{spec.topology_name}; compiled ahead of time on this {jax.default_backend()})")
  mesh = sharding.make_mesh(c.mesh, devices)
  trainer = Trainer(c, mesh, np.ones(c.model.vocab_size, np.int32))
  counts = params_lib.param_count(trainer.specs)
  state = trainer.abstract_state()
  tokens = c.train.batch_size * c.data.seq_len
  per_token = trainer.task.flops_per_token()
  lines = [
      f"experiment      {c.name}",
      f"devices         {where}; mesh {dict(mesh.shape)}",
      f"params          {counts['total']:,} ({counts['non_embedding']:,} non-embedding)",
      f"params/device   {_device_bytes(state.params) / 2**20:,.1f} MiB",
      f"optimizer/dev   {_device_bytes(state.opt_state) / 2**20:,.1f} MiB",
      f"tokens/step     {tokens:,} (batch {c.train.batch_size} x length {c.data.seq_len}"
      + (f", in {c.train.microbatches} microbatches)" if c.train.microbatches > 1 else ")"),
      f"FLOPs/step      {per_token * tokens:.3e} ({c.task.kind}: {per_token:.3e} per token)",
  ]
  try:
    compiled = compile_step(trainer)
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses a step over its HBM
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    why = str(e).split("RESOURCE_EXHAUSTED:")[-1].strip().splitlines()[0]
    return "\n".join(lines + [f"fits            NO: XLA: {why}; {_remedies(c)}"])
  mem = compiled.memory_analysis()
  if mem is not None:
    lines += [
        f"XLA arguments   {mem.argument_size_in_bytes / 2**20:,.1f} MiB per device",
        f"XLA temporaries {mem.temp_size_in_bytes / 2**20:,.1f} MiB per device "
        "(activations and workspace)",
        f"XLA outputs     {mem.output_size_in_bytes / 2**20:,.1f} MiB per device "
        f"({mem.alias_size_in_bytes / 2**20:,.1f} MiB aliased to donated inputs)",
    ]
  if limit:
    lines.append(f"device memory   {limit / 2**30:,.1f} GiB")
  try:
    check_fits(compiled, c, limit)
    lines.append("fits            yes" if limit else "fits            (no device memory limit "
                 "reported on this backend)")
  except ConfigError as e:
    lines.append(f"fits            NO: {e}")
  items, least = communication(compiled, trainer, counts["total"])
  lines += comm.report(items, least)
  if chip is not None:
    lines += step_time(compiled, trainer, chip, sum(x.moved_bytes for x in items))
  return "\n".join(lines)


# FLOPs of a step relative to 6N + attention: full remat runs each layer's forward twice.
RECOMPUTE = {"none": 1.0, "dots": 1.0, "full": 4 / 3}


def hbm_bytes(compiled, trainer) -> float:
  """XLA's bytes accessed per device by the compiled step with every loop's turns counted.

  XLA's cost analysis (hardware.bytes_accessed) takes a loop body once. Where the layers
  run in a lax.scan (model.layer_loop scan, or auto off CPU) or the microbatches do
  (train.microbatches > 1, train.microbatch_loop scan), the step is compiled again with
  those loops unrolled at one and two turns, each difference taken as one turn's bytes:
  one microbatch of one layer (and one encoder layer), plus (M - 1) microbatches, plus
  M x (L - 1) layers (and M x (L_e - 1) encoder layers). A stack of at most two layers is
  compiled at its own depth (exact).
  """
  c, m = trainer.config, trainer.config.model
  counted = hardware.bytes_accessed(compiled)
  M, L, E = c.train.microbatches, m.n_layers, m.encoder_layers
  scan_layers = transformer.layer_loop(m, trainer.mesh.devices.flat[0].platform) == "scan"
  scan_parts = M > 1 and c.train.microbatch_loop == "scan"
  l0, e0 = (L if L <= 2 else 1, E if E <= 2 else 1) if scan_layers else (L, E)
  if not counted or not (scan_parts or (scan_layers and max(L, E) > 1)):
    return counted

  def unrolled(parts: int, layers: int, encoder: int) -> float:
    """Bytes of the step with every loop unrolled, at `parts` microbatches of B/M rows."""
    overrides = {"model.n_layers": layers, "model.layer_loop": "unroll",
                 "train.microbatches": parts, "train.microbatch_loop": "unroll",
                 "train.batch_size": c.train.batch_size // M * parts}
    if E:
      overrides["model.encoder_layers"] = encoder
    return hardware.bytes_accessed(compile_step(Trainer(
        config_lib.replace(c, **overrides), trainer.mesh, trainer.token_bytes)))

  # Bilinear in (parts, depth): what a layer reads once for all parts (a weight cast to the
  # compute dtype, its summed gradient) is hoisted out of the parts' loop, what it reads per
  # part is not. Two parts at least: a step of one part has no accumulation to count.
  p0 = 2 if scan_parts else M
  at = functools.cache(lambda dp, dl, de: unrolled(p0 + dp, l0 + dl, e0 + de))
  total = at(0, 0, 0) + (M - p0) * (at(1, 0, 0) - at(0, 0, 0) if M > p0 else 0.0)
  for n, turn in ((L - l0, (1, 0)), (E - e0, (0, 1))):
    if n:
      slope = at(0, *turn) - at(0, 0, 0)
      if M > p0:
        slope += (M - p0) * (at(1, *turn) - at(1, 0, 0) - slope)
      total += n * slope
  return total


def roofline(compiled, trainer, chip: hardware.Chip, comm_bytes: float) -> hardware.Estimate:
  """The roofline estimate of one compiled step on `chip` (hardware.estimate): compute from
  the model's FLOPs (6N + attention, times RECOMPUTE under remat; XLA's own count takes
  a loop body once), HBM traffic from hbm_bytes() (XLA's bytes accessed, every layer
  counted), links from `comm_bytes`."""
  c = trainer.config
  model_flops = trainer.task.flops_per_token() * c.train.batch_size * c.data.seq_len \
      / trainer.mesh.size
  return hardware.estimate(chip, flops=model_flops * RECOMPUTE[c.model.remat],
                           hbm_bytes=hbm_bytes(compiled, trainer), comm_bytes=comm_bytes,
                           model_flops=model_flops)


def step_time(compiled, trainer, chip: hardware.Chip, comm_bytes: float) -> list[str]:
  """The roofline lines of --dry_run: compute, HBM and communication time per step on
  `chip`, the step time between full overlap and none, and the MFU each implies."""
  est = roofline(compiled, trainer, chip, comm_bytes)
  ms = lambda s: f"{s * 1e3:,.1f} ms"
  return [
      f"step time       {ms(est.overlapped_s)} (all overlapped) to {ms(est.serial_s)} (none) "
      f"on {chip.name}; MFU at most {est.mfu(est.overlapped_s):.0%} / "
      f"{est.mfu(est.serial_s):.0%}; {est.bound}-bound",
      f"  compute {ms(est.compute_s)} ({trainer.config.model.remat} remat), HBM "
      f"{ms(est.memory_s)} (XLA's bytes accessed, every layer), communication "
      f"{ms(est.comm_s)} (at {chip.collective_bandwidth / 1e9:,.0f} GB/s per chip)",
  ]


def communication(compiled, trainer, n_params: int) -> tuple[list, dict]:
  """(the compiled step's collectives, the analytic minimum for its mesh) (comm.py)."""
  c, shape = trainer.config, dict(trainer.mesh.shape)
  replicas = shape.get("data", 1) * shape.get("fsdp", 1)
  items = comm.collectives(compiled.as_text(), trainer.mesh.size)
  least = comm.minimum(
      n_params, shape, tokens_per_device=c.train.batch_size * c.data.seq_len // replicas,
      d_model=c.model.d_model, n_layers=c.model.n_layers,
      encoder_layers=c.model.encoder_layers, microbatches=c.train.microbatches,
      source_tokens_per_device=c.train.batch_size * (c.data.source_len or c.data.seq_len)
      // replicas,
      grad_bytes=np.dtype(c.model.param_dtype).itemsize,
      param_bytes=np.dtype(c.model.compute_dtype).itemsize,
      act_bytes=np.dtype(c.model.compute_dtype).itemsize)
  return items, least
