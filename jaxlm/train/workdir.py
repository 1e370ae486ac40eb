"""The workdir policy: start a run, resume it, continue it with new settings, or move it aside.

A run's directory holds one run: running the same command again resumes it,
a different config is refused unless the user says --resume (anything but
model.* may change) or --overwrite (the old run is renamed, never deleted).
"""

from __future__ import annotations

import os
import time

import jax
from flax import traverse_util
from jax.experimental import multihost_utils

from jaxlm import config as config_lib
from jaxlm import config_io
from jaxlm.config import Config
from jaxlm.run import files


WORKDIR_MODES = ("auto", "resume", "overwrite")
# Keys that say how a run is watched, not what it trains: they may change on a resume.
WATCHING = ("train.loggers", "train.wandb_project", "train.wandb_mode", "train.layer_stats",
            "train.profile", "train.log_every", "train.hang_timeout", "data.cache_dir",
            "train.final_eval_batches")


def prepare_workdir(config: Config, workdir: str, mode: str = "auto") -> list[str]:
  """Creates workdir and writes config.json, or checks that the run there may go on.

  mode "auto" resumes a run of the same config (the mesh and the WATCHING keys may
  differ: they say where and how a run trains, not what) and refuses any other;
  "resume" also continues one whose config differs outside model.* (e.g. a lower
  optim.lr after a NaN);
  "overwrite" moves a run there to WORKDIR.old-<time> and starts anew. Returns
  the keys in which a resumed run's config.json differs (setup rewrites it).
  """
  if mode not in WORKDIR_MODES:
    raise ValueError(f"workdir mode {mode!r} is invalid: expected one of {WORKDIR_MODES}")
  if "://" in workdir:  # os.makedirs would make a local directory named "gs:" instead
    raise ValueError(f"--workdir={workdir} is a URL; a run's workdir is a directory of the "
                     "local filesystem API: use one every process reaches (NFS, Filestore, or "
                     "a bucket mounted with gcsfuse, e.g. /mnt/bucket/runs/NAME)")
  if mode == "overwrite":
    if jax.process_index() == 0 and files.has_config(workdir):  # renamed, never deleted
      base = f"{os.path.abspath(workdir)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
      target, n = base, 1
      while os.path.exists(target):
        target, n = f"{base}-{n}", n + 1
      os.rename(workdir, target)
      print(f"--overwrite: moved the previous run in {workdir} to {target}", flush=True)
    if jax.process_count() > 1:  # nobody reads the workdir before process 0 has moved it
      multihost_utils.sync_global_devices("jaxlm_workdir_overwrite")
  if files.has_config(workdir):
    try:
      existing = files.read_config(workdir)
    except config_lib.ConfigError as e:
      raise config_lib.ConfigError(f"{e}; use --overwrite to move it aside, or a new "
                                   "--workdir") from None
    old, new = (traverse_util.flatten_dict(config_io.to_dict(c), sep=".")
                for c in (existing, config))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if mode == "resume":
      blocking = [k for k in diff if k.startswith("model.")]
    else:
      blocking = [k for k in diff if not k.startswith("mesh.") and k not in WATCHING]
    if blocking:
      what = (f"a run of {existing.name!r}, not {config.name!r}," if existing.name != config.name
              else f"a run of {existing.name!r}")
      hint = "rerun with the same settings to resume it"
      if mode == "resume":
        hint = "--resume continues only a run of the same model.* settings"
      elif not any(k.startswith("model.") for k in blocking):
        hint += ", --resume to continue it with the new settings"
      raise config_lib.ConfigError(
          f"--workdir {workdir} holds {what} whose config differs in "
          f"{', '.join(blocking[:6])}; {hint}, --overwrite to start over, or use a new "
          "--workdir")
    return diff
  if mode == "resume":
    raise config_lib.ConfigError(f"--resume: --workdir {workdir} holds no run (no "
                                 "config.json); expected an existing run, or drop --resume")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    files.write_config(workdir, config)
  return []
