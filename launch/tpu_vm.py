"""Run a jaxlm command on every worker of a Cloud TPU VM slice (gcloud --worker=all).

  python launch/tpu_vm.py --tpu my-v5p-64 --zone us-east5-a [--setup] [--dry_run] \
      -- --experiment=gpt2_small --workdir=/mnt/bucket/runs/gpt2

jax.distributed discovers the slice's workers itself. The workdir must be a
directory every worker reaches: a bucket mounted with gcsfuse on each worker, or
a Filestore/NFS mount (a gs:// URL is refused: the run's files are written
through the local filesystem API). --setup first clones or
updates the repository on each worker and installs it (`pip install -e .`).
With --max_restarts N, a run that ends with a status a restart may cure
(jaxlm.exit_status: not bad input, not a non-finite loss) is started again on
every worker, which resumes from the last checkpoint, after --restart_backoff
seconds (doubled each time), up to N times. The workdir is on the workers or in
a bucket, where this machine cannot write: each restart passes the records of
every restart so far to the run (`--restart_record`), whose process 0 adds those
not yet in WORKDIR/restarts.jsonl (an attempt that failed before writing its own
is counted by the next), so summary.json counts them as under the other
launchers. A dead worker stops
the others only by the runtime's heartbeat timeout (about a minute), since
gcloud returns when every worker has ended.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time

import supervise
from jaxlm import exit_status


def gcloud(args, remote: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.tpu, f"--zone={args.zone}",
         "--worker=all", f"--command={remote}"]
  if args.project:
    cmd.insert(5, f"--project={args.project}")
  return cmd


def setup_remote(args) -> str:
  """The shell line that clones or updates the checkout args.dir and installs it."""
  return (f"(test -d {args.dir} || git clone {args.git} {args.dir}) && "
          f"cd {args.dir} && git pull --ff-only && pip install -e .")


def commands(args, jaxlm_args: list[str]) -> list[list[str]]:
  """The gcloud commands, in order: --setup's, then the run's."""
  out = []
  if args.setup:
    out.append(gcloud(args, setup_remote(args)))
  run = " ".join(shlex.quote(a) for a in ["python", "-m", "jaxlm.main", *jaxlm_args])
  out.append(gcloud(args, f"cd {args.dir} && {run}"))
  return out


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    sys.exit("usage: launch/tpu_vm.py [options] -- <jaxlm.main arguments>")
  split = argv.index("--")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tpu", required=True)
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default="")
  parser.add_argument("--dir", default="jaxlm", help="checkout directory on the workers")
  parser.add_argument("--git", default="", help="repository URL to clone (with --setup)")
  parser.add_argument("--setup", action="store_true")
  parser.add_argument("--max_restarts", type=supervise.at_least(0), default=0,
                      help="start the run again after up to N faults (it resumes)")
  parser.add_argument("--restart_backoff", type=supervise.at_least(0, float), default=10.0,
                      help="seconds before the first restart, doubled for each next one")
  parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  args = parser.parse_args(argv[:split])
  if args.setup and not args.git:
    parser.error("--setup needs --git URL of the repository to clone on the workers")
  *setup, run = commands(args, argv[split + 1:])
  if args.dry_run:
    for cmd in [*setup, run]:
      print(" ".join(shlex.quote(c) for c in cmd))
    return 0
  for cmd in setup:
    if subprocess.call(cmd):
      return 1
  records = []
  for attempt in range(args.max_restarts + 1):
    status = subprocess.call(run)
    if status == 0 or not exit_status.restartable(status) or attempt == args.max_restarts:
      if status:
        print(f"error: the run ended with {exit_status.describe(status)}; resume with the "
              "same command", file=sys.stderr, flush=True)
      return status
    backoff = supervise.backoff_seconds(attempt + 1, args.restart_backoff)
    print(f"error: the run ended with {exit_status.describe(status)}; restart "
          f"{attempt + 1} of {args.max_restarts} in {backoff:g}s from the last checkpoint",
          file=sys.stderr, flush=True)
    time.sleep(backoff)
    records.append({"time": datetime.datetime.now().isoformat(timespec="seconds"),
                    "returncode": status, "ended": exit_status.describe(status),
                    "backoff_seconds": backoff, "launcher": "tpu_vm"})
    *_, run = commands(args, [*argv[split + 1:], f"--restart_record={json.dumps(records)}"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
