"""A config as text: `--set key=value` overrides parsed to each field's declared type,
and the JSON of a run's config.json (jaxlm/config.py holds the tree and its checks)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from typing import Any

from jaxlm.config import Config, ConfigError, replace


def leaf_keys(config) -> dict[str, type]:
  """Every overridable dotted key of a config and its declared type."""
  out = {}
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      out.update({f"{field.name}.{k}": t for k, t in leaf_keys(value).items()})
    else:
      out[field.name] = hints[field.name]
  return out


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _parse(key: str, text: str, kind) -> Any:
  if kind is bool:
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
  elif kind in (int, float):
    try:
      return kind(text.replace("_", "") if kind is int else text)
    except ValueError:
      pass
  elif kind is str:
    return text
  elif kind == tuple[int, ...]:  # comma-separated, e.g. checkpoint.at_steps=100,250
    try:
      return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError:
      raise ConfigError(f"{key}={text!r} is not a comma-separated list of ints") from None
  else:
    raise ConfigError(f"{key} has type {kind} and cannot be set with --set; "
                      "change it in the experiment's Python config")
  raise ConfigError(f"{key}={text!r} is not a valid {kind.__name__}")


def apply_overrides(config: Config, overrides: list[str]) -> Config:
  """Returns config with `key=value` overrides applied, each parsed to its field's type."""
  keys = leaf_keys(config)
  changes = {}
  for item in overrides:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep:
      raise ConfigError(f"--set {item!r}: expected key=value, e.g. model.d_model=256")
    if key not in keys:
      close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.5)
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(f"unknown config key {key!r}{hint}")
    changes[key] = _parse(key, text.strip(), keys[key])
  return replace(config, **changes)


def to_dict(config) -> dict:
  """The config tree as plain JSON-able dicts."""
  return dataclasses.asdict(config)


def _tuples(value):
  """JSON lists back to the tuples a config holds (mesh.rules is a tuple of tuples)."""
  return tuple(map(_tuples, value)) if isinstance(value, list) else value


def from_dict(cls, data: dict):
  """Rebuilds a config dataclass from to_dict() output (e.g. a run's config.json)."""
  hints = typing.get_type_hints(cls)
  unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise ConfigError(f"unknown keys {sorted(unknown)} for {cls.__name__}")
  return cls(**{k: from_dict(hints[k], v) if dataclasses.is_dataclass(hints[k]) else _tuples(v)
                for k, v in data.items()})


def dumps(config: Config) -> str:
  return json.dumps(to_dict(config), indent=2, sort_keys=False)


def loads(text: str) -> Config:
  return from_dict(Config, json.loads(text))
