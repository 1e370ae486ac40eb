"""How fast a multi-process run recovers from a fault: death to stop, restart to first step.

Runs `launch/local.py --num_processes 2 --max_restarts K` on CPU processes and,
K times, kills a process (SIGKILL; the last time SIGSTOP, a hang the step
watchdog must catch) a few steps after the run has logged again. From the
launcher's own output, timestamped as it arrives:

- death to stop: from the kill to the launcher's line saying the group stopped
  (the goal is under 5 s; before launch/supervise.py the survivor waited out the
  distributed runtime's heartbeat timeout, about 57 s, and nothing restarted it);
- restart to first step: from the launcher starting the group again (after its
  backoff) to process 0's first step line (interpreter start, distributed
  setup, restore, compilation).

  python benchmarks/faults.py [--kills 3] [--hang_timeout 10] [--set key=value ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The default experiment's model with 2 data-parallel processes, a checkpoint every 10 steps.
RUN = ["--experiment=shakespeare", "--set=train.steps=400", "--set=train.log_every=1",
       "--set=train.eval_every=0", "--set=train.sample_tokens=0", "--set=checkpoint.every=10",
       "--set=train.batch_size=16"]


class Lines:
  """A child's output lines with the time each arrived."""

  def __init__(self, proc):
    self.lines: list[tuple[float, str]] = []
    for stream in (proc.stdout, proc.stderr):
      threading.Thread(target=self._read, args=(stream,), daemon=True).start()

  def _read(self, stream) -> None:
    for line in stream:
      self.lines.append((time.time(), line.rstrip("\n")))

  def wait_for(self, pattern: str, after: float, timeout: float = 600.0) -> tuple[float, str]:
    """The first line matching pattern that arrived after `after` (a time.time())."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      for t, line in list(self.lines):
        if t >= after and re.search(pattern, line):
          return t, line
      time.sleep(0.01)
    raise TimeoutError(f"no line matching {pattern!r} in {timeout:.0f}s")


def child(launcher_pid: int, process_id: int) -> int:
  """The pid of the launcher's child with --process_id=process_id."""
  for entry in os.listdir("/proc"):
    try:
      with open(f"/proc/{entry}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{entry}/cmdline") as f:
        cmd = f.read()
    except (OSError, ValueError, IndexError):
      continue
    if ppid == launcher_pid and f"--process_id={process_id}" in cmd:
      return int(entry)
  raise LookupError(f"no process {process_id} under the launcher")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=3,
                      help="faults in the run: SIGKILLs, the last one a SIGSTOP (hang)")
  parser.add_argument("--hang_timeout", type=float, default=10.0,
                      help="train.hang_timeout of the run, for the SIGSTOP fault")
  parser.add_argument("--set", action="append", default=[], help="extra key=value for the run")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                    "faults.json"))
  args = parser.parse_args()
  workdir = tempfile.mkdtemp(prefix="jaxlm_faults_")
  cmd = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes", "2",
         "--cpu_devices_per_process", "1", "--max_restarts", str(args.kills),
         "--restart_backoff", "1", "--", *RUN, f"--set=train.hang_timeout={args.hang_timeout}",
         *[f"--set={s}" for s in args.set], f"--workdir={workdir}"]
  env = {**os.environ, "PYTHONPATH": ROOT}
  proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  out = Lines(proc)
  rows, results = [], []
  started = time.time()
  try:
    first, _ = out.wait_for(r"^step \d+/", started)
    print(f"first start to first step: {first - started:.1f}s", flush=True)
    for k in range(args.kills):
      hang = k == args.kills - 1 and args.hang_timeout > 0
      out.wait_for(r"^step \d+/", time.time())  # a few steps into this start
      time.sleep(2.0)
      victim = k % 2
      pid = child(proc.pid, victim)
      killed = time.time()
      os.kill(pid, signal.SIGSTOP if hang else signal.SIGKILL)
      # The launcher's report (not the watchdog's "error: process 1 made no progress").
      stopped, line = out.wait_for(r"^error: process \d+ (killed|exit status)", killed,
                                   timeout=args.hang_timeout * 3 + 120)
      restart, said = out.wait_for(r"^restart \d+ of", killed)
      backoff = float(re.search(r"in ([\d.]+)s", said).group(1))
      step, _ = out.wait_for(r"^step \d+/", restart)
      fault = "SIGSTOP (hang)" if hang else "SIGKILL"
      result = {"fault": fault, "process": victim, "death_to_stop_s": stopped - killed,
                "restart_to_first_step_s": step - (restart + backoff), "report": line}
      results.append(result)
      rows.append([k + 1, fault, victim, f"{result['death_to_stop_s']:.2f}",
                   f"{result['restart_to_first_step_s']:.1f}"])
      print(f"fault {k + 1}: {fault} to process {victim}: stopped in "
            f"{result['death_to_stop_s']:.2f}s; first step "
            f"{result['restart_to_first_step_s']:.1f}s after the restart", flush=True)
    proc.send_signal(signal.SIGTERM)  # the measurements are in; save and stop
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  print(report.table(["fault", "signal", "process", "death to stop s", "restart to step s"],
                     rows))
  kills = [r["death_to_stop_s"] for r in results if r["fault"] == "SIGKILL"]
  summary = {"median_death_to_stop_s": statistics.median(kills) if kills else None,
             "median_restart_to_first_step_s": statistics.median(
                 [r["restart_to_first_step_s"] for r in results]),
             "first_start_to_first_step_s": first - started}
  print(json.dumps(summary))
  report.write(args.out, {"command": cmd, "hang_timeout": args.hang_timeout, "rows": results,
                          **summary})


if __name__ == "__main__":
  main()
