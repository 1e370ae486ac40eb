"""Where a run's parameters start when not from a random draw: a trained run's checkpoint.

`init.from_workdir=DIR` loads the latest params of the run in DIR into this
run (fine-tuning: a task's new head keeps its fresh init); with `init.grow`
set, a shallower or narrower run is grown into this model's shape
(jaxlm.models.grow). The source's tokenizer must be this run's, and its model
must equal this one in every key that growing does not change. Only a fresh
start loads: a run resuming its own checkpoint ignores init.*.
"""

from __future__ import annotations

import jax
from flax import traverse_util

from jaxlm import config as config_lib
from jaxlm import config_io
from jaxlm import sharding
from jaxlm.config import Config
from jaxlm.models import encoder_decoder, grow, transformer
from jaxlm.run import checkpoint, files
from jaxlm.run.load import load_run
from jaxlm.train import optim

# Model keys that only say how the model runs, not what it computes.
_RUNTIME_KEYS = ("attention", "remat", "layer_loop", "compute_dtype", "param_dtype", "init_std")
_GROWN_KEYS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff")
_DATA_KEYS = ("tokenizer", "tokenizer_path", "vocab_size")


def source_config(config: Config) -> Config:
  """The config of the run init.from_workdir names (its config.json)."""
  try:
    return files.read_config(config.init.from_workdir, "init.from_workdir")
  except FileNotFoundError as e:
    raise config_lib.ConfigError(str(e)) from None


def check_source(config: Config) -> Config:
  """Checks that init.from_workdir can start this run; returns its config."""
  src = source_config(config)
  key = "init.from_workdir"
  for k in _DATA_KEYS:
    a, b = getattr(src.data, k), getattr(config.data, k)
    if a != b:
      raise config_lib.ConfigError(
          f"{key}={config.init.from_workdir!r} was trained with data.{k}={a!r} but this run "
          f"sets data.{k}={b!r}; expected the same tokenizer")
  for k in config_io.to_dict(config.model):
    a, b = getattr(src.model, k), getattr(config.model, k)
    if k in _RUNTIME_KEYS or a == b or (k in _GROWN_KEYS and config.init.grow != "none"):
      continue
    hint = (" (set init.grow=stack or interleave to grow it)" if k in _GROWN_KEYS else "")
    raise config_lib.ConfigError(
        f"{key}={config.init.from_workdir!r} has model.{k}={a!r} but this run sets "
        f"model.{k}={b!r}; expected the same{hint}")
  if config.init.grow != "none":
    try:
      grow.check_growable(src.model, config.model)
    except ValueError as e:
      raise config_lib.ConfigError(f"init.grow={config.init.grow!r}: {e}") from None
  if not checkpoint.saved_steps(config.init.from_workdir):
    raise config_lib.ConfigError(f"{key}={config.init.from_workdir!r} holds no checkpoint; "
                                 "expected a run that has saved at least one step")
  return src


# What a branch (init.from_step) may not change from its parent: the state it continues
# and the learning rate up to the branch point (the schedule's shape after it may differ).
_BRANCH_KEYS = ("model", "data", "task", "seed", "train.batch_size", "optim.name", "optim.lr",
                "optim.warmup_steps", "optim.b1", "optim.b2", "optim.eps",
                "optim.weight_decay", "optim.grad_clip", "optim.adafactor_decay_rate",
                "optim.muon_lr", "optim.muon_beta", "optim.muon_ns_steps")
_BRANCH_FREE = tuple(f"model.{k}" for k in _RUNTIME_KEYS if k != "param_dtype")  # may differ


def check_branch(config: Config) -> Config:
  """Checks that this run can continue init.from_workdir's state at init.from_step.

  A branch (a WSD cooldown, Hägele et al. 2024) takes the parent's whole state at
  step S (params, optimizer state, data position) and trains on with its own
  schedule; up to S that schedule must give the parent's learning rates.
  """
  src = check_source(config)
  S, parent = config.init.from_step, config.init.from_workdir
  flat = lambda c: traverse_util.flatten_dict(config_io.to_dict(c), sep=".")
  mine, theirs = flat(config), flat(src)
  for key in sorted(mine):
    if key.startswith(_BRANCH_KEYS) and mine[key] != theirs.get(key) \
        and key not in _BRANCH_FREE:
      raise config_lib.ConfigError(
          f"init.from_step={S}: {parent} has {key}={theirs.get(key)!r} but this run sets "
          f"{mine[key]!r}; a branch continues its parent's state: expected the same")
  steps = checkpoint.saved_steps(parent)
  if S not in steps:
    raise config_lib.ConfigError(
        f"init.from_step={S}: {parent} has no checkpoint at step {S} (it has {steps}); "
        "expected a step it saved and kept (checkpoint.at_steps keeps the steps to branch at)")
  ours, theirs_lr = optim.schedule(config.optim, config.train.steps), optim.schedule(
      src.optim, src.train.steps)
  for count in sorted({0, min(config.optim.warmup_steps, S - 1), S - 1}):
    a, b = float(theirs_lr(count)), float(ours(count))
    if not abs(a - b) <= 1e-6 * max(abs(a), 1e-12):
      raise config_lib.ConfigError(
          f"init.from_step={S}: at step {count + 1} {parent}'s learning rate is {a:.6g} but "
          f"this run's schedule gives {b:.6g}; expected the same up to the branch point (a "
          "WSD branch: the parent still stable at S, optim.decay_steps = train.steps - S)")
  return src


def load(config: Config, mesh, rules, fresh_params: dict) -> dict:
  """This run's initial params: fresh_params with the source run's params put in.

  Params the source has (the whole model) replace the fresh ones, cast to this
  run's dtype and placed as the fresh ones are; the rest (a task's head) keep
  their fresh values.
  """
  src = check_source(config)
  loaded = load_run(config.init.from_workdir, mesh=mesh, what="init.from_workdir").params
  model = (encoder_decoder if src.model.encoder_layers else transformer).param_specs(src.model)
  params = {k: v for k, v in loaded.items() if k in model}  # not a source task's head
  if config.init.grow != "none":
    target = sharding.tree_shardings(transformer.param_specs(config.model), mesh, rules)
    grown = jax.jit(lambda p, key: grow.grow_params(
        p, src.model, config.model, depth=config.init.grow, zero_new=config.init.zero_new,
        rng=key), out_shardings=target)
    params = grown(params, jax.random.key(config.seed + 1))
  place = lambda new, old: jax.device_put(new.astype(old.dtype), old.sharding)
  return {name: jax.tree.map(place, params[name], fresh) if name in params else fresh
          for name, fresh in fresh_params.items()}


def describe(config: Config) -> str:
  """One line for the log: where the params came from."""
  src = source_config(config)
  how = (f"; {grow.describe(src.model, config.model, config.init.grow, config.init.zero_new)}"
         if config.init.grow != "none" else "")
  return f"params from {config.init.from_workdir} ({src.name}){how}"
