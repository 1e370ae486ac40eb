"""Hugging Face model directories to jaxlm runs and back: from_hf() and to_hf().

A Hugging Face directory is what `save_pretrained` writes: config.json and
model.safetensors, or shards listed in model.safetensors.index.json. It is read
with the safetensors numpy API (no torch). A jaxlm run is config.json and an
Orbax checkpoint at step 0 whose `state` holds `step` and `params`, which
jaxlm.run.load.load_run reads (generate, evaluate, export, --to_hf). Neither side
is ever overwritten; each is written into a temporary directory beside the
target and renamed into place when complete.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so BF16 tensors load)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxlm import config as config_lib
from jaxlm.config import Config, ConfigError, DataConfig, ModelConfig
from jaxlm.convert import gpt2, hf_tokenizer, llama
from jaxlm.data.tokenizer import HFTokenizer, load_tokenizer
from jaxlm.run import checkpoint, files, loggers
from jaxlm.run.load import load_run

# model_type -> the module that converts it.
MODEL_TYPES = {"gpt2": gpt2, "llama": llama, "mistral": llama}
LM_HEAD = "lm_head.weight"
# A Hugging Face tokenizer's files that an imported run keeps, in WORKDIR/tokenizer/.
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_SINGLE, _INDEX = "model.safetensors", "model.safetensors.index.json"


class Tensors:
  """A save_pretrained directory's tensors by name, read on demand; remembers those taken."""

  def __init__(self, hf_dir: str):
    self._open = lambda f: safe_open(os.path.join(hf_dir, f), framework="np")
    if os.path.isfile(os.path.join(hf_dir, _SINGLE)):
      files = [_SINGLE]
    elif os.path.isfile(os.path.join(hf_dir, _INDEX)):
      with open(os.path.join(hf_dir, _INDEX)) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    else:
      raise FileNotFoundError(f"{hf_dir} has neither {_SINGLE} nor {_INDEX}; expected a "
                              "directory written by save_pretrained with safetensors "
                              "(pytorch_model.bin is not read)")
    self.where: dict[str, str] = {}
    for name in files:
      if not os.path.isfile(os.path.join(hf_dir, name)):  # a shard the index lists
        raise FileNotFoundError(f"{os.path.join(hf_dir, _INDEX)} lists {name}, which is not "
                                f"in {hf_dir}; expected every shard it names")
      with self._open(name) as f:
        self.where.update({k: name for k in f.keys()})
    self.taken: set[str] = set()
    self.dir = hf_dir
    self.progress = loggers.progress(total=len(self.where), desc=f"reading {hf_dir}")

  def has(self, name: str) -> bool:
    return name in self.where

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor `name`, which must have `shape` (what config.json implies)."""
    if name not in self.where:
      raise ValueError(f"{self.dir} has no tensor {name!r}; expected it in a checkpoint of the "
                       "architecture its config.json describes")
    with self._open(self.where[name]) as f:
      a = f.get_tensor(name)
    if tuple(a.shape) != tuple(shape):
      raise ValueError(f"{os.path.join(self.dir, self.where[name])}: tensor {name!r} has shape "
                       f"{tuple(a.shape)}; expected {tuple(shape)} from config.json")
    self.taken.add(name)
    self.progress.update()
    return a


def model_config(hf: dict) -> ModelConfig:
  """The jaxlm model config of an HF config.json; an error naming any unsupported key."""
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ConfigError(f"config.json model_type={model_type!r} is not supported: expected one of "
                      f"{', '.join(map(repr, MODEL_TYPES))} (decoder-only causal LMs)")
  module = MODEL_TYPES[model_type]
  want = module.ARCHITECTURES[model_type]
  if any(arch != want for arch in hf.get("architectures") or []):
    raise ConfigError(f"config.json architectures={hf['architectures']} is not supported: "
                      f"expected [{want!r}] for model_type={model_type!r}")
  return module.config_from_hf(hf)


def hf_model_config(c: ModelConfig) -> dict:
  """The config.json of the HF model equal to a jaxlm model; an error naming a key it lacks."""
  return (gpt2 if c.positions == "learned" else llama).config_to_hf(c)


def run_config(model: ModelConfig, name: str, tokenizer_dir: str = "") -> Config:
  """A run around a converted model: with the Hugging Face tokenizer in tokenizer_dir, or
  (none given) jaxlm's byte tokenizer."""
  data = DataConfig(tokenizer="hf" if tokenizer_dir else "bytes", tokenizer_path=tokenizer_dir,
                    seq_len=min(DataConfig.seq_len, model.max_seq_len))
  return Config(name=name, model=model, data=data)


def usable_tokenizer(hf_dir: str, vocab_size: int) -> tuple[bool, str]:
  """(whether hf_dir's tokenizer can be a run's data.tokenizer=hf, and why not)."""
  if not os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
    return False, "it has no tokenizer.json"
  try:
    tok = HFTokenizer(hf_dir)
  except (ImportError, ValueError) as e:
    return False, str(e)
  if tok.vocab_size > vocab_size:
    return False, (f"its vocabulary ({tok.vocab_size}) is larger than the model's "
                   f"({vocab_size})")
  return True, ""


def read_hf(hf_dir: str, dtype: str = "float32") -> tuple[Config, dict]:
  """(run config, params as numpy arrays of `dtype`) of a save_pretrained directory."""
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"--from_hf {hf_dir} is not a directory; expected one written by "
                            "save_pretrained")
  _check_dtype(dtype)
  if not os.path.isfile(os.path.join(hf_dir, "config.json")):
    raise FileNotFoundError(f"--from_hf {hf_dir} has no config.json; expected a directory "
                            "written by save_pretrained")
  with open(os.path.join(hf_dir, "config.json")) as f:
    hf = json.load(f)
  model = config_lib.replace(model_config(hf), param_dtype=dtype)
  module = MODEL_TYPES[hf["model_type"]]
  t = Tensors(hf_dir)
  params = module.params_from_hf(t, model, hf)
  if not model.tie_embeddings:
    params["unembed"] = t.take(LM_HEAD, params["embed"].shape).T
  t.progress.close()
  if model.tie_embeddings and t.has(LM_HEAD):  # a tied model that saved its head anyway
    if not np.array_equal(t.take(LM_HEAD, params["embed"].shape), params["embed"]):
      raise ValueError(f"{hf_dir}: {LM_HEAD} differs from the token embedding although "
                       "config.json has tie_word_embeddings=true; expected them equal")
  unused = [k for k in sorted(set(t.where) - t.taken) if not k.endswith(module.IGNORED)]
  if unused:
    raise ValueError(f"{hf_dir} has tensors that a {module.ARCHITECTURES[hf['model_type']]} with "
                     f"this config.json does not have: {', '.join(unused[:5])}"
                     f"{' ...' if len(unused) > 5 else ''}; expected none")
  params = jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(dtype)), params)
  return run_config(model, f"hf_{hf['model_type']}"), params


def from_hf(hf_dir: str, workdir: str, dtype: str = "float32") -> Config:
  """Converts a save_pretrained directory into a new jaxlm run in workdir; returns its config.

  The tokenizer files found in hf_dir (tokenizer.json and its configs) are copied into
  WORKDIR/tokenizer/ and named by the run's config (data.tokenizer=hf) when jaxlm can
  use them (usable_tokenizer); otherwise the run names the byte tokenizer.
  """
  _refuse_existing(workdir, "--workdir")
  config, params = read_hf(hf_dir, dtype)
  copy_tokenizer = usable_tokenizer(hf_dir, config.model.vocab_size)[0]
  if copy_tokenizer:
    config = run_config(config.model, config.name,
                        os.path.join(os.path.abspath(workdir), TOKENIZER_DIR))

  def write(tmp):
    if copy_tokenizer:
      _copy_tokenizer_files(hf_dir, os.path.join(tmp, TOKENIZER_DIR))
    files.write_config(tmp, config)
    mngr = checkpoint.manager(tmp, keep=1, async_save=False)
    state = {"step": np.zeros((), np.int32), "params": params}
    checkpoint.save(mngr, 0, state, {}, config, wait=True)
    mngr.close()

  _write_new_dir(workdir, write)
  return config


def to_hf(workdir: str, hf_dir: str, step: int | None = None,
          dtype: str | None = None) -> tuple[str, int]:
  """Writes checkpoint `step` (default the latest) of a run as a save_pretrained directory.

  Returns (architecture, step). Tensors are written in `dtype`, by default the
  run's model.param_dtype.
  """
  _refuse_existing(hf_dir, "--to_hf")
  if dtype is not None:
    _check_dtype(dtype)
  config, step = checkpoint.restore_config(workdir, step)
  config = config or files.read_config(workdir)
  c = config.model
  hf = hf_model_config(c)  # before reading params: a model with no HF equivalent stops here
  module = MODEL_TYPES[hf["model_type"]]
  dtype = dtype or c.param_dtype
  # A byte-level run's tokenizer has an HF twin (hf_tokenizer.py), an hf one is copied
  # back; a sentencepiece one is not converted yet.
  kind, tok_dir = config.data.tokenizer, config.data.tokenizer_path
  eos = load_tokenizer(kind, tok_dir).eos_id if kind in ("bytes", "hf") else None
  hf.update(dtype=dtype, bos_token_id=eos, eos_token_id=eos)
  params = load_run(workdir, step).params
  named = module.params_to_hf(params, c)
  if not c.tie_embeddings:
    named[LM_HEAD] = params["unembed"].T
  tensors = {k: np.ascontiguousarray(np.asarray(v).astype(jnp.dtype(dtype)))
             for k, v in named.items()}

  def write(tmp):
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf, f, indent=2)
    save_file(tensors, os.path.join(tmp, _SINGLE), metadata={"format": "pt"})
    if kind == "bytes":
      hf_tokenizer.write_byte_tokenizer(tmp, c.max_seq_len)
    elif kind == "hf":
      _copy_tokenizer_files(tok_dir if os.path.isdir(tok_dir) else os.path.dirname(tok_dir),
                            tmp)

  _write_new_dir(hf_dir, write)
  return hf["architectures"][0], step


def _copy_tokenizer_files(src_dir: str, dst_dir: str) -> None:
  """Copies the TOKENIZER_FILES that src_dir has into dst_dir (made if missing)."""
  os.makedirs(dst_dir, exist_ok=True)
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src_dir, name)):
      shutil.copy2(os.path.join(src_dir, name), os.path.join(dst_dir, name))


def _check_dtype(dtype: str) -> None:
  if dtype not in config_lib.DTYPES:
    raise ValueError(f"--dtype={dtype!r} is invalid: expected one of "
                     f"{', '.join(config_lib.DTYPES)}")


def _refuse_existing(path: str, flag: str) -> None:
  if os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path)):
    raise FileExistsError(f"{flag} {path} already exists; expected a new (or empty) directory: "
                          "jaxlm.convert never overwrites")


def _write_new_dir(path: str, write) -> None:
  """Calls write(tmp) on a fresh directory beside `path` and renames it to `path` when done."""
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  os.makedirs(tmp)
  try:
    write(tmp)
    os.rename(tmp, path)  # replaces an empty directory; fails on a non-empty one
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
