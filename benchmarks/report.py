"""What every benchmark prints and writes: a markdown table, and JSON that says what it ran on.

CPUs of the same size differ (an AVX2 laptop, an AVX-512 and AMX Xeon VM), and
a ratio measured on one need not hold on another; so every result records the
CPU model, its vector extensions, the cores, the accelerator if any, and the
versions of jax, jaxlib and torch.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys

from jaxlm import hardware

# libtpu installed for planning (jax[tpu], the test extra) on a machine without a TPU: JAX
# (here, and in the processes a benchmark starts) would try to open one and print a page of
# warnings, as for the command lines (jaxlm/cli/__init__.py).
if importlib.util.find_spec("libtpu") and hardware.cpu_only():
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  if "jax" in sys.modules:  # imported before this module: before its first computation
    sys.modules["jax"].config.update("jax_platforms", os.environ["JAX_PLATFORMS"])

# The vector extensions that decide which kernels XLA and PyTorch run on x86.
EXTENSIONS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu() -> dict:
  """The CPU's model name, vector extensions (of EXTENSIONS) and logical cores."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
  except OSError:  # not Linux: the model from platform, extensions unknown
    pass
  return {"model": model, "extensions": [e for e in EXTENSIONS if e in flags],
          "cores": os.cpu_count()}


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def machine() -> dict:
  """Where and when a benchmark ran: date, CPU, JAX device, and library versions."""
  import jax  # here, not at the top: a benchmark may set XLA_FLAGS before it starts JAX
  device = jax.devices()[0]
  return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu(),
          "backend": jax.default_backend(), "device": device.device_kind,
          "devices": jax.device_count(), "python": platform.python_version(),
          **{name: _version(name) for name in ("jax", "jaxlib", "torch")}}


def describe(m: dict) -> str:
  """One line for the top of a table: the CPU (and device), cores and versions."""
  c = m["cpu"]
  exts = ", ".join(c["extensions"]) or "extensions unknown"
  where = "" if m["backend"] == "cpu" else f"{m['devices']} x {m['device']}; "
  torch = f", torch {m['torch']}" if m.get("torch") else ""
  return (f"{where}{c['model']} ({exts}), {c['cores']} cores; jax {m['jax']}, "
          f"jaxlib {m['jaxlib']}{torch}; {m['date']}")


def table(header: list[str], rows: list[list]) -> str:
  """A markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def write(path: str, result: dict) -> dict:
  """Writes result with the machine under "machine" to path (JSON); returns what it wrote."""
  result = {"machine": machine(), **result}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"{describe(result['machine'])}\nwrote {path}", file=sys.stderr)
  return result
