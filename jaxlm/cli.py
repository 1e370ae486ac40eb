"""What every jaxlm command line shares: how bad input is reported."""

from __future__ import annotations

import sys


def fail(message: str) -> None:
  """One line `error: ...` on stderr and exit status 2: the contract for bad input."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)
