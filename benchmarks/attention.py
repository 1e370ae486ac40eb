"""Attention speed: forward and forward+backward TFLOP/s of pallas, cudnn and xla.

  python benchmarks/attention.py [--quick] [--lengths 2048 8192] [--tune]
      [--tuning '{"block_q": 128, "num_warps": 8}'] [--dtype bfloat16] [--out FILE]

Causal, bfloat16 (--dtype), head dim 128, 16 query heads, tokens per batch fixed
(B = 65536 // T), at T = S = 512 ... 16384; plus grouped-query rows (4 kv heads) and
packed-sequence rows (segment ids, where cuDNN is n/a) at a few lengths. --quick runs
tiny shapes on CPU (pallas interpreted) to check the script.

FLOPs follow the FlashAttention-2 benchmark (Dao 2023): the forward counts its two
matmuls, 4·B·T·S·N·H, halved when causal; the backward counts 2.5x the forward (five
matmuls), so forward+backward is 3.5x the forward. Recomputation is not counted.
Times are the median of several runs after a warmup, each ended by
jax.block_until_ready; a cell that runs out of memory prints OOM, one the
implementation cannot serve prints n/a. The JSON keeps milliseconds too.

Goals on an H100 (issue: Pallas kernels): pallas forward+backward >= 0.7x cuDNN and
>= 2x XLA from T = 2048, and it runs at T = 16384.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxlm.kernels import flash_attention as fa  # noqa: E402
from jaxlm.models import attention  # noqa: E402

IMPLS = ("pallas", "cudnn", "xla")
MODES = ("fwd", "fwd+bwd")
# Configurations --tune tries at one length: forward and backward blocks, warps, stages.
TUNE_GRID = [
    dict(),
    dict(block_q=128, block_k=128),
    dict(block_q=64, block_k=64),
    dict(num_stages=3),
    dict(num_stages=4, num_warps=4),
    dict(block_q_dkv=32, block_k_dkv=128, block_q_dq=128, block_k_dq=32),
    dict(block_q_dkv=64, block_k_dkv=128, block_q_dq=128, block_k_dq=64),
    dict(block_q_dkv=128, block_k_dkv=128, block_q_dq=128, block_k_dq=128),
]


def flops(B, T, S, N, H, causal, mode):
  fwd = 4 * B * T * S * N * H / (2 if causal else 1)
  return fwd if mode == "fwd" else 3.5 * fwd


def _attention_fn(impl, causal, segments, tuning):
  if impl == "pallas":
    return functools.partial(fa.flash_attention, is_causal=causal, segment_ids=segments,
                             **tuning)
  return functools.partial(attention.dot_product_attention, is_causal=causal,
                           segment_ids=segments, implementation=impl)


def _timed(fn, args, reps):
  jax.block_until_ready(fn(*args))  # compile and warm up
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run_cell(impl, mode, q, k, v, do, causal, segments, reps, tuning=None):
  """(milliseconds, status) for one implementation and mode; status is ok, OOM or n/a."""
  attn = _attention_fn(impl, causal, segments, tuning or {})
  if mode == "fwd":
    fn = jax.jit(attn)
    args = (q, k, v)
  else:
    fn = jax.jit(lambda q, k, v, do: jax.vjp(attn, q, k, v)[1](do))
    args = (q, k, v, do)
  try:
    return 1e3 * _timed(fn, args, reps), "ok"
  except attention.AttentionUnsupportedError:
    return None, "n/a"
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
      return None, "OOM"
    print(f"{impl} {mode}: {type(e).__name__}: {text.splitlines()[0][:300]}", file=sys.stderr)
    return None, "error"
  finally:
    jax.clear_caches()


def _inputs(B, T, N, K, H, dtype, packed):
  kq, kk, kv, ko, ks = jax.random.split(jax.random.key(0), 5)
  q = jax.random.normal(kq, (B, T, N, H), dtype)
  k = jax.random.normal(kk, (B, T, K, H), dtype)
  v = jax.random.normal(kv, (B, T, K, H), dtype)
  do = jax.random.normal(ko, (B, T, N, H), dtype)
  # About four documents per row, as a packing pipeline would produce.
  seg = jnp.cumsum(jax.random.bernoulli(ks, 4 / T, (B, T)), axis=1) if packed else None
  return q, k, v, do, seg


def _row_sets(args):
  lengths = args.lengths
  rows = [dict(T=T, K=args.heads, packed=False) for T in lengths]
  extra = [T for T in (2048, 8192) if T in lengths] or lengths[-1:]
  rows += [dict(T=T, K=args.heads // 4, packed=False) for T in extra]
  rows += [dict(T=T, K=args.heads, packed=True) for T in extra]
  return rows


def benchmark(args):
  results = []
  for row in _row_sets(args):
    T, K = row["T"], row["K"]
    B = max(1, args.tokens // T)
    q, k, v, do, seg = _inputs(B, T, args.heads, K, args.head_dim, args.dtype, row["packed"])
    for impl in IMPLS:
      for mode in MODES:
        ms, status = run_cell(impl, mode, q, k, v, do, True, seg, args.reps, args.tuning)
        f = flops(B, T, T, args.heads, args.head_dim, True, mode)
        results.append(dict(impl=impl, mode=mode, B=B, T=T, N=args.heads, K=K,
                            H=args.head_dim, causal=True, packed=row["packed"], ms=ms,
                            flops=f, tflops=f / ms / 1e9 if ms else None, status=status))
        print(f"  T={T:6d} K={K:2d} packed={row['packed']!s:5} {impl:6s} {mode:8s} "
              f"{_cell(results[-1])}", file=sys.stderr, flush=True)
    del q, k, v, do, seg
  return results


def tune(args):
  T = args.tune_length
  B = max(1, args.tokens // T)
  q, k, v, do, _ = _inputs(B, T, args.heads, args.heads, args.head_dim, args.dtype, False)
  out = []
  for overrides in TUNE_GRID:
    tuning = {**args.tuning, **overrides}
    row = dict(T=T, B=B, tuning=tuning)
    for mode in MODES:
      ms, status = run_cell("pallas", mode, q, k, v, do, True, None, args.reps, tuning)
      f = flops(B, T, T, args.heads, args.head_dim, True, mode)
      row[mode] = f / ms / 1e9 if ms else status
    out.append(row)
    print(f"  tune T={T} {tuning}: fwd {_fmt(row['fwd'])} fwd+bwd {_fmt(row['fwd+bwd'])}",
          file=sys.stderr, flush=True)
  return out


def _fmt(x):
  return (f"{x:.1f}" if x >= 10 else f"{x:.3g}") if isinstance(x, float) else x


def _cell(r):
  return _fmt(r["tflops"]) if r["status"] == "ok" else r["status"]


def table(results) -> str:
  """Markdown: TFLOP/s per implementation and mode, and pallas' ratios."""
  head = ("| T | B | K | packed | " + " | ".join(f"{i} {m}" for m in MODES for i in IMPLS)
          + " | pallas/cudnn f+b | pallas/xla f+b |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  keys = sorted({(r["T"], r["K"], r["packed"]) for r in results},
                key=lambda x: (x[2], -x[1], x[0]))
  for T, K, packed in keys:
    cells = {(r["impl"], r["mode"]): r for r in results
             if (r["T"], r["K"], r["packed"]) == (T, K, packed)}
    ratio = lambda other: (
        f"{cells['pallas', 'fwd+bwd']['tflops'] / cells[other, 'fwd+bwd']['tflops']:.2f}x"
        if cells["pallas", "fwd+bwd"]["tflops"] and cells[other, "fwd+bwd"]["tflops"]
        else "-")
    B = cells["pallas", "fwd"]["B"]
    lines.append(f"| {T} | {B} | {K} | {'yes' if packed else 'no'} | "
                 + " | ".join(_cell(cells[i, m]) for m in MODES for i in IMPLS)
                 + f" | {ratio('cudnn')} | {ratio('xla')} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes, runs on CPU")
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[512, 1024, 2048, 4096, 8192, 16384])
  parser.add_argument("--tokens", type=int, default=65536, help="B = tokens // T")
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--head_dim", type=int, default=128)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
  parser.add_argument("--tuning", type=json.loads, default={},
                      help="JSON overrides of flash_attention.Tuning for pallas")
  parser.add_argument("--tune", action="store_true", help="also sweep pallas block sizes")
  parser.add_argument("--tune_length", type=int, default=4096)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "attention.json"))
  args = parser.parse_args()
  args.dtype = jnp.dtype(args.dtype)
  if args.quick:
    args.lengths, args.tokens, args.heads, args.head_dim, args.reps = [64, 128], 256, 4, 32, 2
    args.tune_length = 128
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}",
        file=sys.stderr)
  results = benchmark(args)
  tuned = tune(args) if args.tune else None
  print(table(results))
  if tuned:
    print("\n| tuning (pallas, T=%d) | fwd TFLOP/s | fwd+bwd TFLOP/s |\n|---|---|---|"
          % args.tune_length)
    for row in tuned:
      print(f"| {json.dumps(row['tuning'])} | {_fmt(row['fwd'])} | {_fmt(row['fwd+bwd'])} |")
  report.write(args.out, dict(
      benchmark="attention", quick=args.quick, dtype=args.dtype.name, causal=True,
      tokens=args.tokens, tuning=args.tuning,
      flops_convention="fwd 4*B*T*S*N*H (/2 causal); fwd+bwd 3.5x fwd (FlashAttention-2)",
      results=results, tune=tuned))


if __name__ == "__main__":
  main()
