"""Orbax checkpoints of the train state, the data iterator and the config.

Each checkpoint step holds `state` (step, params, optimizer state, RNG key,
non-finite step count), `data` (the grain iterator state, JSON), `config` (the
resolved config, JSON) and, where the step was evaluated, `metrics` (val_loss,
val_bpb). Orbax writes a step into a temporary directory and renames it when
complete, so a crash mid-save leaves nothing that a restart would load; the
leftovers are removed when the next manager opens. The latest `keep` steps are
kept, and the one with the best val_loss however old it is.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging as std_logging
import math
import os
import shutil
import sys
import time
import traceback
import warnings

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from jaxlm import config as config_lib
from jaxlm import config_io
from jaxlm.run import files

BEST_METRIC = "val_loss"
# What a corrupt or truncated step raises on restore: tensorstore reports bad
# bytes as ValueError, a missing item as KeyError, a missing file as OSError.
_UNREADABLE = (ValueError, KeyError, OSError, TypeError)


class CheckpointError(ValueError):
  """No checkpoint of a run can be restored into the state this config builds."""


class StorageError(RuntimeError):
  """The workdir could not be written (full, read-only, no permission)."""


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT,
                   errno.EIO)
# What tensorstore says where it gives no errno.
_STORAGE_TEXTS = ("No space left on device", "Read-only file system", "Permission denied",
                  "Disk quota exceeded", "Input/output error")


def storage_reason(error: BaseException) -> str | None:
  """Why writing failed, if `error` (or what caused it) is a storage fault; else None."""
  seen = 0
  while error is not None and seen < 20:
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
      return os.strerror(error.errno)
    text = str(error)
    for reason in _STORAGE_TEXTS:
      if reason in text:
        return reason
    error, seen = error.__cause__ or error.__context__, seen + 1
  return None


def _drop_storage_noise(record) -> bool:
  """A log filter: False (dropped) for the records of a storage fault inside a save.

  When a save fails, Orbax's background threads log the error with its
  traceback once per thread, and asyncio logs every write task that ended with
  it ("exception was never retrieved"), each with a page of tensorstore spec;
  StorageError says it all in one line at the next save or wait.
  """
  message = record.getMessage()
  if record.exc_info and record.exc_info[1] is not None:
    message += str(record.exc_info[1])
  from_save = "orbax" in record.pathname or "exception was never retrieved" in message
  return not (from_save and any(text in message for text in _STORAGE_TEXTS))


@contextlib.contextmanager
def _writing(mngr: ocp.CheckpointManager, step: int | None):
  """Turns a storage fault while saving into one StorageError (storage_fault)."""
  try:
    yield
  except Exception as e:
    reason = storage_reason(e)
    if reason is None or isinstance(e, StorageError):
      raise
    raise storage_fault(mngr, reason, None if step is None else
                        f"checkpoint {step} in {mngr.directory}") from e


def storage_fault(mngr: ocp.CheckpointManager, reason: str,
                  what: str | None = None) -> StorageError:
  """The StorageError of a workdir that failed a write: what failed, and what is safe.

  Orbax writes a step under a temporary name and renames it when complete, so
  the earlier checkpoints are untouched. A save still in flight is waited for
  (it may complete, or fail the same way); then every partial step is removed,
  to give the space back. `what` names what failed (default: the partial
  checkpoint, if any).
  """
  directory = str(mngr.directory)
  with contextlib.suppress(Exception):  # it failed too: its files are partial, removed below
    mngr.wait_until_finished()
  # The write coroutines the failed save never started are reported when the process ends.
  warnings.filterwarnings("ignore", message="coroutine .* was never awaited",
                          category=RuntimeWarning)
  partial = glob.glob(os.path.join(directory, "*.orbax-checkpoint-tmp*"))
  failed = sorted({os.path.basename(p).split(".")[0] for p in partial}, key=int)
  for path in partial:
    shutil.rmtree(path, ignore_errors=True)
  last = files.last_checkpoint(os.path.dirname(directory))
  what = what or (f"checkpoint {', '.join(failed)} in {directory}" if failed
                  else f"a checkpoint in {directory}")
  kept = (f"the last complete checkpoint, step {last}, is intact" if last is not None
          else "no complete checkpoint was written yet")
  return StorageError(f"could not write {what}: {reason}; {kept}; free space or make the "
                      "workdir writable, then rerun the same command to resume")


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for the checkpoint being written; StorageError if the workdir failed it."""
  with _writing(mngr, None):
    mngr.wait_until_finished()


def _best_metric(metrics: dict) -> float:
  return metrics.get(BEST_METRIC, math.inf)  # steps saved without an evaluation rank last


def manager(workdir: str, keep: int, async_save: bool = True,
            read_only: bool = False, keep_steps=()) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints: the last `keep` steps and the best, and
  the steps in keep_steps (checkpoint.at_steps: where a WSD study branches)."""
  policies = ocp.checkpoint_managers
  keeping = [policies.LatestN(n=keep),
             policies.BestN(get_metric_fn=_best_metric, reverse=True, n=1,
                            keep_checkpoints_without_metrics=False)]
  if keep_steps:
    keeping.append(policies.CustomSteps(steps=list(keep_steps)))
  options = ocp.CheckpointManagerOptions(
      create=not read_only, read_only=read_only, enable_async_checkpointing=async_save,
      save_interval_steps=0 if read_only else 1,  # else read_only warns that it resets it
      preservation_policy=policies.AnyPreservationPolicy(keeping),
      cleanup_tmp_directories=not read_only,
      # best_fn only makes the manager write each step's metrics and answer best_step().
      best_fn=_best_metric, best_mode="min")
  for name in ("absl", "asyncio"):  # the loggers Orbax and asyncio use (addFilter: once)
    std_logging.getLogger(name).addFilter(_drop_storage_noise)
  verbosity = logging.get_verbosity()
  if read_only:  # Orbax warns "Given directory is read only" on every read-only open
    logging.set_verbosity(logging.ERROR)
  try:
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), files.CHECKPOINTS),
                                 options=options, item_names=("state", "data", "config"))
  finally:
    logging.set_verbosity(verbosity)


def save(mngr: ocp.CheckpointManager, step: int, state, data_state: dict,
         config: config_lib.Config, metrics: dict | None = None, wait: bool = False,
         wall_seconds: float | None = None) -> None:
  """Starts saving step `step` (asynchronously unless `wait`); metrics rank it for keep-best,
  and a resume from it goes on from wall_seconds, the run's wall time so far (all segments)."""
  metrics = {k: float(v) for k, v in (metrics or {}).items()}
  if not all(map(math.isfinite, metrics.values())):
    metrics = {}  # a NaN would sort anywhere; such a step is kept only while latest
  custom = None if wall_seconds is None else {"wall_seconds": float(wall_seconds)}
  finish(mngr)  # the previous (asynchronous) save: a failure there names its own step
  with _writing(mngr, step):
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config_io.to_dict(config))), metrics=metrics, force=True,
        custom_metadata=custom)
    if wait:
      mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores (state, data_state) into the given shapes and shardings.

  `step` None means the latest readable step: an unreadable newer step (a corrupt
  or truncated copy) is reported on stderr and moved to WORKDIR/corrupt_checkpoints,
  so that training from the one before can write that step again.
  """
  steps = [step] if step is not None else sorted(mngr.all_steps(), reverse=True)
  unreadable = []
  _ignore_abandoned_reads()
  for s in steps:
    try:
      # The saved config is read back too where there is one, only so that
      # Orbax does not warn (twice per resume) that an item was found but not
      # restored; a checkpoint without it (written by other code) still restores.
      items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
      if os.path.isdir(os.path.join(str(mngr.directory), str(s), "config")):
        items["config"] = ocp.args.JsonRestore()
      out = mngr.restore(s, args=ocp.args.Composite(**items))
    except _UNREADABLE as e:
      problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}"
      unreadable.append(str(s))
      _warn(f"checkpoint {mngr.directory / str(s)} cannot be restored ({problem}); "
            + ("trying the one before" if s != steps[-1] else "none left to try"))
      continue
    _quarantine(mngr, steps[:steps.index(s)])
    return out["state"], out["data"]
  raise CheckpointError(
      f"no checkpoint in {mngr.directory} can be restored into this config's train state "
      f"(step{'s' * (len(unreadable) > 1)} {', '.join(unreadable)}: see the warnings above); "
      "expected a complete checkpoint of the same model, or use --overwrite to start over")


def _step_metadata(mngr: ocp.CheckpointManager, step: int):
  """Orbax's metadata of saved step `step`, or None if there is no such step."""
  return mngr.metadata(step) if step in mngr.all_steps() else None


def saved_metrics(mngr: ocp.CheckpointManager, step: int) -> dict | None:
  """The evaluation metrics saved with `step`, or None if it had none."""
  meta = _step_metadata(mngr, step)
  return (meta and meta.metrics) or None


def saved_wall_seconds(mngr: ocp.CheckpointManager, step: int) -> float | None:
  """The run's wall time when `step` was saved, or None (a checkpoint from before it was kept)."""
  meta = _step_metadata(mngr, step)
  value = ((meta and meta.custom_metadata) or {}).get("wall_seconds")
  return None if value is None else float(value)


def _ignore_abandoned_reads() -> None:
  """Silences the noise of the reads that a failed restore leaves behind.

  Orbax stops at the first unreadable array; tensorstore then completes the other
  reads into the event loop that asyncio.run has closed, and Python reports each
  as an unraisable "Event loop is closed" RuntimeError: dozens of tracebacks, some
  before the restore raises and some after. Only that exact error is dropped.
  """
  previous = sys.unraisablehook
  if getattr(previous, "jaxlm_filter", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.jaxlm_filter = True
  sys.unraisablehook = hook
  std_logging.getLogger("asyncio").addFilter(_drop_abandoned_reads)


def _drop_abandoned_reads(record) -> bool:
  """A log filter: drops asyncio's "Task exception was never retrieved" for the reads of a
  failed restore that ended after it (Orbax's async_deserialize, each with a traceback)."""
  message = record.getMessage()
  if record.exc_info and record.exc_info[2] is not None:
    message += "".join(traceback.format_tb(record.exc_info[2]))
  return not ("exception was never retrieved" in message and "async_deserialize" in message)


def _warn(text: str) -> None:
  if jax.process_index() == 0:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def _quarantine(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unreadable steps out of the manager's sight, keeping the bytes for a post-mortem."""
  if not steps:
    return
  if jax.process_index() == 0:
    aside = os.path.join(os.path.dirname(str(mngr.directory)), "corrupt_checkpoints")
    os.makedirs(aside, exist_ok=True)
    for s in steps:
      target = os.path.join(aside, f"{s}-{time.strftime('%Y%m%d-%H%M%S')}")
      os.rename(str(mngr.directory / str(s)), target)
      _warn(f"moved unreadable checkpoint step {s} to {target}")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxlm_checkpoint_quarantine")
  mngr.reload()


def restore_params(workdir: str, abstract_params, step: int | None = None):
  """(params, step): params alone (no optimizer state) of a run's latest or given checkpoint."""
  mngr, step = _open_step(workdir, step)
  out = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": abstract_params},
          restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract_params}),
          partial_restore=True)))
  return out["state"]["params"], step


def restore_config(workdir: str, step: int | None = None):
  """(config, step): the resolved config saved with a run's latest or given checkpoint; None
  where that checkpoint was written without one."""
  mngr, step = _open_step(workdir, step)
  if not os.path.isdir(os.path.join(str(mngr.directory), str(step), "config")):
    return None, step
  out = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  try:
    return config_io.from_dict(config_lib.Config, out["config"]), step
  except (ValueError, TypeError) as e:
    raise config_lib.ConfigError(f"the config saved with step {step} in {mngr.directory} does "
                                 f"not load in this version of jaxlm ({e})") from None


def saved_steps(workdir: str) -> list[int]:
  """The steps of a run's complete checkpoints, oldest first ([] if it has none)."""
  directory = os.path.join(os.path.abspath(workdir), files.CHECKPOINTS)
  if not os.path.isdir(directory):
    return []
  return sorted(manager(workdir, keep=1, async_save=False, read_only=True).all_steps())


def _open_step(workdir: str, step: int | None) -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager of the run and `step` (the latest if None), which must exist."""
  steps = saved_steps(workdir)
  if step is None and steps:
    step = steps[-1]
  if step is None or step not in steps:
    where = os.path.join(os.path.abspath(workdir), files.CHECKPOINTS)
    raise FileNotFoundError(
        f"no checkpoint{'' if step is None else f' at step {step}'} in {where}; "
        + (f"expected one of steps {steps}" if steps else
           "expected a run that has saved at least one step"))
  return manager(workdir, keep=1, async_save=False, read_only=True), step
