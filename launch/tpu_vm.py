"""Run a jaxlm command on every worker of a Cloud TPU VM slice (gcloud --worker=all).

  python launch/tpu_vm.py --tpu my-v5p-64 --zone us-east5-a [--setup] [--dry_run] \
      -- --experiment=gpt2_small --workdir=gs://bucket/runs/gpt2

jax.distributed discovers the slice's workers itself. --setup first clones or
updates the repository on each worker and installs it (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys


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
  """The gcloud commands, in order."""
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
  parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  args = parser.parse_args(argv[:split])
  if args.setup and not args.git:
    parser.error("--setup needs --git URL of the repository to clone on the workers")
  for cmd in commands(args, argv[split + 1:]):
    if args.dry_run:
      print(" ".join(shlex.quote(c) for c in cmd))
    elif subprocess.call(cmd):
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
