"""Training throughput and model FLOPs utilization (MFU) of a registered experiment.

  python benchmarks/mfu.py --experiment gpt2_small --attention xla cudnn \
      [--batch_size 16] [--steps 20] [--set key=value ...] [--out FILE]

Times the jitted, sharded train step of the real Trainer on random tokens
(no input pipeline in the loop), after warm-up, and reports tokens/s and
MFU = tokens/s x FLOPs per token / (devices x peak dense bf16 FLOP/s), with
FLOPs per token = 6 N (N = non-embedding params plus the output projection)
+ 6 L T D (causal attention score and value products, forward + backward);
see jaxlm.models.transformer.flops_per_token. On a CPU (no known peak) MFU is
omitted; use --set overrides to shrink the model there.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import report

from jaxlm import config as config_lib, config_io, registry, sharding
from jaxlm.run import loggers
from jaxlm.models import transformer
from jaxlm.train.step import Trainer


def synthetic_batch(config, rng: np.random.Generator) -> dict:
  B, T = config.train.batch_size, config.data.seq_len
  tokens = rng.integers(0, config.model.vocab_size, (B, T + 1), dtype=np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "segment_ids": np.ones((B, T), np.int32),
          "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
          "weights": np.ones((B, T), np.float32)}


def measure(config, steps: int, warmup: int) -> dict:
  """Median step time of the compiled train step (the loop's step between log steps);
  tokens/s and MFU."""
  trainer = Trainer(config, sharding.make_mesh(config.mesh),
                    np.ones(config.model.vocab_size, np.int32))
  state = trainer.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  batches = [trainer.device_batch(synthetic_batch(config, rng)) for _ in range(2)]
  start = time.perf_counter()
  for i in range(warmup):
    state, m = trainer.unlogged_step(state, batches[i % 2])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - start
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, m = trainer.unlogged_step(state, batches[i % 2])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  tokens = config.train.batch_size * config.data.seq_len
  per_token = transformer.flops_per_token(config.model, config.data.seq_len)
  peak = loggers.peak_flops()
  tps = tokens / step_s
  mfu = tps * per_token["total"] / (peak * jax.device_count()) if peak else None
  return {"attention": config.model.attention, "batch_size": config.train.batch_size,
          "seq_len": config.data.seq_len, "step_ms": step_s * 1e3, "tokens_per_sec": tps,
          "mfu": mfu, "flops_per_token": per_token["total"], "warmup_s": compile_s,
          "loss": float(m["loss"])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", default="gpt2_small")
  parser.add_argument("--attention", nargs="+", default=["xla", "cudnn"])
  parser.add_argument("--batch_size", type=int, default=0, help="0: the experiment's")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--set", action="append", default=[])
  parser.add_argument("--out", default="benchmarks/results/mfu.json")
  args = parser.parse_args()
  base = config_io.apply_overrides(registry.experiment(args.experiment), args.set)
  if args.batch_size:
    base = config_lib.replace(base, **{"train.batch_size": args.batch_size})
  # Synthetic rows are single documents: no segment mask, so cuDNN can serve them.
  base = config_lib.replace(base, **{"data.mask_documents": False})
  rows = []
  for impl in args.attention:
    config = config_lib.replace(base, **{"model.attention": impl})
    try:
      rows.append(measure(config, args.steps, args.warmup))
    except Exception as e:  # one failing path (e.g. OOM, unsupported) must not hide the rest
      rows.append({"attention": impl, "error": f"{type(e).__name__}: {str(e)[:300]}"})
  counts = transformer.param_count(base.model)
  print(f"{args.experiment}: {counts['total']:,} params")
  print(report.table(["attention", "batch", "length", "step ms", "tokens/s", "MFU"], [
      [r["attention"], "", "", r["error"][:80], "", ""] if "error" in r else
      [r["attention"], r["batch_size"], r["seq_len"], f"{r['step_ms']:.1f}",
       f"{r['tokens_per_sec']:,.0f}", "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"]
      for r in rows]))
  report.write(args.out, {"experiment": args.experiment, "params": counts, "rows": rows})


if __name__ == "__main__":
  main()
