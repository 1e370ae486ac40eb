"""Run one jaxlm command as N processes on this machine, joined by jax.distributed.

  python launch/local.py --num_processes 2 [--cpu_devices_per_process 4] [--dry_run] \
      -- --experiment=shakespeare --workdir=runs/two --set train.steps=100

Each process gets --coordinator_address/--num_processes/--process_id; with
--cpu_devices_per_process each sees that many CPU devices (for testing meshes
without accelerators). Process 0 prints progress; the exit status is the worst
of the processes'.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys


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


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  ours, sep, theirs = (argv[:argv.index("--")], "--", argv[argv.index("--") + 1:]) \
      if "--" in argv else (argv, "", [])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--cpu_devices_per_process", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  args = parser.parse_args(ours)
  if not theirs:
    parser.error("give the jaxlm.main arguments after --")
  procs = commands(args, theirs)
  if args.dry_run:
    for env, cmd in procs:
      print(" ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] +
                     [shlex.quote(c) for c in cmd]))
    return 0
  running = [subprocess.Popen(cmd, env={**os.environ, **env}) for env, cmd in procs]
  return max(p.wait() for p in running)


if __name__ == "__main__":
  sys.exit(main())
