"""Generation speed: key/value-cache decoding against recomputing the whole sequence each step.

  python benchmarks/generate.py [--experiment shakespeare] [--batch_sizes 1 32]
      [--new_tokens 256] [--prompt_len 16] [--set key=value ...] [--out FILE]

Both paths draw `new_tokens` tokens per row (temperature 1, no early stop)
after a random prompt, with the experiment's model at random initialization
(speed does not depend on the weights); model.max_seq_len is raised to the
next power of two that fits prompt + new tokens in one context. The cached
path is jaxlm.inference.generate.generate (jitted prefill and `lax.while_loop` of decode
steps). The baseline is the
previous sampler: a jitted full forward pass over a fixed (B, prompt + new)
buffer per token. Its steps all cost the same, so it is timed over
--baseline_steps steps and reported as tokens/s. Compilation is excluded from
both (timed after a warm-up call) and reported apart. Goal (issue 4): cached at
least 10x the baseline.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import report

from jaxlm import config as config_lib, config_io, registry
from jaxlm.inference import generate
from jaxlm.models import transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.partial(jax.jit, static_argnames="config", donate_argnames="buf_BS")
def _recompute_step(params, buf_BS, n, key, *, config):
  """Baseline: logits of the whole buffer, the token after position n - 1, written at n."""
  logits_BV = transformer.apply(params, buf_BS, config)[:, n - 1]
  tok_B = jax.random.categorical(jax.random.fold_in(key, n), logits_BV).astype(jnp.int32)
  return jax.lax.dynamic_update_slice(buf_BS, tok_B[:, None], (0, n))


def time_cached(params, config, prompts, new_tokens: int, repeats: int) -> dict:
  start = time.perf_counter()
  generate.generate(params, config, prompts, new_tokens, seed=0)
  warmup = time.perf_counter() - start
  times = []
  for r in range(repeats):
    start = time.perf_counter()
    out = generate.generate(params, config, prompts, new_tokens, seed=r + 1)
    times.append(time.perf_counter() - start)
  assert all(len(row) == new_tokens for row in out)
  seconds = float(np.median(times))
  return {"seconds": seconds, "tokens_per_sec": len(prompts) * new_tokens / seconds,
          "warmup_seconds": warmup}


def time_recompute(params, config, prompts, new_tokens: int, steps: int) -> dict:
  B, P = len(prompts), len(prompts[0])
  buf = np.zeros((B, P + new_tokens), np.int32)
  buf[:, :P] = prompts
  key = jax.random.key(0)
  start = time.perf_counter()
  buf_BS = _recompute_step(params, jnp.asarray(buf), P, key, config=config)
  jax.block_until_ready(buf_BS)
  warmup = time.perf_counter() - start
  steps = min(steps, new_tokens - 1)
  start = time.perf_counter()
  for n in range(P + 1, P + 1 + steps):
    buf_BS = _recompute_step(params, buf_BS, n, key, config=config)
  jax.block_until_ready(buf_BS)
  per_step = (time.perf_counter() - start) / steps
  return {"seconds_per_step": per_step, "tokens_per_sec": B / per_step,
          "steps_timed": steps, "warmup_seconds": warmup}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--experiment", default="shakespeare")
  parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--prompt_len", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--baseline_steps", type=int, default=32)
  parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "generate.json"))
  args = parser.parse_args()
  base = config_io.apply_overrides(registry.experiment(args.experiment), args.set)
  # Room for prompt + new tokens in one context, with slack for generate()'s padded prompts.
  length = 2 ** math.ceil(math.log2(args.prompt_len + args.new_tokens))
  config = config_lib.replace(base.model, max_seq_len=max(base.model.max_seq_len, length))
  params = transformer.init(config, jax.random.key(0))
  rng = np.random.default_rng(0)
  rows = []
  for B in args.batch_sizes:
    prompts = rng.integers(0, config.vocab_size, (B, args.prompt_len)).astype(np.int32)
    cached = time_cached(params, config, list(prompts), args.new_tokens, args.repeats)
    recompute = time_recompute(params, config, prompts, args.new_tokens, args.baseline_steps)
    rows.append({"batch": B, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                 "cached": cached, "recompute": recompute,
                 "speedup": cached["tokens_per_sec"] / recompute["tokens_per_sec"]})
  counts = transformer.param_count(config)
  print(f"{args.experiment}: {counts['total']:,} params, {args.new_tokens} new tokens after "
        f"{args.prompt_len}")
  print(report.table(
      ["batch", "cached tokens/s", "recompute tokens/s", "speedup", "cached compile s"],
      [[r["batch"], f"{r['cached']['tokens_per_sec']:,.0f}",
        f"{r['recompute']['tokens_per_sec']:,.1f}", f"{r['speedup']:.1f}x",
        f"{r['cached']['warmup_seconds']:.1f}"] for r in rows]))
  report.write(args.out, {"experiment": args.experiment, "overrides": args.set,
                          "params": counts, "goal_speedup": 10.0,
                          "meets_goal": all(r["speedup"] >= 10 for r in rows), "rows": rows})


if __name__ == "__main__":
  main()
