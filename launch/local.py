"""Run one jaxlm command as N processes on this machine, joined by jax.distributed.

  python launch/local.py --num_processes 2 [--cpu_devices_per_process 4] \
      [--max_restarts 3] [--dry_run] \
      -- --experiment=shakespeare --workdir=runs/two --set train.steps=100

Each process gets --coordinator_address/--num_processes/--process_id; with
--cpu_devices_per_process each sees that many CPU devices (for testing meshes
without accelerators). Each process's output goes to WORKDIR/logs/process_<i>.log;
process 0's progress and jaxlm's one-line warnings and errors are also shown here.
When a process ends abnormally the others are stopped at once (SIGTERM, then
SIGKILL after --grace_seconds) and one line says which, how, and the last
checkpoint; with --max_restarts N the group starts again from that checkpoint,
up to N times, waiting --restart_backoff seconds (doubled each time), and each
restart is recorded in WORKDIR/restarts.jsonl. SIGTERM or Ctrl-C makes every
process save a checkpoint and exit. The exit status is the failed process's
(128 + N for signal N), or 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import signal
import sys
import time

import supervise
from jaxlm.run import files


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def commands(args, jaxlm_args: list[str]) -> list[tuple[dict, list[str]]]:
  """(environment additions, argv) for each process."""
  port = args.port or free_port()
  out = []
  for i in range(args.num_processes):
    env = {}
    if args.cpu_devices_per_process:
      # Other XLA flags the caller set are kept; only the device count is replaced.
      kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
              if not f.startswith("--xla_force_host_platform_device_count")]
      env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(
          kept + [f"--xla_force_host_platform_device_count={args.cpu_devices_per_process}"])}
    argv = [sys.executable, "-m", "jaxlm.main", *jaxlm_args,
            f"--coordinator_address=localhost:{port}", f"--num_processes={args.num_processes}",
            f"--process_id={i}"]
    out.append((env, argv))
  return out


def workdir_of(jaxlm_args: list[str]) -> str | None:
  """The --workdir among jaxlm.main's arguments (--workdir=DIR or --workdir DIR)."""
  for i, a in enumerate(jaxlm_args):
    if a.startswith("--workdir="):
      return a.split("=", 1)[1]
    if a == "--workdir" and i + 1 < len(jaxlm_args):
      return jaxlm_args[i + 1]
  return None


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  ours, sep, theirs = (argv[:argv.index("--")], "--", argv[argv.index("--") + 1:]) \
      if "--" in argv else (argv, "", [])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=supervise.at_least(1), default=2)
  parser.add_argument("--cpu_devices_per_process", type=int, default=0)
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one "
                      "per start)")
  parser.add_argument("--max_restarts", type=supervise.at_least(0), default=0,
                      help="restart the group from its last checkpoint after up to N faults")
  parser.add_argument("--restart_backoff", type=supervise.at_least(0, float), default=2.0,
                      help="seconds before the first restart, doubled for each next one")
  parser.add_argument("--grace_seconds", type=supervise.at_least(0, float), default=3.0,
                      help="after a fault, seconds between SIGTERM and SIGKILL to the others")
  parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  args = parser.parse_args(ours)
  if not theirs:
    parser.error("give the jaxlm.main arguments after --")
  if args.dry_run:
    for env, cmd in commands(args, theirs):
      print(" ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] +
                     [shlex.quote(c) for c in cmd]))
    return 0
  workdir = workdir_of(theirs)
  if not workdir:
    parser.error("give --workdir=DIR among the jaxlm.main arguments: every process, and "
                 "every restart, must use the same run directory")
  resume = shlex.join([sys.executable, sys.argv[0], *argv])
  logs = [os.path.join(workdir, files.LOGS, f"process_{i}.log")
          for i in range(args.num_processes)]
  print(f"{args.num_processes} processes; logs in {os.path.join(workdir, files.LOGS)} "
        "(process 0's progress is shown here)", flush=True)
  group = None

  def interrupt(*_):
    stop.append(True)
    if group is not None:
      group.interrupt()

  stop: list[bool] = []
  previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    for attempt in range(args.max_restarts + 1):
      group = supervise.Group(commands(args, theirs), logs, grace=args.grace_seconds)
      group.start(header=f"start {attempt}: " if attempt else "")
      if stop:  # asked to stop while starting
        group.interrupt()
      ending = group.wait()
      if ending.returncode == 0 or ending.interrupted:
        return _status(ending.returncode)
      print(f"error: {supervise.report(ending, workdir, logs[ending.process or 0])}",
            file=sys.stderr, flush=True)
      if not ending.restartable or attempt == args.max_restarts:
        why = ("restarting would not help" if not ending.restartable else
               f"--max_restarts={args.max_restarts} reached" if args.max_restarts else
               "--max_restarts N restarts it automatically")
        print(f"stopped ({why}); resume with: {resume}", file=sys.stderr, flush=True)
        return _status(ending.returncode)
      backoff = supervise.backoff_seconds(attempt + 1, args.restart_backoff)
      n = supervise.record_restart(workdir, ending, backoff)
      print(f"restart {n} of {args.max_restarts} in {backoff:g}s from the last checkpoint",
            file=sys.stderr, flush=True)
      time.sleep(backoff)
      if stop:
        return _status(ending.returncode)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return 0


def _status(returncode: int) -> int:
  """A child's return code as this process's exit status (a signal N as 128 + N)."""
  return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
  sys.exit(main())
