"""What a jaxlm process's exit status says, for the launchers that decide whether to restart it.

0 is a finished or preempted run (a checkpoint was saved; rerunning resumes).
BAD_INPUT and NONFINITE end runs that a restart would only end again the same way;
every other status, and death by a signal, is a fault: a launcher with
--max_restarts starts the run again from its last checkpoint.
"""

from __future__ import annotations

import signal

BAD_INPUT = 2    # a config or flag error, named in one line on stderr
NONFINITE = 3    # a non-finite loss under train.nonfinite=stop
STORAGE = 4      # the workdir could not be written (full, read-only): a restart may find
                 # it fixed (a cleaned disk, a remounted filesystem)
HANG = 87        # the step watchdog found no progress for train.hang_timeout seconds

_MEANING = {
    1: "a Python error",
    BAD_INPUT: "bad input",
    NONFINITE: "a non-finite loss",
    STORAGE: "the workdir could not be written",
    HANG: "hung: no progress for train.hang_timeout",
    # What the XLA runtime and the distributed service's abort() leave (SIGABRT as seen
    # by a shell, and -6 by Python), e.g. when a peer stopped answering.
    134: "aborted by the XLA runtime or the distributed service",
    250: "aborted by the XLA runtime or the distributed service",
}


def aborted(returncode: int) -> bool:
  """Whether the runtime aborted the process (often because another process died)."""
  return returncode in (-signal.SIGABRT, 128 + signal.SIGABRT, 250)


def restartable(returncode: int) -> bool:
  """Whether a process that ended so may succeed if the run is started again."""
  return returncode not in (0, BAD_INPUT, NONFINITE)


def describe(returncode: int) -> str:
  """How a process ended, in words: 'killed by SIGKILL', 'exit status 87 (hung: ...)'."""
  if returncode < 0:
    try:
      name = signal.Signals(-returncode).name
    except ValueError:
      name = f"signal {-returncode}"
    if -returncode == signal.SIGABRT:
      return f"killed by {name} ({_MEANING[250]})"
    return f"killed by {name}"
  meaning = _MEANING.get(returncode)
  return f"exit status {returncode}" + (f" ({meaning})" if meaning else "")
