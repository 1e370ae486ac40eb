"""What train.layer_stats costs: the train step with and without per-layer statistics.

  python benchmarks/layer_stats.py [--experiment shakespeare] [--set key=value ...]
      [--rounds 6] [--steps 8] [--out FILE]

Builds the experiment's Trainer twice (train.layer_stats=false and true) in this
one process, on the same batches, and times blocks of steps alternating between
the two, so that the machine's drift falls on both; reports the median step time
of each and the overhead, in wall time and in the process's CPU time (which a
shared VM's stolen time does not inflate). Goal (docs/observability.md): at most 2%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlm import malloc  # noqa: E402

malloc.reuse_freed_memory()  # as the command line does, before JAX starts

import jax  # noqa: E402

import report  # noqa: E402
from jaxlm import config_io, registry, sharding  # noqa: E402
from jaxlm.data import pipeline  # noqa: E402
from jaxlm.params import param_count  # noqa: E402
from jaxlm.train.step import Trainer  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", default="shakespeare")
  parser.add_argument("--set", action="append", default=[], help="config override key=value")
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--steps", type=int, default=8, help="steps per timed block")
  parser.add_argument("--out", default="benchmarks/results/layer_stats.json")
  args = parser.parse_args()
  runs = {}
  for flag in ("false", "true"):
    config = config_io.apply_overrides(registry.experiment(args.experiment),
                                        args.set + [f"train.layer_stats={flag}"])
    tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
    trainer = Trainer(config, sharding.make_mesh(config.mesh), tok.token_bytes())
    it = pipeline.train_iterator(trainer.task.train_dataset(tok, config.seed, 0, 1))
    batches = [trainer.device_batch(next(it)) for _ in range(4)]
    state = trainer.init(jax.random.key(0))
    for batch in batches[:2]:  # compile and warm up
      state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    runs[flag] = {"trainer": trainer, "state": state, "batches": batches, "seconds": [],
                  "cpu_seconds": []}
  for _ in range(args.rounds):
    for run in runs.values():
      start, cpu = time.perf_counter(), time.process_time()
      for i in range(args.steps):
        run["state"], metrics = run["trainer"].step(run["state"], run["batches"][i % 4])
      jax.block_until_ready(metrics)
      run["seconds"].append((time.perf_counter() - start) / args.steps)
      run["cpu_seconds"].append((time.process_time() - cpu) / args.steps)
  off, on = (statistics.median(runs[f]["seconds"]) for f in ("false", "true"))
  cpu_off, cpu_on = (statistics.median(runs[f]["cpu_seconds"]) for f in ("false", "true"))
  params = param_count(runs["true"]["trainer"].specs)["total"]
  print(f"{args.experiment} {' '.join(args.set)}: {params:,} params; median of "
        f"{args.rounds} blocks of {args.steps} steps")
  print(report.table(["layer_stats", "step ms", "overhead", "CPU ms/step", "CPU overhead"],
                     [["false", f"{off * 1e3:.1f}", "", f"{cpu_off * 1e3:.1f}", ""],
                      ["true", f"{on * 1e3:.1f}", f"{on / off - 1:+.2%}",
                       f"{cpu_on * 1e3:.1f}", f"{cpu_on / cpu_off - 1:+.2%}"]]))
  report.write(args.out, {"experiment": args.experiment, "overrides": args.set,
                          "params": params, "step_seconds_off": runs["false"]["seconds"],
                          "step_seconds_on": runs["true"]["seconds"],
                          "cpu_seconds_off": runs["false"]["cpu_seconds"],
                          "cpu_seconds_on": runs["true"]["cpu_seconds"],
                          "overhead": on / off - 1, "cpu_overhead": cpu_on / cpu_off - 1})


if __name__ == "__main__":
  main()
