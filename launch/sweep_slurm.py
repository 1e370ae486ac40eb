"""Submit a registered sweep to SLURM as a job array: task i runs point i of the sweep.

  python launch/sweep_slurm.py --sweep=shakespeare_isoflop --dir=/shared/runs/isoflop_bytes \
      [--partition=gpu] [--gpus_per_task=1] [--time=04:00:00] [--max_parallel=8] \
      [--only=SUBSTRING] [--dry_run]

Each task runs `python launch/sweep_run.py --sweep=S --dir=DIR --name=<point i>`,
which runs the same `python -m jaxlm.main --experiment=... --workdir=DIR/<name>
--set ...` as launch/sweep_local.py and writes DIR/<name>/status.json and
launch.log, so `python -m jaxlm.scaling collect --sweep DIR` reads the results.
Resumable: points with a summary.json are left out of the array when it is
submitted, and a task whose point has finished meanwhile exits at once; the
array indices stay the points' places in the sweep, so resubmitting runs only
what is left. SLURM sends SIGTERM two minutes before --time runs out: the run
checkpoints and a resubmission resumes it; with --max_restarts N a task requeues
itself instead (up to N times), and a point that fails with a fault restarts
from its checkpoint inside its task. DIR must be on a filesystem that the
compute nodes share. --dry_run prints the script and the sbatch command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import slurm
import sweep_run


def array_spec(indices: list[int], max_parallel: int = 0) -> str:
  """SLURM's --array value: sorted indices as ranges ("0-3,7"), then %N if throttled."""
  parts, i = [], 0
  while i < len(indices):
    j = i
    while j + 1 < len(indices) and indices[j + 1] == indices[j] + 1:
      j += 1
    parts.append(str(indices[i]) if i == j else f"{indices[i]}-{indices[j]}")
    i = j + 1
  return ",".join(parts) + (f"%{max_parallel}" if max_parallel else "")


def script(args, spec, runs, indices: list[int]) -> str:
  """The sbatch script: one array task per index, task i running point runs[i]."""
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name={args.job_name}",
           f"#SBATCH --array={array_spec(indices, args.max_parallel)}",
           "#SBATCH --ntasks=1",
           f"#SBATCH --cpus-per-task={args.cpus_per_task}",
           f"#SBATCH --time={args.time}",
           f"#SBATCH --output={args.log_dir}/%x-%A_%a.out",
           # SIGTERM to the batch shell two minutes before the time limit: passed on
           # to sweep_run.py and the run, which checkpoints.
           "#SBATCH --signal=B:TERM@120"]
  if args.max_restarts:
    lines.append("#SBATCH --requeue")
  if args.gpus_per_task:
    lines.append(f"#SBATCH --gpus-per-task={args.gpus_per_task}")
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  if args.account:
    lines.append(f"#SBATCH --account={args.account}")
  lines.append(f"# Sweep {args.sweep}: {len(runs)} points; task i runs point i:")
  for i in indices:
    cmd = sweep_run.command(spec.base, args.dir, runs[i], python=args.python)
    lines.append(f"#   {i}: {shlex.join(cmd)}")
  lines += ["set -euo pipefail", f"cd {shlex.quote(args.repo)}"]
  if args.setup:
    lines.append(args.setup)
  lines.append("NAMES=(" + " ".join(shlex.quote(r.name) for r in runs) + ")")
  lines.append('NAME="${NAMES[$SLURM_ARRAY_TASK_ID]}"')
  run = [args.python, "launch/sweep_run.py", f"--sweep={args.sweep}", f"--dir={args.dir}",
         *([f"--max_restarts={args.max_restarts}"] if args.max_restarts else [])]
  # sweep_run.py restarts a failed point itself; the job requeues after a time limit.
  lines += slurm.requeue_lines(shlex.join(run) + ' --name="$NAME"',
                               shlex.quote(args.dir) + '/"$NAME"', args.max_restarts,
                               on_fault=False)
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, help="name of a registered sweep")
  parser.add_argument("--dir", required=True,
                      help="sweep directory on a filesystem the compute nodes share")
  parser.add_argument("--only", default="", help="submit only points whose name contains this")
  parser.add_argument("--partition", default="")
  parser.add_argument("--account", default="")
  parser.add_argument("--gpus_per_task", type=int, default=1, help="GPUs per point (0: none)")
  parser.add_argument("--cpus_per_task", type=int, default=8)
  parser.add_argument("--time", default="04:00:00", help="time limit of each point")
  parser.add_argument("--max_parallel", type=int, default=0,
                      help="points running at once (the array's %%N throttle); 0: no limit")
  parser.add_argument("--job_name", default="", help="default: the sweep's name")
  parser.add_argument("--log_dir", default="", help="SLURM output files; default DIR/slurm")
  parser.add_argument("--repo", default=sweep_run.ROOT, help="checkout to run from")
  parser.add_argument("--python", default="python", help="interpreter on the compute nodes")
  parser.add_argument("--setup", default="", help="shell line run first (e.g. venv activate)")
  parser.add_argument("--script", default="", help="where to write the sbatch script")
  sweep_run.add_restart_flag(parser)
  parser.add_argument("--dry_run", action="store_true", help="print the script and command")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  for key in ("gpus_per_task", "max_parallel"):
    if getattr(args, key) < 0:
      parser.error(f"--{key}={getattr(args, key)} is invalid: expected >= 0")
  args.dir = os.path.abspath(args.dir)
  args.job_name = args.job_name or args.sweep
  args.log_dir = args.log_dir or os.path.join(args.dir, "slurm")
  try:
    spec, runs = sweep_run.load(args.sweep)
  except (KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  chosen = [i for i, r in enumerate(runs) if args.only in r.name]
  indices = [i for i in chosen if not sweep_run.done(args.dir, runs[i].name)]
  print(f"# {len(chosen) - len(indices)} of {len(chosen)} points done; "
        f"the array runs {len(indices)}")
  if not indices:
    return 0
  text = script(args, spec, runs, indices)
  path = args.script or os.path.join(args.log_dir, f"{args.job_name}.sbatch")
  if args.dry_run:
    print(f"# {path}\n{text}# then: sbatch {shlex.quote(path)}")
    return 0
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  os.makedirs(args.log_dir, exist_ok=True)
  sweep_run.write_plan(args.dir, args.sweep, spec, runs)
  with open(path, "w") as f:
    f.write(text)
  return subprocess.call(["sbatch", path])


if __name__ == "__main__":
  sys.exit(main())
