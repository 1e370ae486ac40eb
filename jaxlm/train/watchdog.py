"""A step watchdog: a run that stops making progress dumps its stacks and exits.

A hung collective (a peer stuck in a driver, a lost network link) blocks every
process of a run forever: nothing crashes, so nothing restarts it. The training
loop calls `beat()` after every step, evaluation batch and checkpoint; a thread
checks that the beats keep coming. When none has come for
max(train.hang_timeout, MEDIAN_FACTOR x the median step so far), it writes
every thread's stack to WORKDIR/logs/hang-process<i>.txt, prints one line, and
ends the process with exit_status.HANG, which the launchers take for a fault and
restart the group from the last checkpoint. The first step (compilation) gets
train.hang_timeout like every other.
"""

from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import threading
import time

from jaxlm import exit_status

# A step this many times slower than the median is taken for a hang even when
# train.hang_timeout is shorter (a run of 60 s steps may take minutes for one).
MEDIAN_FACTOR = 50.0


class Watchdog:
  """Ends the process when `beat()` stops being called for `timeout` seconds (0: never);
  a context manager. The stacks go to DUMP_DIR/hang-process<process_index>.txt; `exit`
  ends the process (os._exit: the main thread may be stuck in C++, where neither
  exceptions nor sys.exit reach it)."""

  def __init__(self, timeout: float, dump_dir: str, process_index: int = 0,
               exit=os._exit):
    self.timeout, self.dump_dir, self.process_index = timeout, dump_dir, process_index
    self._exit, self._last, self._what = exit, time.monotonic(), "the first step"
    self._intervals: list[float] = []
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="jaxlm-watchdog", daemon=True)

  def __enter__(self) -> Watchdog:
    if self.timeout > 0:
      self._last = time.monotonic()
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._done.set()

  def beat(self, what: str, step_done: bool = False) -> None:
    """Progress was made; `what` is what runs next (for the report), `step_done` when
    a training step just finished (its time joins the median)."""
    now = time.monotonic()
    if step_done:
      self._intervals.append(now - self._last)
      del self._intervals[:-1000]  # the recent steps are enough for a median
    self._last, self._what = now, what

  def beating(self, items, what: str):
    """Yields from items, beating before each (an evaluation's batches)."""
    for item in items:
      self.beat(what)
      yield item

  def limit(self) -> float:
    """Seconds allowed without a beat now."""
    median = statistics.median(self._intervals) if self._intervals else 0.0
    return max(self.timeout, MEDIAN_FACTOR * median)

  def _watch(self) -> None:
    while not self._done.wait(min(max(self.timeout / 10, 0.05), 5.0)):
      idle = time.monotonic() - self._last
      if idle > self.limit():
        self._fire(idle)
        return

  def _fire(self, idle: float) -> None:
    os.makedirs(self.dump_dir, exist_ok=True)
    path = os.path.join(self.dump_dir, f"hang-process{self.process_index}.txt")
    with open(path, "w") as f:
      f.write(f"no progress for {idle:.0f}s while running {self._what} "
              f"(limit {self.limit():.0f}s, train.hang_timeout={self.timeout:g})\n\n")
      f.flush()
      faulthandler.dump_traceback(file=f, all_threads=True)
    print(f"error: process {self.process_index} made no progress for {idle:.0f}s while "
          f"running {self._what} (train.hang_timeout={self.timeout:g}); every thread's "
          f"stack is in {path}; exiting with status {exit_status.HANG} so that a launcher "
          "with --max_restarts restarts the run from its last checkpoint",
          file=sys.stderr, flush=True)
    self._exit(exit_status.HANG)
