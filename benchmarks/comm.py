"""What each compiled train step communicates, per family and mesh, against the analytic minimum.

Compiles the train step of each experiment family (its registered
architecture at a tiny size, or the experiment as registered with --full)
on the meshes (data, fsdp, tensor) of 8 CPU devices, or of the 8 chips of a TPU
slice compiled for from this machine (--topology=v5p-16, libtpu), and reads the
collectives from the optimized HLO (jaxlm/train/comm.py). Prints a table and writes JSON.

  python benchmarks/comm.py [--families gpt2_small,llama_small] [--full] [--topology v5p-16]
      [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

import report  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MESHES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2))


def main():
  from jaxlm import config as config_lib, config_io
  from jaxlm import params as params_lib
  from jaxlm import registry, sharding
  from jaxlm.train import comm, plan
  from jaxlm.train.step import Trainer
  from tests.helpers import tiny_variant
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--families", default="shakespeare,gpt2_small,llama_small")
  parser.add_argument("--full", action="store_true", help="the experiments at their own size")
  parser.add_argument("--set", action="append", default=[], help="key=value for every row")
  parser.add_argument("--topology", default="", help="compile for this TPU slice of 8 chips "
                      "(v5p-16, v5e-8) instead of 8 CPU devices")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "results", "comm.json"))
  args = parser.parse_args()
  devices = None
  if args.topology:
    import jax
    from jaxlm import hardware
    jax.config.update("jax_platforms", "cpu")
    _, devices = hardware.devices(args.topology)
  rows, records = [], []
  for name in args.families.split(","):
    base = registry.experiment(name)
    base = base if args.full else tiny_variant(base)
    for mesh in MESHES:
      c = config_io.apply_overrides(config_lib.replace(base, **{
          "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2]}), args.set)
      trainer = Trainer(c, sharding.make_mesh(c.mesh, devices),
                        np.ones(c.model.vocab_size, np.int32))
      items, least = plan.communication(plan.compile_step(trainer), trainer,
                                        params_lib.param_count(trainer.specs)["total"])
      kinds = comm.by_kind(items)
      moved, floor = sum(x.moved_bytes for x in items), sum(least.values())
      record = {"family": name, "mesh": mesh, "moved_bytes": moved, "minimum_bytes": floor,
                "ratio": moved / floor if floor else None, "by_kind": kinds, "minimum": least,
                "batch_size": c.train.batch_size, "seq_len": c.data.seq_len,
                "loss_chunk": c.train.loss_chunk}
      records.append(record)
      rows.append([name, "x".join(map(str, mesh)), f"{moved / 2**20:,.2f}",
                   f"{floor / 2**20:,.2f}", f"{record['ratio']:.2f}" if floor else "-",
                   ", ".join(f"{k} {v['bytes'] / 2**20:,.2f}" for k, v in sorted(kinds.items()))])
      print(f"{name} {mesh}: {moved / 2**20:,.2f} MiB, minimum {floor / 2**20:,.2f}", flush=True)
  print(report.table(["family", "mesh d x f x t", "MiB / device / step", "minimum MiB",
                      "measured / minimum", "by kind (MiB)"], rows))
  report.write(args.out, {"full": args.full, "overrides": args.set, "rows": records,
                          "topology": args.topology or None,
                          "devices": f"{len(devices)} x {devices[0].device_kind}" if devices
                          else "8 CPU devices"})


if __name__ == "__main__":
  main()
