"""Own-corpus speed: prepare against the tokenizer alone, and the reader against training.

On the Python standard library's own source (every *.py under this interpreter's
stdlib directory, site-packages left out; about 30 MB, on every machine):

- prepare: `python -m jaxlm.data.prepare` with N workers, against encoding the
  same documents with the same tokenizer in N processes and nothing else (read
  from memory). Goal: prepare at least 0.8x the tokenizer's bytes/s.
- reader: tokens/s the training pipeline delivers from the prepared shards
  (grain, packed windows, the default experiment's batch), against the default
  experiment's training tokens/s (docs/benchmarks.md). Goal: at least 20x.
- mixture reader: the same for a mixture (data.mixture) of the prepared stdlib
  and the embedded Shakespeare, half the tokens each (jaxlm/data/mixture.py:
  documents drawn by weight and packed in blocks). Goal: at least 20x too.
- memory: the peak resident memory of prepare and of the reader on the corpus,
  and on the corpus repeated --repeat times (goal: the same); for the reader
  also its anonymous memory (RssAnon) at the end, which leaves out the mapped
  shards' pages that peak RSS counts.

- scaling (--scaling): prepare's MB/s with 1, 2, ... --workers worker processes
  on the stdlib, and the speed-up over one. Goal: near-linear up to the cores.

  python benchmarks/data.py [--workers 2] [--tokenizer sentencepiece] [--repeat 10]
  python benchmarks/data.py --scaling [--workers N] [--out FILE]
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from jaxlm.data import prepared, sources  # noqa: E402

# The default experiment's training speed on the Xeon of docs/benchmarks.md (350 steps of
# 128 x 64 tokens in 161 s of training): what the reader must outrun.
DEFAULT_TRAIN_TOKENS_PER_SEC = 350 * 128 * 64 / 161


def stdlib_globs() -> str:
  """files: globs of the stdlib's *.py without site-packages."""
  stdlib = sysconfig.get_paths()["stdlib"]
  parts = [os.path.join(stdlib, "*.py")]
  for entry in sorted(os.listdir(stdlib)):
    path = os.path.join(stdlib, entry)
    if os.path.isdir(path) and entry not in ("site-packages", "__pycache__"):
      if glob.glob(os.path.join(path, "**", "*.py"), recursive=True):
        parts.append(os.path.join(path, "**", "*.py"))
  return ",".join(parts)


def repeated_corpus(globs: str, times: int, where: str) -> str:
  """The files of globs copied `times` times under where; its files: spec."""
  files = sources.expand(globs)
  for k in range(times):
    for path, key in files:
      target = os.path.join(where, f"copy{k}", key)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.copyfile(path, target)
  return os.path.join(where, "**", "*.py")


_TOKENIZER = None


def _encode(text: str) -> int:
  return len(_TOKENIZER.encode(text))


def _init(spec: prepared.TokenizerSpec) -> None:
  global _TOKENIZER
  _TOKENIZER = spec.load()


def tokenizer_alone(globs: str, spec: prepared.TokenizerSpec, workers: int) -> float:
  """Bytes/s of encoding the corpus's documents (already in memory) in `workers` processes."""
  texts = [t for path, key in sources.expand(globs) for _, t in sources.documents(path, key)]
  size = sum(len(t.encode()) for t in texts)
  with multiprocessing.get_context("spawn").Pool(workers, _init, (spec,)) as pool:
    pool.map(_encode, texts[:workers])  # started and loaded before the clock
    start = time.perf_counter()
    pool.map(_encode, texts, chunksize=16)
    return size / (time.perf_counter() - start)


# Appended to each measured child: its own peak resident memory and its workers' largest.
# RssAnon: memory the process holds itself, without the pages of the memory-mapped shards
# (the kernel's page cache, shared and given back under pressure), which peak RSS counts.
PEAK = """
import resource
anon = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")]
print(json.dumps({**result, "peak_mb": max(
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024,
    "anon_mb_at_end": anon[0] / 1024}))
"""


def run_measured(code: str) -> dict:
  """Runs python code (which sets `result`) in a fresh process; result and its peak_mb."""
  proc = subprocess.run([sys.executable, "-c", code + PEAK], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


PREPARE = """
import json, time
from jaxlm.data import prepared
start = time.perf_counter()
m = prepared.prepare({spec!r}, {out!r}, prepared.TokenizerSpec({kind!r}, vocab_size={vocab}),
                     workers={workers})
seconds = time.perf_counter() - start
result = {{"seconds": seconds, "bytes": sum(s["bytes"] for s in m["splits"].values()),
          "tokens": sum(s["tokens"] for s in m["splits"].values())}}
"""

# The reader: {data} is the DataConfig's arguments, {module} the module with train_dataset.
READ = """
import json, time
from jaxlm.config import DataConfig
from jaxlm.data import mixture, pipeline, tokenizer
tok = tokenizer.load_tokenizer({kind!r}, vocab_size={vocab})
config = DataConfig({data}, tokenizer={kind!r}, seq_len=64)
it = pipeline.train_iterator({module}.train_dataset(config, tok, 128, seed=0))
next(it)
start, n = time.perf_counter(), 0
while time.perf_counter() - start < 10:
  n += next(it)["inputs"].size
result = {{"tokens_per_sec": n / (time.perf_counter() - start)}}
"""


def reader_speed(out: str, kind: str, vocab: int, mixed: bool = False) -> dict:
  """The reader's tokens/s (and peak_mb) on the prepared corpus `out`, or on a mixture of
  it and the embedded Shakespeare, half the tokens each."""
  data = (f"corpora={'code=prepared:' + out + ';plays=shakespeare'!r}, "
          "mixture='code:1,plays:1'" if mixed else f"corpus={'prepared:' + out!r}")
  return run_measured(READ.format(kind=kind, vocab=vocab, data=data,
                                  module="mixture" if mixed else "pipeline"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--tokenizer", default="sentencepiece", help="bytes | sentencepiece")
  parser.add_argument("--vocab_size", type=int, default=2048,
                      help="the committed sentencepiece model of this size")
  parser.add_argument("--repeat", type=int, default=10, help="copies for the memory check")
  parser.add_argument("--scaling", action="store_true",
                      help="only prepare's speed with 1 to --workers processes")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  globs = stdlib_globs()
  if args.scaling:
    return scaling(args, globs)
  args.out = args.out or os.path.join(ROOT, "benchmarks", "results", "data.json")
  spec = prepared.TokenizerSpec(args.tokenizer, vocab_size=args.vocab_size)
  rows, result = [], {"workers": args.workers, "tokenizer": args.tokenizer}
  with tempfile.TemporaryDirectory(prefix="jaxlm_data_") as tmp:
    alone = tokenizer_alone(globs, spec, args.workers)
    measured = {}
    for name, spec_text in (("stdlib", f"files:{globs}"), (f"stdlib x{args.repeat}", None)):
      if spec_text is None:
        spec_text = "files:" + repeated_corpus(globs, args.repeat, os.path.join(tmp, "rep"))
      out = os.path.join(tmp, name.replace(" ", "_"))
      prep = run_measured(PREPARE.format(spec=spec_text, out=out, kind=args.tokenizer,
                                         vocab=args.vocab_size, workers=args.workers))
      read = reader_speed(out, args.tokenizer, args.vocab_size)
      measured[name] = {**prep, "prepare_bytes_per_sec": prep["bytes"] / prep["seconds"],
                        "prepare_peak_rss_mb": prep["peak_mb"],
                        "tokens_per_sec": read["tokens_per_sec"],
                        "reader_peak_rss_mb": read["peak_mb"],
                        "reader_anon_mb_at_end": read["anon_mb_at_end"]}
      if name == "stdlib":
        mixed = reader_speed(out, args.tokenizer, args.vocab_size, mixed=True)
        result["mixture_reader"] = {"tokens_per_sec": mixed["tokens_per_sec"],
                                    "peak_rss_mb": mixed["peak_mb"]}
      m = measured[name]
      rows.append([name, f"{m['bytes'] / 1e6:.1f}", f"{m['prepare_bytes_per_sec'] / 1e6:.2f}",
                   f"{m['prepare_bytes_per_sec'] / alone:.2f}",
                   f"{m['tokens_per_sec']:,.0f}",
                   f"{m['tokens_per_sec'] / DEFAULT_TRAIN_TOKENS_PER_SEC:.0f}x",
                   f"{m['prepare_peak_rss_mb']:.0f}", f"{m['reader_peak_rss_mb']:.0f}",
                   f"{m['reader_anon_mb_at_end']:.0f}"])
  print(f"tokenizer alone ({args.tokenizer}, {args.workers} processes): {alone / 1e6:.2f} MB/s")
  mixed = result["mixture_reader"]["tokens_per_sec"]
  print(f"mixture reader (stdlib:1, shakespeare:1): {mixed:,.0f} tokens/s, "
        f"{mixed / DEFAULT_TRAIN_TOKENS_PER_SEC:.0f}x the default experiment's training")
  print(report.table(["corpus", "MB", "prepare MB/s", "vs tokenizer alone", "reader tokens/s",
                      "vs default training", "prepare peak MB", "reader peak MB",
                      "reader anon MB"], rows))
  report.write(args.out, {**result, "tokenizer_alone_bytes_per_sec": alone,
                          "default_train_tokens_per_sec": DEFAULT_TRAIN_TOKENS_PER_SEC,
                          "corpora": measured})


def scaling(args, globs: str) -> None:
  """Prepare's MB/s on the stdlib with 1 .. args.workers processes (a fresh output each)."""
  rows, runs = [], []
  with tempfile.TemporaryDirectory(prefix="jaxlm_data_") as tmp:
    for workers in range(1, args.workers + 1):
      prep = run_measured(PREPARE.format(spec=f"files:{globs}", out=os.path.join(tmp, str(workers)),
                                         kind=args.tokenizer, vocab=args.vocab_size,
                                         workers=workers))
      runs.append({"workers": workers, "bytes_per_sec": prep["bytes"] / prep["seconds"],
                   "seconds": prep["seconds"], "peak_mb": prep["peak_mb"]})
      speedup = runs[-1]["bytes_per_sec"] / runs[0]["bytes_per_sec"]
      rows.append([workers, f"{prep['seconds']:.1f}", f"{runs[-1]['bytes_per_sec'] / 1e6:.2f}",
                   f"{speedup:.2f}x", f"{speedup / workers:.2f}"])
  print(report.table(["workers", "seconds", "prepare MB/s", "speed-up", "per worker"], rows))
  report.write(args.out or os.path.join(ROOT, "benchmarks", "results", "data_scaling.json"),
               {"tokenizer": args.tokenizer, "cores": os.cpu_count(), "runs": runs})


if __name__ == "__main__":
  main()
