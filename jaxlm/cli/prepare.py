"""Command line of prepare (`python -m jaxlm.data.prepare`): tokenize a corpus once.

  python -m jaxlm.data.prepare --corpus='files:data/**/*.jsonl.zst' --out=DIR \
      [--tokenizer=bytes | --tokenizer=sentencepiece --tokenizer_path=M.model] \
      [--text_field=text] [--validation_fraction=0.01] [--workers=N]
  python -m jaxlm.data.prepare --corpus=hf:DIR_OR_NAME [--hf_config=C --hf_split=S] --out=DIR
  python -m jaxlm.data.prepare ... --num_tasks=N --task_id=I   # on N nodes, I = 0..N-1
  python -m jaxlm.data.prepare ... --merge                     # then once, same flags

Writes token shards and DIR/manifest.json (jaxlm/data/prepared.py); train on it
with `--set data.corpus=prepared:DIR` and the same tokenizer settings. Rerunning
after an interruption keeps the finished shards. With --num_tasks=N, task I
prepares every N-th shard from I into the shared --out, and --merge (the same
corpus, tokenizer and options) writes the manifest when all are done: the same
files as one process writes (launch/prepare_slurm.py submits both to SLURM).
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from jaxlm import cli
from jaxlm.cli import fail
from jaxlm.data import prepared
from jaxlm.run import loggers

flags.DEFINE_string("corpus", None, "files:GLOB[,GLOB...] (.jsonl, .parquet, plain text; "
                    ".gz/.zst/.xz) or hf:NAME_OR_DIR (a datasets dataset).")
flags.DEFINE_string("hf_config", "", "hf: the dataset's configuration (data.hf_config).")
flags.DEFINE_string("hf_split", "train", "hf: the split to read (data.hf_split).")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_string("tokenizer", "bytes", "bytes | sentencepiece | hf (data.tokenizer).")
flags.DEFINE_string("tokenizer_path", "", "A sentencepiece .model, or a Hugging Face tokenizer "
                    "directory (data.tokenizer_path).")
flags.DEFINE_integer("vocab_size", 0, "Picks a committed sentencepiece model when "
                     "--tokenizer_path is empty (data.vocab_size).")
flags.DEFINE_string("text_field", "text", "The text field of .jsonl records and .parquet rows.")
flags.DEFINE_float("validation_fraction", 0.01, "Documents held out for validation.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes.")
flags.DEFINE_integer("shard_mb", prepared.SHARD_BYTES >> 20, "Source megabytes per shard.")
flags.DEFINE_integer("num_tasks", 1, "Prepare tasks sharing --out (nodes of a cluster).")
flags.DEFINE_integer("task_id", 0, "This task's number, 0 to --num_tasks - 1.")
flags.DEFINE_bool("merge", False, "Write the manifest of the shards the --num_tasks tasks "
                  "prepared in --out, once all have finished (--task_id is ignored).")
F = flags.FLAGS

USAGE = "usage: python -m jaxlm.data.prepare --corpus=files:GLOB --out=DIR [--tokenizer=...]"


def main(argv):
  cli.start(argv, USAGE)
  if not F.corpus or not F.out:
    fail(f"{USAGE}; got no --corpus or --out")
  if not 0 < F.validation_fraction < 1:
    fail(f"--validation_fraction={F.validation_fraction} is invalid: expected a value in (0, 1)")
  if F.shard_mb < 1:
    fail(f"--shard_mb={F.shard_mb} is invalid: expected a positive integer")
  spec = prepared.TokenizerSpec(F.tokenizer, F.tokenizer_path, F.vocab_size)
  options = prepared.Options(F.text_field, F.validation_fraction, F.hf_config, F.hf_split)
  bar, began, done = None, time.time(), {"documents": 0, "bytes": 0}

  def progress(record, n_shards):
    nonlocal bar
    if bar is None:
      bar = loggers.progress(total=n_shards, desc="shards")
    for split in prepared.SPLITS:
      for key in done:
        done[key] += record[split][key]
    seconds = max(time.time() - began, 1e-9)
    bar.set_postfix_str(f"{done['documents'] / seconds:,.0f} docs/s, "
                        f"{done['bytes'] / seconds / 1e6:.1f} MB/s")
    bar.update()

  try:
    with cli.failing(ValueError, KeyError, FileNotFoundError):
      if F.merge:
        manifest = prepared.merge(F.corpus, F.out, spec, options, shard_bytes=F.shard_mb << 20)
      else:
        manifest = prepared.prepare(F.corpus, F.out, spec, options, workers=F.workers,
                                    shard_bytes=F.shard_mb << 20, progress=progress,
                                    num_tasks=F.num_tasks, task_id=F.task_id)
  finally:
    if bar is not None:
      bar.close()
  if manifest is None:
    print(f"task {F.task_id} of {F.num_tasks}: prepared {0 if bar is None else bar.n} shards in "
          f"{F.out} in {time.time() - began:.1f}s; when every task is done, rerun this "
          "command with --merge")
    return
  for split in prepared.SPLITS:
    s = manifest["splits"][split]
    print(f"{split:10s} {s['documents']:,} documents, {s['tokens']:,} tokens, "
          f"{s['bytes']:,} bytes")
  print(f"wrote {len(manifest['shards'])} shards to {F.out} in {time.time() - began:.1f}s; "
        f"train with --set data.corpus=prepared:{F.out}")


def entry():
  app.run(main)
