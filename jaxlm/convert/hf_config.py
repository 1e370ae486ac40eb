"""Reading a Hugging Face config.json: values by key, with errors that name the key."""

from __future__ import annotations

from typing import Any

from jaxlm.config import ConfigError

_REQUIRED = object()


def value(hf: dict, key: str, default: Any = _REQUIRED) -> Any:
  """hf[key], or `default` where the key is absent or null; an error if neither."""
  if hf.get(key) is not None:
    return hf[key]
  if default is _REQUIRED:
    raise ConfigError(f"config.json has no {key!r}; expected it in a {hf.get('model_type')!r} "
                      "config as save_pretrained writes it")
  return default


def expect(hf: dict, key: str, allowed: tuple, default: Any, what: str) -> None:
  """value(hf, key, default) must be one of `allowed`; `what` names the supported case."""
  got = value(hf, key, default)
  if got not in allowed:
    shown = " or ".join(repr(a) for a in allowed)
    raise ConfigError(f"config.json {key}={got!r} is not supported: jaxlm converts {what} with "
                      f"{key}={shown}")


def positive(hf: dict, key: str) -> int:
  """A required positive integer."""
  got = value(hf, key)
  if isinstance(got, bool) or not isinstance(got, int) or got <= 0:
    raise ConfigError(f"config.json {key}={got!r} is invalid: expected a positive integer")
  return got


def require_model(c, arch: str, **want: Any) -> None:
  """Export: the jaxlm model.* values (n_kv_heads resolved) that the HF architecture fixes."""
  for name, wanted in want.items():
    now, key = c.kv_heads if name == "n_kv_heads" else getattr(c, name), f"model.{name}"
    if now != wanted:
      raise ConfigError(
          f"{key}={now!r} has no Hugging Face equivalent here: {arch} needs {key}={wanted!r}. "
          "Convertible models: positions=learned, norm=layernorm, mlp=gelu, n_kv_heads=n_heads "
          "(GPT2LMHeadModel), or positions=rope, norm=rmsnorm, mlp=swiglu (LlamaForCausalLM)")
