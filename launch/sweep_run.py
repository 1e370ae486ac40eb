"""One sweep point at a time, in the foreground: what every sweep launcher runs per point.

  python launch/sweep_run.py --sweep=shakespeare_isoflop --dir=runs/isoflop_bytes \
      (--name=NAME | --index=I)...

Each point is `python -m jaxlm.main --experiment=<base> --workdir=DIR/<name> --set ...`.
A point with a summary.json is skipped; an interrupted one resumes from its
checkpoint (jaxlm.main resumes an existing workdir). Its output goes to
DIR/<name>/launch.log and its outcome to DIR/<name>/status.json (`running`, then
`ok` | `failed` | `interrupted`), which `python -m jaxlm.scaling collect` reads;
DIR/sweep.json lists every point of the sweep. SIGTERM is passed on to the run,
which checkpoints and exits (a SLURM time limit, a preempted VM).

launch/sweep_local.py, sweep_slurm.py and sweep_tpu_vm.py share these functions;
the last two run this file on the machines that train.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import supervise  # noqa: E402  (this checkout's jaxlm first, as for the runs)
from jaxlm import exit_status  # noqa: E402


def command(base: str, sweep_dir: str, run, python: str = sys.executable) -> list[str]:
  """The jaxlm.main argv of one sweep point (a branch continues its parent's workdir)."""
  overrides = list(run.overrides)
  if run.after:
    overrides += [f"init.from_workdir={os.path.join(sweep_dir, run.after)}",
                  f"init.from_step={run.at_step}"]
  return [python, "-m", "jaxlm.main", f"--experiment={base}",
          f"--workdir={os.path.join(sweep_dir, run.name)}", *[f"--set={o}" for o in overrides]]


def parent_state(sweep_dir: str, run) -> str:
  """For a branch: "ready" when its parent's checkpoint at_step exists, "waiting" while the
  parent may still write it, "lost" when the parent has ended without it; else "ready"."""
  if not run.after:
    return "ready"
  parent = os.path.join(sweep_dir, run.after)
  if os.path.isdir(os.path.join(parent, "checkpoints", str(run.at_step))):
    return "ready"  # Orbax renames a step's directory into place once it is complete
  try:
    with open(os.path.join(parent, "status.json")) as f:
      status = json.load(f).get("status")
  except (OSError, ValueError):
    status = None
  return "lost" if status in ("ok", "failed") else "waiting"


def load(sweep: str):
  """(spec, runs) of a registered sweep; KeyError or ValueError says what is wrong."""
  from jaxlm import registry
  from jaxlm.scaling import sweeps
  spec = registry.sweep(sweep)
  return spec, sweeps.expand(spec)


def done(sweep_dir: str, name: str) -> bool:
  """Whether the point has finished (its summary.json exists): launchers skip it."""
  return os.path.exists(os.path.join(sweep_dir, name, "summary.json"))


def write_plan(sweep_dir: str, sweep: str, spec, runs) -> None:
  """DIR/sweep.json: every point, so that collect lists those not yet run as pending."""
  _write_json(os.path.join(sweep_dir, "sweep.json"),
              {"sweep": sweep, "base": spec.base,
               "runs": [{"name": r.name, "overrides": list(r.overrides), "role": r.role,
                         **({"after": r.after, "at_step": r.at_step} if r.after else {})}
                        for r in runs]})


def _write_json(path: str, value) -> None:
  # Written whole, then renamed: array tasks on other hosts may write the same file.
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def write_status(workdir: str, **fields) -> None:
  _write_json(os.path.join(workdir, "status.json"), fields)


def finish(workdir: str, returncode: int, cmd: list[str]) -> str:
  """Records how a run ended in its status.json; returns the status."""
  # A SIGTERM'd run saves a checkpoint and exits 0 without a summary: interrupted.
  if os.path.exists(os.path.join(workdir, "summary.json")):
    status = "ok"
  else:
    status = "failed" if returncode else "interrupted"
  write_status(workdir, status=status, returncode=returncode, command=shlex.join(cmd))
  return status


def slurm_job() -> dict:
  """{"slurm_job": "JOB_TASK" or "JOB"} inside a SLURM job, for collect to ask squeue; else {}."""
  array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
  if array and task:
    return {"slurm_job": f"{array}_{task}"}
  job = os.environ.get("SLURM_JOB_ID")
  return {"slurm_job": job} if job else {}


def env() -> dict:
  """The environment of a run: this checkout first on PYTHONPATH."""
  return {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}


def start(base: str, sweep_dir: str, run) -> tuple[subprocess.Popen, list[str], object]:
  """Starts one point in the background: (process, argv, its open launch.log)."""
  workdir = os.path.join(sweep_dir, run.name)
  cmd = command(base, sweep_dir, run)
  os.makedirs(workdir, exist_ok=True)
  log = open(os.path.join(workdir, "launch.log"), "a")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
  # Where and as which process it runs, so that collect can tell a live run from
  # one whose launcher was killed before it could record the outcome.
  write_status(workdir, status="running", command=shlex.join(cmd), host=socket.gethostname(),
               pid=proc.pid, **slurm_job())
  return proc, cmd, log


def run_points(base: str, sweep_dir: str, runs, parallel: int = 1,
               parents_elsewhere: bool = False, poll_seconds: float = 10.0,
               max_restarts: int = 0, restart_backoff: float = 2.0) -> dict[str, int]:
  """Runs the points, `parallel` at a time, skipping finished ones; counts of each status.

  On SIGTERM or Ctrl-C no further point starts and the running ones get SIGTERM,
  save a checkpoint and exit (status `interrupted`); a rerun resumes them. A branch
  (run.after) starts as soon as its parent's checkpoint exists, before points listed
  after it that could start too; one whose parent ended without that checkpoint, or
  is neither running nor queued here, is `blocked`. With parents_elsewhere (an array
  task, a TPU VM: other processes run the other points) a branch whose parent is not
  here waits for it, polling every poll_seconds, while this process runs what it can.
  A point that fails in a way a restart may cure (jaxlm.exit_status) starts again
  from its last checkpoint after a backoff, up to max_restarts times in this call;
  each restart is recorded in its WORKDIR/restarts.jsonl (launch/supervise.py).
  """
  todo, running, counts, stop = list(runs), [], {}, []
  restarts: dict[str, int] = {}
  not_before: dict[str, float] = {}  # a restarted point waits out its backoff
  said_waiting = ""
  # On a terminal, a bar of points done with the running and failed ones; plain lines
  # elsewhere (a log file, SLURM).
  bar = tqdm.tqdm(total=len(todo), unit="point", dynamic_ncols=True) \
      if sys.stdout.isatty() else None

  def say(text):
    if bar is None:
      print(text, flush=True)
      return
    bar.write(text)
    bar.set_postfix_str(f"{len(running)} running, {counts.get('failed', 0)} failed")

  def terminate(*_):
    if not stop:
      stop.append(True)
      for proc, *_rest in running:
        proc.send_signal(signal.SIGTERM)

  def count(status):
    counts[status] = counts.get(status, 0) + 1
    if bar is not None:
      bar.update()

  previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    while running or (todo and not stop):
      while todo and not stop and len(running) < parallel:
        states = [parent_state(sweep_dir, r) for r in todo]
        for r, state in zip(list(todo), states):
          if state == "lost" or (state == "waiting" and not parents_elsewhere and not running
                                 and not any(p.name == r.after for p in todo)):
            todo.remove(r)
            say(f"blocked     {r.name} (no checkpoint {r.at_step} of {r.after} coming)")
            count("blocked")
        ready = [r for r, state in zip(todo, states) if state == "ready" and r in todo
                 and not_before.get(r.name, 0.0) <= time.monotonic()]
        ready.sort(key=lambda r: not r.after)  # a branch whose checkpoint is there goes first
        if not ready:
          break
        r = ready[0]
        todo.remove(r)
        if done(sweep_dir, r.name):
          say(f"skip        {r.name} (summary.json exists)")
          count("skipped")
          continue
        proc, cmd, log = start(base, sweep_dir, r)
        running.append((proc, r, cmd, log))
        if stop:  # the signal came while it started
          proc.send_signal(signal.SIGTERM)
        say(f"start       {r.name}")
      if not running and todo and not stop and all(
          parent_state(sweep_dir, r) == "waiting" for r in todo):
        if not parents_elsewhere:
          continue  # the loop above marks them blocked
        waiting = ", ".join(f"{r.name} (checkpoint {r.at_step} of {r.after})" for r in todo)
        if waiting != said_waiting:
          say(f"waiting     {waiting}")
          said_waiting = waiting
        time.sleep(poll_seconds)
      time.sleep(0.2)
      for item in [x for x in running if x[0].poll() is not None]:
        proc, r, cmd, log = item
        log.close()
        running.remove(item)
        workdir = os.path.join(sweep_dir, r.name)
        status = finish(workdir, proc.returncode, cmd)
        if (status == "failed" and not stop and restarts.get(r.name, 0) < max_restarts
            and exit_status.restartable(proc.returncode)):
          restarts[r.name] = restarts.get(r.name, 0) + 1
          backoff = supervise.backoff_seconds(restarts[r.name], restart_backoff)
          ending = supervise.Ending(proc.returncode, 0)
          supervise.record_restart(workdir, ending, backoff)
          say(f"restart     {r.name} ({supervise.report(ending, workdir, log.name)}; "
              f"restart {restarts[r.name]} of {max_restarts} in {backoff:g}s)")
          not_before[r.name] = time.monotonic() + backoff
          todo.insert(0, r)
          continue
        count(status)
        say(f"{status:11s} {r.name}")
  finally:
    if bar is not None:
      bar.close()
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  return counts


def exit_code(counts: dict[str, int]) -> int:
  """1 if a point failed, 130 if one was interrupted, else 0; after a one-line report."""
  print("done: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True)
  if counts.get("failed") or counts.get("blocked"):
    return 1
  return 130 if counts.get("interrupted") else 0


def select(runs, names=(), indices=()) -> list:
  """The runs named, or at the given indices of the sweep, in that order."""
  by_name = {r.name: r for r in runs}
  chosen = []
  for name in names:
    if name not in by_name:
      raise ValueError(f"--name={name!r} is not a point of this sweep "
                       f"(`python -m jaxlm.scaling sweep --name SWEEP` lists them)")
    chosen.append(by_name[name])
  for i in indices:
    if not 0 <= i < len(runs):
      raise ValueError(f"--index={i} is invalid: expected 0..{len(runs) - 1}")
    chosen.append(runs[i])
  return chosen


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sweep", required=True, help="name of a registered sweep")
  parser.add_argument("--dir", required=True, help="sweep directory; one workdir per run")
  parser.add_argument("--name", action="append", default=[], help="a point to run (repeatable)")
  parser.add_argument("--index", action="append", type=int, default=[],
                      help="a point to run by its place in the sweep, from 0 (repeatable)")
  add_restart_flag(parser)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    spec, runs = load(args.sweep)
    chosen = select(runs, args.name, args.index)
  except (KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not chosen:
    parser.error("expected at least one --name or --index")
  write_plan(args.dir, args.sweep, spec, runs)
  # An array task or a TPU VM runs its points alone: a branch whose parent another task
  # runs waits for that parent's checkpoint, while this one runs what it can.
  return exit_code(run_points(spec.base, args.dir, chosen, parents_elsewhere=True,
                              max_restarts=args.max_restarts))


def add_restart_flag(parser) -> None:
  """--max_restarts, shared by the sweep launchers."""
  parser.add_argument("--max_restarts", type=supervise.at_least(0), default=0,
                      help="restart a point that fails with a fault from its last checkpoint, "
                      "up to N times")


if __name__ == "__main__":
  sys.exit(main())
