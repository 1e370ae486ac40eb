"""Where a jaxlm train step spends its time on this machine: a per-op table from the JAX profiler.

  python benchmarks/profile_step.py [--size 6x256] [--set KEY=VALUE ...] [--top 30]
      [--threads N] [--torch]

Builds benchmarks/train_throughput.py's GPT-2-style model, warms the jitted
Trainer step up, traces a few steps with jax.profiler (perfetto trace), and
prints the ops (XLA thunks on CPU, kernels on GPU) that took the most time,
summed over the traced steps and divided by their number; then the matrix
products grouped by shape (from the optimized HLO: operand shapes, contracted
dimensions, forward or backward) with their time and GFLOP/s.

GFLOP/s of a product that XLA's CPU runtime runs asynchronously (a plain `dot`
op, Eigen's) counts only the time until it was handed to the thread pool: such
rows show impossible rates, and their real cost lands in the ops that run
beside them. With --threads 1 XLA runs every op, Eigen's products included, on
one thread, one after another: each op's own time, none overlapping.

--torch then profiles benchmarks/torch_gpt.py's PyTorch step on the same model
and tokens (torch.profiler, the same thread count) and prints its ops by self
time, so that the two steps can be compared op kind by op kind.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import statistics
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import report  # noqa: E402
import train_throughput as tt  # noqa: E402
from jaxlm import config_io, malloc  # noqa: E402


_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.-]+) = \w+\[([\d,]*)\]")
_DOT = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.-]+ = (\w+)\[([\d,]*)\]\S* dot\(%?([\w.-]+), "
                  r"%?([\w.-]+)\).*?lhs_contracting_dims=\{([\d,]*)\}")


def products(hlo: str) -> dict[str, tuple[float, str]]:
  """{op name: (FLOPs, "lhs x rhs -> out, contracting lhs dims")} of each dot, or fusion
  holding dots, in optimized HLO text."""
  dims = lambda text: [int(x) for x in text.split(",") if x]
  comps, name = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^\s*(?:ENTRY\s+)?%([\w.-]+) \(.*\{\s*$", line)
    if m:
      name = m.group(1)
      comps[name] = []
    elif name:
      comps[name].append(line)

  def dots(lines, only=None):
    shapes = {m.group(1): dims(m.group(2)) for m in map(_DEF.match, lines) if m}
    out = []
    for m in filter(None, map(_DOT.match, lines if only is None else [only])):
      lhs, rhs, k = shapes.get(m.group(3), []), shapes.get(m.group(4), []), 1
      for d in dims(m.group(5)):
        k *= lhs[d] if d < len(lhs) else 0
      out.append((2 * math.prod(dims(m.group(2))) * k,
                  f"{lhs} x {rhs} -> {dims(m.group(2))}, contracting {m.group(5)}"))
    return out

  found = {}
  for lines in comps.values():
    for line in lines:
      m = re.match(r"^\s*(?:ROOT\s+)?%?([\w.-]+) = .*? (fusion|dot)\(", line)
      if not m:
        continue
      called = re.search(r"calls=%?([\w.-]+)", line)
      d = dots(lines, line) if m.group(2) == "dot" else \
          dots(comps.get(called.group(1), [])) if called else []
      if d:
        found[m.group(1)] = (sum(f for f, _ in d), "; ".join(s for _, s in d))
  return found


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="6x256")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=2048)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=30)
  parser.add_argument("--skip", default="",
                      help="regex: leave matching op names out of the table (e.g. ynn_fusion)")
  parser.add_argument("--set", action="append", default=[], help="jaxlm config override")
  parser.add_argument("--threads", type=int, default=0,
                      help="threads of XLA's CPU pool (and PyTorch's); default: every core")
  parser.add_argument("--torch", action="store_true",
                      help="also profile the PyTorch step of benchmarks/train_throughput.py")
  args = parser.parse_args()
  if args.threads < 0:
    parser.error(f"--threads must be at least 1 (0: every core), got {args.threads}")
  if args.threads:
    # The size of XLA's CPU thread pool, read when the backend starts (below, at the
    # first computation): jaxlib's PjRt CPU client takes it from NPROC.
    os.environ["NPROC"] = str(args.threads)
  malloc.reuse_freed_memory()
  layers, width = tt.parse_size(args.size)
  config = config_io.apply_overrides(tt.make_config(layers, width, args), args.set)
  step = tt.jaxlm_step(config, tt.token_batches(config, 2))
  times = tt.time_steps({"jaxlm": step}, 2, args.steps)["jaxlm"]["times"]
  print(f"step: median {statistics.median(times) * 1e3:.0f} ms of {args.steps} "
        f"(min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}), untraced")
  out = tempfile.mkdtemp(prefix="jaxlm_profile_")
  with jax.profiler.trace(out, create_perfetto_trace=True):
    for i in range(args.steps):
      step(i)
  path = glob.glob(os.path.join(out, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  # XLA ops (thunks) are the events that are not Python frames, runtime scopes
  # or the zero-length "end: " markers of ops.
  is_op = lambda name: not (name.startswith(("$", "end: ")) or "::" in name or "(" in name)
  total, count = collections.Counter(), collections.Counter()
  per_thread, kinds = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or not is_op(e["name"]):
      continue
    total[e["name"]] += e["dur"]
    count[e["name"]] += 1
    per_thread[threads.get((e["pid"], e["tid"]), str(e["tid"]))] += e["dur"]
    kinds[re.sub(r"\.\d+$", "", e["name"])] += e["dur"]
  print(report.describe(report.machine()))
  print(f"trace: {path}")
  print("op time per thread (ms/step): " + ", ".join(
      f"{name}: {us / args.steps / 1e3:.0f}" for name, us in per_thread.most_common()))
  print("op time by kind (ms/step): " + ", ".join(
      f"{k} {us / args.steps / 1e3:.1f}" for k, us in kinds.most_common(args.top)))
  # What each op computes: the jax op_name XLA kept in the optimized HLO's metadata.
  hlo = step.hlo_text()
  where = dict(re.findall(r"^\s*%?([\w.-]+) = .*?op_name=\"([^\"]+)\"", hlo, re.M))
  print(f"{'us/step':>10} {'calls/step':>10}  name")
  for name, us in [(n, us) for n, us in total.most_common()
                   if not (args.skip and re.match(args.skip, n))][:args.top]:
    print(f"{us / args.steps:10.0f} {count[name] / args.steps:10.1f}  {name[:40]:40} "
          f"{where.get(name, '').replace('jit(step)/', '')[-80:]}")
  groups = collections.defaultdict(lambda: [0.0, 0, 0.0])
  for name, (flops, shapes) in products(hlo).items():
    if name in total:
      g = groups[(shapes, "backward" if "transpose(" in where.get(name, "") else "forward")]
      g[0], g[1], g[2] = g[0] + total[name] / args.steps, g[1] + count[name] / args.steps, \
          g[2] + flops * count[name] / args.steps
  us_all = sum(g[0] for g in groups.values())
  print(f"matrix products: {us_all / 1e3:.1f} ms/step, "
        f"{sum(g[2] for g in groups.values()) / 1e9:.1f} GFLOP/step")
  print(f"{'ms/step':>8} {'calls':>5} {'GFLOP/s':>8}  pass      shapes")
  for (shapes, kind), (us, n, flops) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
    rate = f"{flops / us / 1e3:8.0f}" if us else f"{'-':>8}"
    print(f"{us / 1e3:8.1f} {n:5.0f} {rate}  {kind:9} {shapes}")
  if args.torch:
    profile_torch(config, args)


def profile_torch(config, args) -> None:
  """PyTorch's step on the same model and tokens: its median time and ops by self time."""
  import torch  # noqa: E402  (only for this comparison)
  from torch.profiler import ProfilerActivity, profile

  import torch_gpt  # noqa: E402
  torch_gpt.set_threads()
  if args.threads:
    torch.set_num_threads(args.threads)
  args.gpu = False
  step, _ = tt.torch_step(config, tt.token_batches(config, 2), args)
  times = tt.time_steps({"torch": step}, 2, args.steps)["torch"]["times"]
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for i in range(args.steps):
      step(i)
  ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
  print(f"\nPyTorch step ({torch.get_num_threads()} threads): median "
        f"{statistics.median(times) * 1e3:.0f} ms of {args.steps}, untraced")
  print(f"{'ms/step':>8} {'calls/step':>10}  op (self time)")
  for e in ops[:args.top]:
    print(f"{e.self_cpu_time_total / args.steps / 1e3:8.1f} {e.count / args.steps:10.1f}  "
          f"{e.key[:70]}")


if __name__ == "__main__":
  main()
