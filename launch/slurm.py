"""Submit a jaxlm run to SLURM: one process per GPU, started by srun.

  python launch/slurm.py --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00 \
      [--dry_run] -- --experiment=gpt2_small --workdir=/shared/runs/gpt2

Writes an sbatch script next to the workdir (or prints it with --dry_run).
jax.distributed reads the SLURM environment, so the processes need no
coordinator flags.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys


def script(args, jaxlm_args: list[str]) -> str:
  """The sbatch script text."""
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name={args.job_name}",
           f"#SBATCH --nodes={args.nodes}",
           f"#SBATCH --ntasks-per-node={args.gpus_per_node}",
           "#SBATCH --gpus-per-task=1",
           f"#SBATCH --cpus-per-task={args.cpus_per_task}",
           f"#SBATCH --time={args.time}",
           f"#SBATCH --output={args.log_dir}/%x-%j.out"]
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  if args.account:
    lines.append(f"#SBATCH --account={args.account}")
  lines += ["set -euo pipefail", f"cd {shlex.quote(args.repo)}"]
  if args.setup:
    lines.append(args.setup)
  cmd = ["python", "-m", "jaxlm.main", *jaxlm_args]
  lines.append("srun " + " ".join(shlex.quote(c) for c in cmd))
  return "\n".join(lines) + "\n"


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    sys.exit("usage: launch/slurm.py [options] -- <jaxlm.main arguments>")
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--gpus_per_node", type=int, default=8)
  parser.add_argument("--cpus_per_task", type=int, default=8)
  parser.add_argument("--time", default="24:00:00")
  parser.add_argument("--partition", default="")
  parser.add_argument("--account", default="")
  parser.add_argument("--job_name", default="jaxlm")
  parser.add_argument("--log_dir", default="slurm_logs")
  parser.add_argument("--repo", default=os.getcwd(), help="checkout to run from")
  parser.add_argument("--setup", default="", help="shell line run first (e.g. venv activate)")
  parser.add_argument("--script", default="", help="where to write the sbatch script")
  parser.add_argument("--dry_run", action="store_true", help="print the script and command")
  args = parser.parse_args(argv[:split])
  text = script(args, argv[split + 1:])
  path = args.script or os.path.join(args.log_dir, f"{args.job_name}.sbatch")
  if args.dry_run:
    print(f"# {path}\n{text}# then: sbatch {path}")
    return 0
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  os.makedirs(args.log_dir, exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return subprocess.call(["sbatch", path])


if __name__ == "__main__":
  sys.exit(main())
