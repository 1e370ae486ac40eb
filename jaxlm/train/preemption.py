"""SIGTERM and SIGINT as a request to save a checkpoint and stop after the current step."""

from __future__ import annotations

import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  """Turns SIGTERM and SIGINT into a request to save and stop after the current step.

  Use around the training loop and ask `reached(step)` after every step. One
  process: the signal sets a flag. Several: JAX's preemption service, which
  listens for SIGTERM, tells every process and picks one step for all of them
  (`reached_preemption_sync_point`), so SIGTERM is left to it and SIGINT is passed
  on to it as SIGTERM. A second signal before the save stops the old way.
  """

  def __init__(self):
    self.signal: str | None = None
    self._previous: dict = {}
    self._shared = jax.process_count() > 1 and jax.config.jax_enable_preemption_service

  def __enter__(self) -> Preemption:
    if threading.current_thread() is threading.main_thread():  # signal.signal requires it
      for sig in (signal.SIGTERM, signal.SIGINT):
        if not (self._shared and sig == signal.SIGTERM):
          self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.signal is not None:
      self.__exit__()
      signal.raise_signal(signum)
      return
    self.signal = signal.Signals(signum).name
    if jax.process_index() == 0:
      print(f"warning: {self.signal} received: finishing this step, then saving a checkpoint "
            "and stopping (send it again to stop at once)", file=sys.stderr, flush=True)
    if self._shared:
      signal.raise_signal(signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step` (every process gets the same answer)."""
    if self._shared:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signal is not None
