"""Loading a trained run: config, tokenizer, mesh and params of one checkpoint, in one call.

Every tool that reads a run (generation, evaluation, export, Hugging Face
conversion, warm starts) goes through `load_run`, so a run is found, checked
and restored the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from jaxlm import config as config_lib
from jaxlm import params as params_lib
from jaxlm import sharding, tasks
from jaxlm.data import pipeline
from jaxlm.run import checkpoint, files


@dataclasses.dataclass
class LoadedRun:
  """A run's checkpoint, restored: `params` are those of `step`, sharded over `mesh`."""
  workdir: str
  config: config_lib.Config
  step: int
  mesh: jax.sharding.Mesh
  params: dict

  @functools.cached_property
  def tokenizer(self):
    """The run's tokenizer (loaded on first use: exporting params needs none)."""
    return pipeline.tokenizer_for(self.config.data, self.config.model.vocab_size)

  def __iter__(self):
    """(config, tokenizer, mesh, params, step), for unpacking."""
    return iter((self.config, self.tokenizer, self.mesh, self.params, self.step))


def run_mesh(config: config_lib.Config) -> jax.sharding.Mesh:
  """The run's own mesh where this host has its devices, else its local devices along
  the data axis (params replicated)."""
  try:
    return sharding.make_mesh(config.mesh)
  except config_lib.ConfigError:
    return sharding.make_mesh(config_lib.MeshConfig(rules=config.mesh.rules))


def load_run(workdir: str, step: int | None = None, *, mesh=None, what: str = "--workdir",
             task_kind: str | None = None) -> LoadedRun:
  """Restores checkpoint `step` (default: the latest) of the run in workdir.

  Its params are sharded over `mesh` (default: run_mesh(config)); `what` names the flag or
  key that gave workdir, for error messages; task_kind, if given, is the task.kind the run
  must have (checked before any restore). The config is the one saved with that checkpoint
  (config.json's for checkpoints saved without one), the params the whole task's (a
  classifier's head too) in the run's model.param_dtype. Raises FileNotFoundError if
  workdir is not a run or has no such checkpoint, ConfigError if the run's config does not
  load or is not of task_kind.
  """
  if not files.has_config(workdir) and not checkpoint.saved_steps(workdir):
    raise FileNotFoundError(f"{what}={workdir} has no config.json and no checkpoint; expected "
                            "the directory of a run made by `python -m jaxlm.main`")
  # The config these params were saved with; config.json only for checkpoints without one.
  config, step = checkpoint.restore_config(workdir, step)
  config = config or files.read_config(workdir, what)
  if task_kind is not None and config.task.kind != task_kind:
    raise config_lib.ConfigError(f"{what}={workdir} is a task.kind={config.task.kind!r} run; "
                                 f"expected a {task_kind} run")
  mesh = run_mesh(config) if mesh is None else mesh
  specs = tasks.get(config).param_specs()
  shardings = sharding.tree_shardings(specs, mesh, config.mesh.rules)
  abstract = params_lib.abstract_params(specs, config.model.param_dtype, shardings)
  params, step = checkpoint.restore_params(workdir, abstract, step)
  return LoadedRun(workdir, config, step, mesh, params)
