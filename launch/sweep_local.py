"""Run every point of a registered sweep on this machine, one or N processes at a time.

  python launch/sweep_local.py --sweep=shakespeare_isoflop --dir=runs/isoflop_bytes \
      [--parallel=2] [--only=SUBSTRING] [--max_restarts=N] [--dry_run]

Each point is `python -m jaxlm.main --experiment=<base> --workdir=DIR/<name> --set ...`.
Resumable: runs with a summary.json are skipped and interrupted ones resume from
their checkpoints (jaxlm.main resumes an existing workdir). Each run's output goes
to DIR/<name>/launch.log and its outcome to DIR/<name>/status.json, which
`python -m jaxlm.scaling collect` reads; DIR/sweep.json lists every point.
Ctrl-C or SIGTERM stops starting points and sends SIGTERM to the running ones,
which checkpoint and exit. The per-point logic is launch/sweep_run.py's, shared
with sweep_slurm.py and sweep_tpu_vm.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import sweep_run


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, help="name of a registered sweep")
  parser.add_argument("--dir", required=True, help="sweep directory; one workdir per run")
  parser.add_argument("--parallel", type=int, default=1, help="runs at once")
  parser.add_argument("--only", default="",
                      help="run only points whose name contains this (and the stable runs "
                      "a WSD study's chosen branches continue)")
  sweep_run.add_restart_flag(parser)
  parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.parallel < 1:
    parser.error(f"--parallel={args.parallel} is invalid: expected a positive integer")
  try:
    spec, runs = sweep_run.load(args.sweep)
  except (KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  chosen = [r for r in runs if args.only in r.name]
  parents = {r.after for r in chosen if r.after}  # --only a branch runs its parent too
  chosen = [r for r in runs if r in chosen or r.name in parents]
  todo = [r for r in chosen if not sweep_run.done(args.dir, r.name)]
  if args.dry_run:
    for r in todo:
      print(shlex.join(sweep_run.command(spec.base, args.dir, r)))
    return 0
  sweep_run.write_plan(args.dir, args.sweep, spec, runs)
  print(f"{len(chosen) - len(todo)} of {len(chosen)} runs done; running {len(todo)}",
        flush=True)
  return sweep_run.exit_code(sweep_run.run_points(spec.base, args.dir, todo, args.parallel,
                                                  max_restarts=args.max_restarts))


if __name__ == "__main__":
  sys.exit(main())
