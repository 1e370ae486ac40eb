"""Tokenize a large corpus across a SLURM cluster: a job array of prepare tasks, then a merge.

  python launch/prepare_slurm.py --num_tasks=16 [--partition=cpu] [--cpus_per_task=32] \
      [--time=04:00:00] [--max_parallel=8] [--dry_run] -- \
      --corpus='files:/shared/corpus/**/*.jsonl.zst' --out=/shared/prepared/corpus \
      [--tokenizer=sentencepiece --tokenizer_path=/shared/tok.model ...]

After `--`: the arguments of `python -m jaxlm.data.prepare` (jaxlm/cli/prepare.py).
Array task i runs `python -m jaxlm.data.prepare ARGS --num_tasks=N --task_id=i
--workers=$SLURM_CPUS_PER_TASK`, preparing every N-th shard from i into --out;
a second job, submitted with --dependency=afterok on the array, runs `... ARGS
--merge` and writes the manifest: the same files as one `prepare` on one machine
writes. --out (and the corpus) must be on a filesystem the nodes share. A task
that fails or runs out of time keeps its finished shards: submit again and only
the unfinished ones are tokenized (SLURM cancels the first merge: its
dependency can no longer be met; the new one waits for the new array). Relative
paths (--out, --tokenizer_path, the corpus's globs) are made absolute here,
since the scripts run in the checkout (--repo). The
scripts go to --log_dir (default OUT.slurm/), with SLURM's output; --dry_run
prints both scripts and the sbatch commands.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import sweep_slurm
import sweep_run


def _value(args: list[str], flag: str) -> str:
  """The value of --flag=V or --flag V among prepare's arguments ('' if absent)."""
  for i, a in enumerate(args):
    if a.startswith(flag + "="):
      return a.split("=", 1)[1]
    if a == flag and i + 1 < len(args):
      return args[i + 1]
  return ""


def _absolute_corpus(spec: str) -> str:
  """A corpus spec with its local paths absolute (files: globs, an hf: directory)."""
  kind, _, arg = spec.partition(":")
  if kind == "files":
    globs = [g.strip() for g in arg.split(",") if g.strip()]
    return "files:" + ",".join(
        ("!" if g.startswith("!") else "") + os.path.abspath(os.path.expanduser(g.lstrip("!")))
        for g in globs)
  if kind == "hf" and os.path.exists(arg):
    return "hf:" + os.path.abspath(arg)
  return spec


def absolute_paths(args: list[str]) -> list[str]:
  """prepare's arguments with relative paths made absolute: the scripts run in --repo."""
  out, i = [], 0
  while i < len(args):
    flag, eq, value = args[i].partition("=")
    if flag in ("--out", "--tokenizer_path", "--corpus") and not eq and i + 1 < len(args):
      i, eq, value = i + 1, "=", args[i + 1]
    if flag in ("--out", "--tokenizer_path") and eq and value:
      out.append(f"{flag}={os.path.abspath(os.path.expanduser(value))}")
    elif flag == "--corpus" and eq:
      out.append(f"--corpus={_absolute_corpus(value)}")
    else:
      out.append(args[i])
    i += 1
  return out


def header(args, name: str, array: str = "") -> list[str]:
  """The #SBATCH lines of one of the two jobs."""
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name={name}",
           *([f"#SBATCH --array={array}"] if array else []),
           "#SBATCH --ntasks=1",
           f"#SBATCH --cpus-per-task={args.cpus_per_task}",
           f"#SBATCH --time={args.time}",
           f"#SBATCH --output={args.log_dir}/%x-%A_%a.out" if array else
           f"#SBATCH --output={args.log_dir}/%x-%j.out"]
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  if args.account:
    lines.append(f"#SBATCH --account={args.account}")
  lines += ["set -euo pipefail", f"cd {shlex.quote(args.repo)}"]
  if args.setup:
    lines.append(args.setup)
  return lines


def scripts(args, prepare_args: list[str]) -> tuple[str, str]:
  """(the array's script, the merge's script)."""
  base = [args.python, "-m", "jaxlm.data.prepare", *prepare_args]
  task = header(args, args.job_name,
                sweep_slurm.array_spec(list(range(args.num_tasks)), args.max_parallel))
  task.append(shlex.join([*base, f"--num_tasks={args.num_tasks}"])
              + ' --task_id="$SLURM_ARRAY_TASK_ID" --workers="${SLURM_CPUS_PER_TASK:-1}"')
  merge = header(args, args.job_name + "-merge")
  merge.append(shlex.join([*base, "--merge"]))
  return "\n".join(task) + "\n", "\n".join(merge) + "\n"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    print("usage: launch/prepare_slurm.py --num_tasks=N [options] -- <jaxlm.data.prepare "
          "arguments>", file=sys.stderr)
    return 2
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_tasks", type=int, required=True,
                      help="array tasks; each prepares every N-th shard")
  parser.add_argument("--partition", default="")
  parser.add_argument("--account", default="")
  parser.add_argument("--cpus_per_task", type=int, default=8,
                      help="CPUs per task: its tokenizer worker processes")
  parser.add_argument("--time", default="04:00:00", help="time limit of each task")
  parser.add_argument("--max_parallel", type=int, default=0,
                      help="tasks running at once (the array's %%N throttle); 0: no limit")
  parser.add_argument("--job_name", default="prepare")
  parser.add_argument("--log_dir", default="", help="scripts and SLURM output; default OUT.slurm")
  parser.add_argument("--repo", default=sweep_run.ROOT, help="checkout to run from")
  parser.add_argument("--python", default="python", help="interpreter on the compute nodes")
  parser.add_argument("--setup", default="", help="shell line run first (e.g. venv activate)")
  parser.add_argument("--dry_run", action="store_true", help="print the scripts and commands")
  args = parser.parse_args(argv[:split])
  prepare_args = absolute_paths(argv[split + 1:])
  for key in ("num_tasks", "cpus_per_task"):
    if getattr(args, key) < 1:
      parser.error(f"--{key}={getattr(args, key)} is invalid: expected a positive integer")
  if args.max_parallel < 0:
    parser.error(f"--max_parallel={args.max_parallel} is invalid: expected >= 0")
  for flag in ("--num_tasks", "--task_id", "--workers", "--merge"):
    if any(a == flag or a.startswith(flag + "=") for a in prepare_args):
      parser.error(f"{flag} after -- is set by the launcher; leave it out")
  out, corpus = _value(prepare_args, "--out"), _value(prepare_args, "--corpus")
  if not out or not corpus:
    parser.error("give --corpus=SPEC and --out=DIR among the prepare arguments, on a "
                 "filesystem the nodes share")
  args.log_dir = os.path.abspath(args.log_dir or os.path.normpath(out) + ".slurm")
  task_text, merge_text = scripts(args, prepare_args)
  task_path = os.path.join(args.log_dir, f"{args.job_name}.sbatch")
  merge_path = os.path.join(args.log_dir, f"{args.job_name}-merge.sbatch")
  if args.dry_run:
    print(f"# {task_path}\n{task_text}# {merge_path}\n{merge_text}"
          f"# then: sbatch --parsable {task_path}, and with its job id J: "
          f"sbatch --dependency=afterok:J --kill-on-invalid-dep=yes {merge_path}")
    return 0
  os.makedirs(args.log_dir, exist_ok=True)
  for path, text in ((task_path, task_text), (merge_path, merge_text)):
    with open(path, "w") as f:
      f.write(text)
  try:
    array = subprocess.run(["sbatch", "--parsable", task_path], capture_output=True, text=True)
  except FileNotFoundError:
    print("error: sbatch is not on PATH: run this on a SLURM login node, or use --dry_run",
          file=sys.stderr)
    return 2
  if array.returncode != 0:
    print(f"error: sbatch {task_path} failed: {array.stderr.strip()}", file=sys.stderr)
    return 1
  job = array.stdout.strip().split(";")[0]
  print(f"Submitted batch job {job} ({args.num_tasks} prepare tasks)")
  # If a task fails, SLURM cancels the merge instead of leaving it pending forever.
  return subprocess.call(["sbatch", f"--dependency=afterok:{job}", "--kill-on-invalid-dep=yes",
                          merge_path])


if __name__ == "__main__":
  sys.exit(main())
