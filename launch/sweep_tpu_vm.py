"""Run a registered sweep on one or more Cloud TPU VMs: points in turn on each VM, VMs at once.

  python launch/sweep_tpu_vm.py --sweep=shakespeare_isoflop --dir=/mnt/shared/isoflop \
      --tpu=vm-a,vm-b --zone=us-east5-a [--setup --git=URL] [--only=SUBSTRING] [--dry_run]

Points are dealt round-robin to the VMs (point j to VM j mod n). Each VM runs its
points one after another through `gcloud compute tpus tpu-vm ssh --worker=all
--command="cd CHECKOUT && python launch/sweep_run.py --sweep=S --dir=DIR --name=..."`,
which runs the same `python -m jaxlm.main --experiment=... --workdir=DIR/<name>
--set ...` per point as launch/sweep_local.py and writes DIR/<name>/status.json,
so `python -m jaxlm.scaling collect --sweep DIR` reads the results. Resumable:
each VM skips points with a summary.json; points whose summary.json is visible
here (DIR mounted on this machine too) are not dealt at all. On a multi-host
slice every worker runs each point as one jax.distributed job, so DIR must be a
path that all of a VM's workers share. --setup first clones or updates the
checkout on every VM and installs it. --dry_run prints the exact gcloud commands.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

import sweep_run
import tpu_vm


def deal(runs, tpus: list[str]) -> dict[str, list]:
  """Round-robin: the j-th point to tpus[j % len(tpus)], order kept within each VM."""
  out = {t: [] for t in tpus}
  for j, r in enumerate(runs):
    out[tpus[j % len(tpus)]].append(r)
  return out


def commands(args, runs) -> tuple[list[list[str]], list[list[str]]]:
  """(setup commands, sweep commands): one gcloud command per VM in each."""
  setup, sweep = [], []
  for tpu, points in deal(runs, args.tpus).items():
    vm = argparse.Namespace(**{**vars(args), "tpu": tpu, "dir": args.checkout})
    if args.setup:
      setup.append(tpu_vm.gcloud(vm, tpu_vm.setup_remote(vm)))
    if points:
      run = [args.python, "launch/sweep_run.py", f"--sweep={args.sweep}", f"--dir={args.dir}",
             *[f"--name={r.name}" for r in points],
             *([f"--max_restarts={args.max_restarts}"] if args.max_restarts else [])]
      sweep.append(tpu_vm.gcloud(vm, f"cd {shlex.quote(args.checkout)} && {shlex.join(run)}"))
  return setup, sweep


def _run_together(cmds: list[list[str]]) -> int:
  procs = [subprocess.Popen(c) for c in cmds]
  return max([p.wait() for p in procs], default=0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, help="name of a registered sweep")
  parser.add_argument("--dir", required=True, help="sweep directory on the VMs")
  parser.add_argument("--tpu", action="append", required=True,
                      help="TPU VM name(s): comma-separated or repeated")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default="")
  parser.add_argument("--checkout", default="jaxlm", help="checkout directory on the VMs")
  parser.add_argument("--git", default="", help="repository URL to clone (with --setup)")
  parser.add_argument("--setup", action="store_true", help="clone/update and install first")
  parser.add_argument("--python", default="python", help="interpreter on the VMs")
  parser.add_argument("--only", default="", help="run only points whose name contains this")
  sweep_run.add_restart_flag(parser)
  parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  args.tpus = [t for item in args.tpu for t in item.split(",") if t]
  if len(set(args.tpus)) != len(args.tpus):
    parser.error(f"--tpu lists a VM twice ({','.join(args.tpus)}): expected distinct names")
  if args.setup and not args.git:
    parser.error("--setup needs --git URL of the repository to clone on the VMs")
  try:
    spec, runs = sweep_run.load(args.sweep)
  except (KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  del spec
  chosen = [r for r in runs if args.only in r.name]
  todo = [r for r in chosen if not sweep_run.done(args.dir, r.name)]
  print(f"# {len(chosen) - len(todo)} of {len(chosen)} points done here; "
        f"{len(todo)} dealt to {len(args.tpus)} VM(s)", flush=True)
  setup, sweep = commands(args, todo)
  if args.dry_run:
    for cmd in setup + sweep:
      print(shlex.join(cmd))
    return 0
  if setup and _run_together(setup):
    print("error: setup failed on a VM; nothing was started", file=sys.stderr)
    return 1
  return 1 if _run_together(sweep) else 0


if __name__ == "__main__":
  sys.exit(main())
