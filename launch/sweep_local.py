"""Run every point of a registered sweep on this machine, one or N processes at a time.

  python launch/sweep_local.py --sweep=shakespeare_isoflop --dir=runs/isoflop \
      [--parallel=2] [--only=SUBSTRING] [--dry_run]

Each point is `python -m jaxlm.main --experiment=<base> --workdir=DIR/<name> --set ...`.
Resumable: runs with a summary.json are skipped and interrupted ones resume from
their checkpoints (jaxlm.main resumes an existing workdir). Each run's output goes
to DIR/<name>/launch.log and its outcome to DIR/<name>/status.json, which
`python -m jaxlm.scaling collect` reads; DIR/sweep.json lists every point.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def command(base: str, workdir: str, overrides) -> list[str]:
  """The jaxlm.main argv of one sweep point."""
  return [sys.executable, "-m", "jaxlm.main", f"--experiment={base}", f"--workdir={workdir}",
          *[f"--set={o}" for o in overrides]]


def _write_status(workdir: str, **fields) -> None:
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "status.json.tmp")
  with open(tmp, "w") as f:
    json.dump(fields, f)
  os.replace(tmp, os.path.join(workdir, "status.json"))


def _finish(workdir: str, returncode: int, cmd: list[str]) -> str:
  # A SIGTERM'd run saves a checkpoint and exits 0 without a summary: interrupted.
  if os.path.exists(os.path.join(workdir, "summary.json")):
    status = "ok"
  else:
    status = "failed" if returncode else "interrupted"
  _write_status(workdir, status=status, returncode=returncode, command=shlex.join(cmd))
  return status


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, help="name of a registered sweep")
  parser.add_argument("--dir", required=True, help="sweep directory; one workdir per run")
  parser.add_argument("--parallel", type=int, default=1, help="runs at once")
  parser.add_argument("--only", default="", help="run only points whose name contains this")
  parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.parallel < 1:
    parser.error(f"--parallel={args.parallel} is invalid: expected a positive integer")
  from jaxlm import registry
  from jaxlm.scaling import sweeps
  try:
    spec = registry.sweep(args.sweep)
    runs = sweeps.expand(spec)
  except (KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  chosen = [r for r in runs if args.only in r.name]
  todo = [(r, os.path.join(args.dir, r.name)) for r in chosen]
  todo = [(r, w) for r, w in todo if not os.path.exists(os.path.join(w, "summary.json"))]
  if args.dry_run:
    for r, w in todo:
      print(shlex.join(command(spec.base, w, r.overrides)))
    return 0
  os.makedirs(args.dir, exist_ok=True)
  # Every point of the sweep, so that collect lists the ones not yet run as pending.
  with open(os.path.join(args.dir, "sweep.json"), "w") as f:
    json.dump({"sweep": args.sweep, "base": spec.base,
               "runs": [{"name": r.name, "overrides": list(r.overrides)} for r in runs]},
              f, indent=2)
  print(f"{len(chosen) - len(todo)} of {len(chosen)} runs done; running {len(todo)}",
        flush=True)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
  running: list[tuple[subprocess.Popen, str, list[str], object]] = []
  counts: dict[str, int] = {}
  try:
    while todo or running:
      while todo and len(running) < args.parallel:
        r, workdir = todo.pop(0)
        cmd = command(spec.base, workdir, r.overrides)
        os.makedirs(workdir, exist_ok=True)
        _write_status(workdir, status="running", command=shlex.join(cmd))
        log = open(os.path.join(workdir, "launch.log"), "a")
        running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT), workdir, cmd, log))
        print(f"start {r.name}", flush=True)
      time.sleep(0.2)
      for item in [x for x in running if x[0].poll() is not None]:
        proc, workdir, cmd, log = item
        log.close()
        running.remove(item)
        status = _finish(workdir, proc.returncode, cmd)
        counts[status] = counts.get(status, 0) + 1
        print(f"{status:11s} {os.path.basename(workdir)}", flush=True)
  except KeyboardInterrupt:  # children save a checkpoint on SIGTERM; a rerun resumes them
    for proc, workdir, cmd, log in running:
      proc.send_signal(signal.SIGTERM)
    for proc, workdir, cmd, log in running:
      proc.wait()
      log.close()
      _finish(workdir, proc.returncode, cmd)
    return 130
  print("done: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
  return 1 if counts.get("failed") else 0


if __name__ == "__main__":
  sys.exit(main())
