"""Registries of named experiments and sweeps, with close-match lookup errors.

Experiments live in the top-level `experiments` package, one module per family;
each is a function returning a `Config`, decorated with `@register`. Importing
jaxlm does not import them: `load()` does, once, when a name is looked up.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from typing import Callable

_EXPERIMENTS: dict[str, Callable] = {}
_SWEEPS: dict[str, Callable] = {}
_loaded = False


class UnknownNameError(KeyError):
  """A name that is not registered; the message lists the closest ones."""

  def __str__(self):
    return self.args[0]


def _add(table: dict, kind: str, fn: Callable | None, name: str | None):
  if fn is None:  # used as @register(name=...)
    return lambda f: _add(table, kind, f, name)
  name = name or fn.__name__
  if name in table and table[name] is not fn:
    raise ValueError(f"{kind} {name!r} is registered twice "
                     f"({table[name].__module__} and {fn.__module__})")
  if not (fn.__doc__ or "").strip():
    raise ValueError(f"{kind} {name!r} needs a docstring: its first line is its --list entry")
  table[name] = fn
  return fn


def register(fn: Callable | None = None, *, name: str | None = None):
  """Registers an experiment: a no-argument function returning a Config."""
  return _add(_EXPERIMENTS, "experiment", fn, name)


def register_sweep(fn: Callable | None = None, *, name: str | None = None):
  """Registers a sweep: a no-argument function returning a sweep spec."""
  return _add(_SWEEPS, "sweep", fn, name)


def load() -> None:
  """Imports every module of the `experiments` package (once)."""
  global _loaded
  if _loaded:
    return
  package = importlib.import_module("experiments")
  for info in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"experiments.{info.name}")
  _loaded = True


def _lookup(table: dict, kind: str, name: str) -> Callable:
  load()
  if name not in table:
    close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownNameError(f"unknown {kind} {name!r}{hint} (--list shows all)")
  return table[name]


def experiment(name: str):
  """Builds the Config of the registered experiment `name`."""
  config = _lookup(_EXPERIMENTS, "experiment", name)()
  return config if config.name == name else dataclasses.replace(config, name=name)


def sweep(name: str):
  """Builds the spec of the registered sweep `name`."""
  return _lookup(_SWEEPS, "sweep", name)()


def names(kind: str = "experiment") -> dict[str, str]:
  """Registered names mapped to the first line of their docstrings."""
  load()
  table = _EXPERIMENTS if kind == "experiment" else _SWEEPS
  return {n: fn.__doc__.strip().splitlines()[0] for n, fn in sorted(table.items())}
