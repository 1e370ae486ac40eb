"""Roofline step time and MFU of pod-sized runs, compiled for TPU slices from this CPU, and the
same model checked against measured H100 steps.

Pods: each (experiment, slice) is compiled by XLA's TPU compiler for libtpu's compile-only
devices (`--dry_run --topology`, jaxlm/hardware.py) and gives per-chip memory, the
collectives' bytes against their minimum, and the roofline (jaxlm/train/plan.py).
H100: GPT-2 124M's step at the batch and remat of each row measured on one H100
(benchmarks/results/h100/, docs/benchmarks.md) is compiled here for one CPU device and
estimated with the H100's stated peak and HBM bandwidth, beside the measured step time.
HBM bytes are XLA's bytes accessed with every layer counted (plan.hbm_bytes: two more
compiles, the layers unrolled at depth 1 and 2, where they are scanned).

  python benchmarks/step_time.py [--pods llama_1b:v5p-128,llama_7b:v5p-256] [--no_h100]
      [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Three compiles a row (~3-10 minutes each on a 2-core CPU).
PODS = "llama_1b:v5p-128,llama_7b:v5p-256,llama_7b:v6e-256"
# (batch, remat, measured step ms) of GPT-2 124M on one H100 (docs/benchmarks.md, cudnn).
H100_ROWS = ((16, "none", 60.2), (32, "full", 99.3), (48, "full", 142.6))


def _trainer(name: str, devices, overrides):
  from jaxlm import config_io, registry, sharding
  from jaxlm.train.step import Trainer
  c = config_io.apply_overrides(registry.experiment(name), list(overrides))
  return Trainer(c, sharding.make_mesh(c.mesh, devices), np.ones(c.model.vocab_size, np.int32))


def plan_row(name: str, devices, chip, overrides=()):
  from jaxlm import params as params_lib
  from jaxlm.train import plan
  trainer = _trainer(name, devices, overrides)
  c = trainer.config
  start = time.perf_counter()
  compiled = plan.compile_step(trainer)
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  items, least = plan.communication(compiled, trainer,
                                    params_lib.param_count(trainer.specs)["total"])
  moved = sum(x.moved_bytes for x in items)
  est = plan.roofline(compiled, trainer, chip, moved)
  tokens = c.train.batch_size * c.data.seq_len
  need = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  return {"experiment": name, "chips": len(devices), "mesh": dict(trainer.mesh.shape),
          "chip": chip.name, "compile_seconds": seconds, "memory_bytes": need,
          "hbm_bytes": chip.hbm_bytes, "fits": need <= chip.hbm_bytes,
          "comm_bytes": moved, "comm_minimum_bytes": sum(least.values()),
          "compute_s": est.compute_s, "memory_s": est.memory_s, "comm_s": est.comm_s,
          "step_s": est.overlapped_s, "step_serial_s": est.serial_s,
          "mfu": est.mfu(est.overlapped_s), "mfu_serial": est.mfu(est.serial_s),
          "tokens_per_chip_s": tokens / len(devices) / est.overlapped_s,
          "batch_size": c.train.batch_size, "seq_len": c.data.seq_len, "remat": c.model.remat}


def main():
  import jax
  jax.config.update("jax_platforms", "cpu")
  from jaxlm import hardware
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pods", default=PODS, help="experiment:slice,...")
  parser.add_argument("--no_h100", action="store_true")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "step_time.json"))
  args = parser.parse_args()
  pods, rows = [], []
  for item in filter(None, args.pods.split(",")):
    name, slice_name = item.split(":")
    spec, devices = hardware.devices(slice_name)
    r = plan_row(name, devices, spec.chip)
    r["slice"] = slice_name
    pods.append(r)
    print(json.dumps({k: r[k] for k in ("experiment", "slice", "compile_seconds", "mfu")}),
          flush=True)
    ratio = r["comm_bytes"] / r["comm_minimum_bytes"]
    rows.append([name, slice_name, f"{r['memory_bytes'] / 2**30:,.1f} / "
                 f"{r['hbm_bytes'] / 2**30:,.0f}", f"{ratio:.2f}",
                 f"{r['compute_s'] * 1e3:,.0f}", f"{r['memory_s'] * 1e3:,.0f}",
                 f"{r['comm_s'] * 1e3:,.0f}", f"{r['mfu']:.0%} / {r['mfu_serial']:.0%}",
                 f"{r['tokens_per_chip_s']:,.0f}", f"{r['compile_seconds']:.0f}"])
  print(report.table(["experiment", "slice", "GiB per chip (need / HBM)", "comm / minimum",
                      "compute ms", "HBM ms", "comm ms", "MFU bound (overlap / serial)",
                      "tokens/s/chip bound", "compile s"], rows))
  h100, rows = [], []
  if not args.no_h100:
    cpu = jax.devices("cpu")[:1]
    for batch, remat, measured_ms in H100_ROWS:
      r = plan_row("gpt2_small", cpu, hardware.CHIPS["h100"],
                   [f"train.batch_size={batch}", f"model.remat={remat}", "mesh.data=1"])
      r["measured_step_s"] = measured_ms / 1e3
      r["measured_mfu"] = r["mfu"] * r["step_s"] / r["measured_step_s"]
      h100.append(r)
      rows.append([str(batch), remat, f"{r['compute_s'] * 1e3:.1f}",
                   f"{r['memory_s'] * 1e3:.1f}", f"{r['step_s'] * 1e3:.1f}",
                   f"{r['step_serial_s'] * 1e3:.1f}", f"{measured_ms:.1f}",
                   f"{r['mfu']:.0%} / {r['mfu_serial']:.0%}", f"{r['measured_mfu']:.1%}"])
    print(report.table(["batch", "remat", "compute ms", "HBM ms", "estimate ms (overlap)",
                        "estimate ms (serial)", "measured ms", "MFU bound", "measured MFU"],
                       rows))
  report.write(args.out, {"pods": pods, "h100_gpt2_small": h100})


if __name__ == "__main__":
  main()
