"""The command lines, each in its own module, and what they all share.

Every flag of jaxlm is defined here and nowhere else: train.py (`python -m
jaxlm.main`), generate.py, evaluate.py, export.py, convert.py, scaling.py and
seq2seq.py (`python -m jaxlm.<name>`, through the thin modules of those names),
prepare.py (`python -m jaxlm.data.prepare`), tokenizer.py (`python -m
jaxlm.data.tokenizer train`).
A command line checks its flags, calls the library, and turns bad input into
one line `error: ...` on stderr with exit status 2. The library below never
imports a command line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from absl import logging

from jaxlm import exit_status, hardware, malloc

# Every command line's package is imported before the command line itself, and
# so before anything imports JAX: let malloc reuse XLA's step buffers on CPU
# (jaxlm.malloc), which must happen before JAX's threads take arenas of their own.
malloc.reuse_freed_memory()
# libtpu installed for planning (the topology extra) on a machine without a TPU: JAX would
# try to open one at its first computation and print a page of warnings.
if importlib.util.find_spec("libtpu") and hardware.cpu_only():
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def fail(message: str) -> None:
  """One line `error: ...` on stderr and exit status 2: the contract for bad input."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(exit_status.BAD_INPUT)


@contextlib.contextmanager
def failing(*errors: type[Exception], prefix: str = ""):
  """Turns the given errors (bad input that the library found) into fail()."""
  try:
    yield
  except errors as e:
    fail(f"{prefix}{e}")


def start(argv, hint: str = "", verbosity: str = "error") -> None:
  """What an absl main does first: refuse stray arguments, quiet Orbax's and grain's logs.

  Orbax logs at INFO on every save and restore and warns on every read-only open.
  """
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}" + (f"; {hint}" if hint else ""))
  logging.set_verbosity({"error": logging.ERROR, "warning": logging.WARNING}[verbosity])
