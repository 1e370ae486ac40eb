"""Accelerators a run can be planned for: chips' stated figures, TPU slice names, compile-only
devices for `--dry_run --topology=NAME`, and a roofline estimate of step time and MFU.

A TPU slice is named as Cloud TPU names it: `v5p-256` (v4 and v5p count TensorCores, two
per chip: 128 chips), `v5e-64`, `v6e-256` (one core per chip: 64 and 256 chips), or by its
chip grid, `v5p:4x4x8`, `v5e:8x8`. `devices(name)` asks libtpu (`pip install
'jaxlm[topology]'`, the `jax[tpu]` wheel) for compile-only devices of that slice, with
their real physical layout, so XLA's TPU compiler builds the step for it on any CPU; no
TPU is needed and none is touched.

`CHIPS` holds each chip's peak dense bf16 FLOP/s, HBM capacity and bandwidth, and the
bytes per second one chip moves in a collective, as the vendor states them (sources
beside each). `estimate()` turns a compiled step's FLOPs, HBM bytes and collective bytes
per device into times on a chip: compute = FLOPs / peak, memory = bytes / HBM bandwidth,
communication = ring bytes / collective bandwidth (comm.py counts the ring bytes). The
step takes at least the largest of the three (everything overlapped) and at most their
sum (nothing overlapped); MFU = model FLOPs / (step time x peak).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import re


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip's stated figures (per chip)."""
  name: str
  peak_flops: float      # dense bf16 FLOP/s
  hbm_bytes: float       # HBM capacity
  hbm_bandwidth: float   # bytes/s to and from HBM
  collective_bandwidth: float  # bytes/s one chip sends in a ring collective (one direction)
  cores_per_chip: int    # TensorCores a slice name counts per chip (v4, v5p: 2)
  source: str


# Collective bandwidth: half the stated bidirectional inter-chip bandwidth per chip (a ring
# sends one way on each link pair), which is also each pod's stated all-reduce bandwidth
# divided by its chips (v5e 51.2 TB/s / 256, v6e 102.4 TB/s / 256, v4 1.1 PB/s / 4096).
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * 2**30, 1200e9, 1.1e15 / 4096, 2,
               "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("TPU v5e", 197e12, 16 * 2**30, 819e9, 400e9 / 2, 1,
                "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 459e12, 95 * 2**30, 2765e9, 1200e9 / 2, 2,
                "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", 918e12, 32 * 2**30, 1638e9, 800e9 / 2, 1,
                "https://cloud.google.com/tpu/docs/v6e"),
    # GPUs: NVLink bandwidth within a node (H100 / H200: 900 GB/s bidirectional, A100 600).
    "h100": Chip("NVIDIA H100 SXM", 989e12, 80e9, 3.35e12, 900e9 / 2, 1,
                 "https://www.nvidia.com/en-us/data-center/h100/ (SXM, dense bf16)"),
    "h200": Chip("NVIDIA H200 SXM", 989e12, 141e9, 4.8e12, 900e9 / 2, 1,
                 "https://www.nvidia.com/en-us/data-center/h200/ (SXM, dense bf16)"),
    "a100": Chip("NVIDIA A100 SXM 80GB", 312e12, 80e9, 2.039e12, 600e9 / 2, 1,
                 "https://www.nvidia.com/en-us/data-center/a100/ (SXM, dense bf16)"),
}
# libtpu's name for each generation in a topology string.
_LIBTPU = {"v4": "v4", "v5e": "v5e", "v5p": "v5", "v6e": "v6e"}
# Chip grids of the common slices (Cloud TPU's tables): 2-D for v5e / v6e, 3-D for v4 / v5p.
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
            128: (8, 16), 256: (16, 16)}
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
            2048: (8, 16, 16), 4096: (16, 16, 16)}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice: its chip, chip grid and what libtpu needs to describe it."""
  name: str
  generation: str
  grid: tuple[int, ...]

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def topology_name(self) -> str:
    return f"{_LIBTPU[self.generation]}:{'x'.join(map(str, self.grid))}"

  def options(self) -> dict:
    """Keyword arguments of jax.experimental.topologies.get_topology_desc for this slice."""
    grid3 = tuple(self.grid) + (1,) * (3 - len(self.grid))
    # A full cube (every dimension a multiple of 4) is a torus, otherwise a mesh; hosts
    # hold 2x2x1 chips (4 per host on v4 / v5p, one of two 2x2 halves of 8 on v5e / v6e).
    wrap = tuple(d >= 16 if len(self.grid) == 2 else (d % 4 == 0 and min(grid3) >= 4)
                 for d in grid3)
    out = {"chips_per_host_bounds": (2, 2, 1) if self.chips >= 4 else grid3, "wrap": wrap}
    if self.chip.cores_per_chip == 2:
      out["chip_config_name"] = "megacore"  # one JAX device per chip, as on a real slice
    return out


def parse_slice(name: str) -> Slice:
  """`v5p-256`, `v5e-64`, `v6e-256`, `v4-128`, or `v5p:4x4x8` / `v5e:8x8`; ValueError
  naming the accepted forms otherwise."""
  forms = (f"expected GEN-CORES (v5p-256, v5e-64, v6e-256, v4-128) or GEN:GRID (v5p:4x4x8, "
           f"v5e:8x8) with GEN one of {', '.join(_LIBTPU)}")
  m = re.fullmatch(r"(v4|v5e|v5p|v6e)(?:-(\d+)|:(\d+(?:x\d+){1,2}))", name.strip().lower())
  if not m:
    raise ValueError(f"--topology={name!r} is not a TPU slice name; {forms}")
  gen = m.group(1)
  dims, grids = (2, _GRID_2D) if gen in ("v5e", "v6e") else (3, _GRID_3D)
  if m.group(3):
    grid = tuple(int(d) for d in m.group(3).split("x"))
    if len(grid) != dims:
      raise ValueError(f"--topology={name!r}: {gen} slices are {dims}-D grids of chips")
  else:
    cores, per_chip = int(m.group(2)), CHIPS[gen].cores_per_chip
    if cores % per_chip or cores // per_chip not in grids:
      sizes = ", ".join(f"{gen}-{c * per_chip}" for c in grids)
      raise ValueError(f"--topology={name!r}: no {gen} slice of {cores} cores here; known: "
                       f"{sizes} (or give the grid, {gen}:{'x'.join('ABC'[:dims])})")
    grid = grids[cores // per_chip]
  return Slice(name, gen, grid)


def devices(name: str) -> tuple[Slice, list]:
  """(the slice, its compile-only devices) for a slice name; ValueError if libtpu is
  missing or refuses the topology."""
  spec = parse_slice(name)
  # What libtpu would otherwise ask a TPU VM's metadata server for, printing a page of
  # warnings on any other machine; only describing the slice, it needs none of it.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE",
                        f"{spec.generation}-{spec.chips * spec.chip.cores_per_chip}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Without a TPU, several processes may compile at once (libtpu otherwise takes a lock).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies  # noqa: deferred: only --topology needs libtpu
    desc = topologies.get_topology_desc(platform="tpu", topology_name=spec.topology_name,
                                        **spec.options())
  except Exception as e:  # libtpu absent, or a shape it does not know
    hint = (" (libtpu is not installed: pip install 'jaxlm[topology]')"
            if importlib.util.find_spec("libtpu") is None else "")
    raise ValueError(f"--topology={name!r}: libtpu could not describe "
                     f"{spec.topology_name}: {str(e).splitlines()[0][:200]}{hint}") from None
  return spec, list(desc.devices)


def _tpu_attached() -> bool:
  """Whether this machine has a TPU JAX could open: libtpu installed and a TPU VM's device
  files present (/dev/accel* on v4 / v5e, /dev/vfio/N on v5p / v6e). libtpu alone, as
  the topology extra installs it, only compiles for slices elsewhere."""
  return bool(importlib.util.find_spec("libtpu")
              and (glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")))


def cpu_only() -> bool:
  """Whether JAX can only run on CPU here: JAX_PLATFORMS says so, or no GPU plugin is
  installed and no TPU is attached."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not (importlib.util.find_spec("jax_plugins") or _tpu_attached())


def chip_of(device) -> Chip | None:
  """The CHIPS entry of a jax device, by its device_kind ("TPU v5 lite", "NVIDIA H100 80GB
  HBM3"); None when unknown (a CPU)."""
  kind = getattr(device, "device_kind", "").lower()
  for pattern, key in (("h100", "h100"), ("h200", "h200"), ("a100", "a100"),
                       ("v5 lite", "v5e"), ("v5e", "v5e"), ("v6", "v6e"), ("v5", "v5p"),
                       ("v4", "v4")):
    if pattern in kind:
      return CHIPS[key]
  return None


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A roofline estimate of one step on one chip (seconds) and the MFU it implies."""
  compute_s: float
  memory_s: float
  comm_s: float
  model_flops: float     # per device per step, the 6N + attention count MFU divides
  peak_flops: float

  @property
  def overlapped_s(self) -> float:
    return max(self.compute_s, self.memory_s, self.comm_s)

  @property
  def serial_s(self) -> float:
    return self.compute_s + self.memory_s + self.comm_s

  def mfu(self, seconds: float) -> float:
    return self.model_flops / (seconds * self.peak_flops)

  @property
  def bound(self) -> str:
    times = {"compute": self.compute_s, "memory": self.memory_s, "communication": self.comm_s}
    return max(times, key=times.get)


def estimate(chip: Chip, *, flops: float, hbm_bytes: float, comm_bytes: float,
             model_flops: float) -> Estimate:
  """Roofline times per device: `flops` executed (recomputation included), `model_flops`
  the count MFU divides."""
  return Estimate(compute_s=flops / chip.peak_flops,
                  memory_s=hbm_bytes / chip.hbm_bandwidth,
                  comm_s=comm_bytes / chip.collective_bandwidth,
                  model_flops=model_flops, peak_flops=chip.peak_flops)


def bytes_accessed(compiled) -> float:
  """Bytes accessed per device by a compiled step, from XLA's cost analysis (a loop body
  counted once; 0 where the backend does not report it)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("bytes accessed", 0.0))
