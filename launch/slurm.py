"""Submit a jaxlm run to SLURM: one process per GPU, started by srun.

  python launch/slurm.py --nodes 2 --gpus_per_node 8 --partition gpu --time 24:00:00 \
      [--dry_run] -- --experiment=gpt2_small --workdir=/shared/runs/gpt2

Writes an sbatch script next to the workdir (or prints it with --dry_run).
jax.distributed reads the SLURM environment, so the processes need no
coordinator flags. Each task's stderr goes to WORKDIR/logs/process_<task>.log;
the job's output keeps process 0's progress and one line when the run fails.
SLURM sends the batch shell SIGTERM two minutes before
--time runs out: the run saves a checkpoint, and with --max_restarts N the job
requeues itself (also after a preemption or a fault), up to N times, each
recorded in WORKDIR/restarts.jsonl; a requeued job resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import local
import supervise
from jaxlm.run import files


def script(args, jaxlm_args: list[str]) -> str:
  """The sbatch script text."""
  lines = ["#!/bin/bash",
           f"#SBATCH --job-name={args.job_name}",
           f"#SBATCH --nodes={args.nodes}",
           f"#SBATCH --ntasks-per-node={args.gpus_per_node}",
           *(["#SBATCH --gpus-per-task=1"] if args.gpus_per_task else []),
           f"#SBATCH --cpus-per-task={args.cpus_per_task}",
           f"#SBATCH --time={args.time}",
           f"#SBATCH --output={args.log_dir}/%x-%j.out"]
  if args.partition:
    lines.append(f"#SBATCH --partition={args.partition}")
  if args.account:
    lines.append(f"#SBATCH --account={args.account}")
  lines += ["#SBATCH --signal=B:TERM@120"]  # time to checkpoint before the time limit
  if args.max_restarts:
    lines.append("#SBATCH --requeue")
  lines += ["set -euo pipefail", f"cd {shlex.quote(args.repo)}"]
  if args.setup:
    lines.append(args.setup)
  cmd = ["python", "-m", "jaxlm.main", *jaxlm_args]
  # Each task's stderr (tracebacks, XLA's and the distributed runtime's messages) into the
  # run's logs; this job's output keeps process 0's progress and one line per ending.
  logs = shlex.quote(os.path.join(args.workdir, files.LOGS))
  lines.append(f"mkdir -p {logs}")
  srun = f"srun --error={logs}/process_%t.log " + " ".join(shlex.quote(c) for c in cmd)
  lines += requeue_lines(srun, shlex.quote(args.workdir), args.max_restarts, on_fault=True,
                         steps=True)
  return "\n".join(lines) + "\n"


def requeue_lines(command: str, workdir: str, max_requeues: int, on_fault: bool,
                  steps: bool = False) -> list[str]:
  """Bash lines that run `command` and requeue the job when it stops unfinished.

  SIGTERM to the batch shell (the time limit's --signal=B:TERM@120, or a
  preemption) is passed on to the run, which saves a checkpoint and exits (with
  `steps`, to the tasks of the job's srun steps through `scancel --signal=TERM`:
  srun itself answers SIGTERM by killing its tasks at once); then,
  unless WORKDIR/summary.json says the run finished, the job requeues itself
  (`scontrol requeue`), at most max_requeues times (SLURM counts them in
  SLURM_RESTART_COUNT), recording each in WORKDIR/restarts.jsonl. With on_fault,
  an exit status that a restart may cure (not 0, 2 bad input, 3 non-finite loss)
  requeues the job too. `workdir` is a shell word (quoted, or with variables).
  """
  return [
      f"WORKDIR={workdir}",
      f"MAX_REQUEUES={max_requeues}",
      "requeue() {  # $1: why the run stopped",
      '  [ -f "$WORKDIR/summary.json" ] && return 0',
      "  local n=${SLURM_RESTART_COUNT:-0}",
      '  if [ "$n" -ge "$MAX_REQUEUES" ]; then',
      '    echo "error: $1; not requeued ($n of $MAX_REQUEUES requeues used, '
      '--max_restarts); resubmit the job to resume it" >&2',
      "    return 0",
      "  fi",
      '  mkdir -p "$WORKDIR"',
      '  printf \'{"restart": %d, "time": "%s", "slurm_job": "%s", "ended": "%s"}\\n\' '
      '"$((n + 1))" "$(date -Iseconds)" "${SLURM_JOB_ID:-}" "$1" >> "$WORKDIR/restarts.jsonl"',
      '  echo "requeueing job ${SLURM_JOB_ID:-} ($1): requeue $((n + 1)) of '
      '$MAX_REQUEUES" >&2',
      '  scontrol requeue "${SLURM_JOB_ID:-}"',
      "}",
      "RUN=",
      "on_term() {  # the time limit or a preemption: the run checkpoints, then requeue",
      "  local pid=${RUN:-${!:-}}  # $! if the signal came just before RUN was set",
      ('  scancel --signal=TERM "$SLURM_JOB_ID" || true' if steps else
       '  [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null || true; }'),
      '  if [ -n "$pid" ]; then wait "$pid" || true; fi',
      '  requeue "SIGTERM (time limit or preemption)"',
      "  exit 0",
      "}",
      "trap on_term TERM",
      f"{command} &",
      "RUN=$!",
      'STATUS=0; wait "$RUN" || STATUS=$?',
      *(['[ "$STATUS" = 0 ] || echo "error: the run ended with exit status $STATUS; each '
         f'task\'s messages and tracebacks are in $WORKDIR/{files.LOGS}/process_<task>.log" '
         '>&2',
         # jaxlm's own one-line errors (bad input, a full disk, a hang) from those logs.
         f'grep -h "^error:" "$WORKDIR"/{files.LOGS}/process_*.log 2>/dev/null | sort -u | '
         'head -3 >&2 || true',
         'case "$STATUS" in 0|2|3) ;; *) requeue "exit status $STATUS";; esac']
        if on_fault else []),
      'exit "$STATUS"']


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    sys.exit("usage: launch/slurm.py [options] -- <jaxlm.main arguments>")
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--gpus_per_node", type=int, default=8,
                      help="processes per node, one GPU each")
  parser.add_argument("--gpus_per_task", type=int, default=1, choices=(0, 1),
                      help="0: ask SLURM for no GPU (CPU clusters)")
  parser.add_argument("--cpus_per_task", type=int, default=8)
  parser.add_argument("--time", default="24:00:00")
  parser.add_argument("--partition", default="")
  parser.add_argument("--account", default="")
  parser.add_argument("--job_name", default="jaxlm")
  parser.add_argument("--log_dir", default="slurm_logs")
  parser.add_argument("--repo", default=os.getcwd(), help="checkout to run from")
  parser.add_argument("--setup", default="", help="shell line run first (e.g. venv activate)")
  parser.add_argument("--script", default="", help="where to write the sbatch script")
  parser.add_argument("--max_restarts", type=supervise.at_least(0), default=0,
                      help="requeue the job after a time limit, preemption or fault, up to "
                      "N times; it resumes from its last checkpoint")
  parser.add_argument("--dry_run", action="store_true", help="print the script and command")
  args = parser.parse_args(argv[:split])
  args.workdir = local.workdir_of(argv[split + 1:])
  if not args.workdir:
    parser.error("give --workdir=DIR among the jaxlm.main arguments, on a filesystem the "
                 "nodes share: a requeued job resumes the run there")
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
