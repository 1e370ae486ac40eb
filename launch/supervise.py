"""Processes that run together and stop together, and restarts after faults.

launch/local.py runs the processes of a multi-process run as one Group;
launch/sweep_run.py restarts each point of a sweep by the same rules. When one
process of a group ends abnormally, the others are stopped at once (SIGTERM,
then SIGKILL after a grace period) instead of waiting out the distributed
runtime's heartbeat timeout (about a minute) in a collective that will never
finish. Whether an ending is worth a restart is jaxlm.exit_status's call (bad
input and a non-finite loss are not); each restart is a record in
WORKDIR/restarts.jsonl, which the run counts in its summary.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import threading
import time

from jaxlm import exit_status
from jaxlm.run import files

# Lines of process 0's stderr that reach the terminal: jaxlm's own one-line messages.
# Everything else there (absl logs, C++ traces of an abort) stays in the log file.
SHOWN_PREFIXES = ("warning:", "error:")


@dataclasses.dataclass
class Ending:
  """How a group ended."""
  returncode: int             # the first abnormal process's status, else 0
  process: int | None = None  # which process ended abnormally first (None: none did)
  stopped_seconds: float = 0.0  # from that process's end to the whole group stopped
  interrupted: bool = False   # the launcher was asked to stop (SIGTERM, Ctrl-C)

  @property
  def restartable(self) -> bool:
    return not self.interrupted and exit_status.restartable(self.returncode)


class Group:
  """Processes started together; `wait()` stops them all as soon as one fails.

  Args:
    commands: (environment additions, argv) per process.
    logs: a log file per process; output is appended with a header per start.
    echo: show process 0's stdout, and its stderr lines that start with
      SHOWN_PREFIXES, on this terminal too.
    grace: seconds between SIGTERM and SIGKILL when the group is stopped.
  """

  def __init__(self, commands: list[tuple[dict, list[str]]], logs: list[str],
               echo: bool = True, grace: float = 3.0):
    self.commands, self.logs, self.echo, self.grace = commands, logs, echo, grace
    self.procs: list[subprocess.Popen] = []
    self._threads: list[threading.Thread] = []
    self._interrupts = 0

  def start(self, header: str = "") -> Group:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    for i, ((env, argv), path) in enumerate(zip(self.commands, self.logs)):
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      log = open(path, "a", buffering=1)
      log.write(f"==== {stamp} {header}{' '.join(argv)}\n")
      piped = self.echo and i == 0
      # A session of its own: Ctrl-C at the terminal reaches only this launcher, which
      # passes SIGTERM on once (twice would make the run stop without a checkpoint).
      proc = subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True,
                              stdout=subprocess.PIPE if piped else log,
                              stderr=subprocess.PIPE if piped else subprocess.STDOUT,
                              text=True if piped else None)
      if piped:
        self._threads += [
            threading.Thread(target=_tee, args=(proc.stdout, log, sys.stdout, ()), daemon=True),
            threading.Thread(target=_tee, args=(proc.stderr, log, sys.stderr, SHOWN_PREFIXES),
                             daemon=True)]
      else:
        log.close()  # the child holds its own descriptor
      self.procs.append(proc)
    for t in self._threads:
      t.start()
    return self

  def interrupt(self, *_) -> None:
    """The launcher was asked to stop: SIGTERM to each process (they save and exit);
    asked again, SIGKILL."""
    self._interrupts += 1
    self._signal(signal.SIGTERM if self._interrupts == 1 else signal.SIGKILL)

  def _signal(self, sig) -> None:
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, sig)  # the process and anything it started
        except ProcessLookupError:
          pass

  def wait(self, poll_seconds: float = 0.05) -> Ending:
    """Waits for every process; the first abnormal ending stops the rest."""
    first, killed = None, False  # (process, returncode, when seen) of the first to fail
    while True:
      alive = [p.poll() is None for p in self.procs]  # poll() every process
      if first is None:
        ended = [(i, p.returncode) for i, p in enumerate(self.procs)
                 if p.returncode not in (None, 0)]
        if ended:
          first = (*min(ended, key=_cause_first), time.monotonic())
          if any(alive) and not self._interrupts:
            self._signal(signal.SIGTERM)
      elif any(alive) and not killed and time.monotonic() - first[2] > self.grace:
        self._signal(signal.SIGKILL)  # a peer stuck in a collective never sees SIGTERM through
        killed = True
      if not any(alive):
        break
      time.sleep(poll_seconds)
    for t in self._threads:
      t.join(timeout=5)
    if first is None:
      return Ending(0, interrupted=bool(self._interrupts))
    i, returncode, when = first
    return Ending(returncode, i, time.monotonic() - when, interrupted=bool(self._interrupts))


def _cause_first(ended: tuple[int, int]) -> tuple[int, int]:
  """Orders (process, returncode) seen ending together, likeliest cause first: a peer's
  death makes the others fail in their next collective (an error, or the runtime's
  abort), so a process killed by a signal comes first, one the runtime aborted last."""
  process, returncode = ended
  rank = 2 if exit_status.aborted(returncode) else 0 if returncode < 0 else 1
  return rank, process


def _tee(stream, log, terminal, prefixes) -> None:
  """Copies a child's stream into its log and, all of it or only `prefixes` lines, here."""
  for line in stream:
    log.write(line)
    if not prefixes or line.startswith(prefixes):
      terminal.write(line)
      terminal.flush()
  log.flush()


def at_least(low: int, kind=int):
  """An argparse type: `kind` of the text, refused below `low` (the launchers' counts and
  seconds)."""
  def parse(text: str):
    value = kind(text)
    if value < low:
      raise argparse.ArgumentTypeError(f"{value} is invalid: expected >= {low}")
    return value
  return parse


def backoff_seconds(restart: int, base: float) -> float:
  """The wait before restart number `restart` (1, 2, ...): base doubled each time, <= 60 s."""
  return min(base * 2 ** (restart - 1), 60.0) if base > 0 else 0.0


def record_restart(workdir: str, ending: Ending, backoff: float, **extra) -> int:
  """Writes the restart after `ending` into WORKDIR/restarts.jsonl; returns its number."""
  return files.record_restart(workdir, {
      "time": datetime.datetime.now().isoformat(timespec="seconds"),
      "process": ending.process, "returncode": ending.returncode,
      "ended": exit_status.describe(ending.returncode),
      "stopped_seconds": round(ending.stopped_seconds, 3),
      "last_checkpoint": files.last_checkpoint(workdir), "backoff_seconds": backoff, **extra})


def report(ending: Ending, workdir: str, log: str) -> str:
  """One line on a fault: which process, how it ended, where the run can resume."""
  step = files.last_checkpoint(workdir)
  where = (f"last checkpoint: step {step}" if step is not None
           else "no checkpoint yet (a restart starts over)")
  who = "" if ending.process is None else f"process {ending.process} "
  stopped = f"; group stopped {ending.stopped_seconds:.1f}s later" \
      if ending.stopped_seconds else ""
  return f"{who}{exit_status.describe(ending.returncode)}{stopped}; {where}; log: {log}"
