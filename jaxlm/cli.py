"""What every jaxlm command line shares: how bad input is reported."""

from __future__ import annotations

import sys


def fail(message: str) -> None:
  """One line `error: ...` on stderr and exit status 2: the contract for bad input."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def start(argv, hint: str = "", verbosity: str = "error") -> None:
  """What an absl main does first: refuse stray arguments, quiet Orbax's and grain's logs,
  and (on CPU, before JAX starts) let malloc reuse the step buffers (jaxlm.malloc).

  Orbax logs at INFO on every save and restore and warns on every read-only open.
  """
  from absl import logging  # pylint: disable=import-outside-toplevel
  from jaxlm import malloc  # pylint: disable=import-outside-toplevel
  malloc.reuse_freed_memory()
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}" + (f"; {hint}" if hint else ""))
  logging.set_verbosity({"error": logging.ERROR, "warning": logging.WARNING}[verbosity])
