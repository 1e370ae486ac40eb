"""Orbax checkpoints of the train state, the data iterator and the config.

Each checkpoint step holds three items: `state` (params, optimizer state,
step), `data` (the grain iterator state, JSON) and `config` (the resolved
config, JSON). Orbax writes a step into a temporary directory and renames it
when complete, so a crash mid-save leaves nothing that a restart would load.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

from jaxlm import config as config_lib


def manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_names=("state", "data", "config"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict,
         config: config_lib.Config) -> None:
  """Starts saving step `step` (asynchronously where the manager allows)."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(config_lib.to_dict(config))), force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores (state, data_state) of `step` (default latest) into the given shardings."""
  step = mngr.latest_step() if step is None else step
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore()))
  return out["state"], out["data"]


def restore_params(workdir: str, abstract_params, step: int | None = None):
  """Params alone (no optimizer state) from a run's latest or given checkpoint."""
  mngr = manager(workdir, keep=1, async_save=False)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": abstract_params},
          restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
          partial_restore=True)))
  return out["state"]["params"], step
