"""Exports a run's trained params to one plain file, readable without Orbax or jaxlm.

Behind `python -m jaxlm.export --workdir=DIR --out=FILE.safetensors|FILE.msgpack [--step=N]`.

`.safetensors`: the Hugging Face format, written here without the library: an
8-byte little-endian header length, a JSON header giving each tensor's dtype,
shape and byte range under its dotted path in the param tree
("layers.mlp.w_in"), then the raw bytes; `__metadata__` holds the format, the
step and the resolved config JSON. `.msgpack`: flax.serialization's encoding
of {"format", "step", "config" (JSON text), "params" (the nested tree)}.
`load(path)` reads either back as (params, config dict, step).
"""

from __future__ import annotations

import json
import os
import struct

import jax
import ml_dtypes
import numpy as np
from flax import serialization, traverse_util

from jaxlm import config_io
from jaxlm.run.load import load_run

FORMAT = "jaxlm-params"
SUFFIXES = (".safetensors", ".msgpack")
_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
           "int32": "I32", "int64": "I64", "int8": "I8", "uint8": "U8", "uint32": "U32",
           "bool": "BOOL"}


def export(workdir: str, out: str, step: int | None = None) -> int:
  """Writes the params of `step` (default the latest) of the run in workdir; returns the step."""
  if not out.endswith(SUFFIXES):
    raise ValueError(f"--out {out!r} has an unknown format; expected a file name ending in "
                     f"{' or '.join(SUFFIXES)}")
  run = load_run(workdir, step)
  params = jax.tree.map(np.asarray, run.params)
  text = config_io.dumps(run.config)
  tmp = f"{out}.tmp{os.getpid()}"  # written whole, then renamed: never a half file at `out`
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.endswith(".safetensors"):
    flat = traverse_util.flatten_dict(params)
    dotted = [".".join(path) for path in flat if any("." in key for key in path)]
    if dotted:
      raise ValueError(f"param name {dotted[0]!r} contains '.', the path separator")
    save_safetensors(tmp, traverse_util.flatten_dict(params, sep="."),
                     {"format": FORMAT, "step": str(run.step), "config": text})
  else:
    with open(tmp, "wb") as f:
      f.write(serialization.msgpack_serialize(
          {"format": FORMAT, "step": run.step, "config": text, "params": params}))
  os.replace(tmp, out)
  return run.step


def load(path: str) -> tuple[dict, dict, int]:
  """(params as a nested dict of numpy arrays, config dict, step) from an exported file."""
  if not path.endswith(".safetensors"):
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
    return tree["params"], json.loads(tree["config"]), int(tree["step"])
  dtypes = {v: np.dtype(ml_dtypes.bfloat16 if k == "bfloat16" else k) for k, v in _DTYPES.items()}
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    data = f.read()
  meta = header.pop("__metadata__", {})
  tensors = {name: np.frombuffer(data[slice(*info["data_offsets"])], dtypes[info["dtype"]])
             .reshape(info["shape"]) for name, info in header.items()}
  params = traverse_util.unflatten_dict(tensors, sep=".")
  return params, json.loads(meta["config"]), int(meta["step"])


def save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]):
  """Writes name -> array as a safetensors file with string metadata."""
  header, offset, arrays = {"__metadata__": metadata}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype.name not in _DTYPES:
      raise ValueError(f"tensor {name!r} has dtype {a.dtype}; expected one of {list(_DTYPES)}")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # the format is little-endian
    header[name] = {"dtype": _DTYPES[a.dtype.name], "shape": list(a.shape),
                    "data_offsets": [offset, offset + a.nbytes]}
    offset += a.nbytes
    arrays.append(a)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # tensors start 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)) + raw)
    for a in arrays:
      f.write(a.tobytes())
