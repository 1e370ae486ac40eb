"""The plain files of a run's workdir: config.json, summary.json, metrics.jsonl.

Every file is written whole into a temporary name and renamed into place, so
a reader (a resumed run, collect, a crash) never sees half of one.
"""

from __future__ import annotations

import json
import os

from jaxlm import config as config_lib
from jaxlm import config_io

CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
# python -m jaxlm.evaluate --tasks: lm-eval's results, and the metrics per task with the step.
HARNESS_RESULTS, HARNESS_SUMMARY = "harness_results.json", "harness_summary.json"
RESTARTS = "restarts.jsonl"  # one record per restart after a fault, written by the launchers
LOGS = "logs"  # each process's output under a launcher, the watchdog's stack dumps
CHECKPOINTS = "checkpoints"


def write_atomic(path: str, text: str) -> None:
  """Writes text to path through a temporary file renamed into place."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError:  # a full or read-only disk: leave no half-written file behind
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def has_config(workdir: str) -> bool:
  return os.path.isfile(os.path.join(workdir, CONFIG))


def read_config(workdir: str, what: str = "--workdir") -> config_lib.Config:
  """The config.json of the run in workdir: FileNotFoundError if there is none, ConfigError if
  it does not load in this version of jaxlm (`what`: the flag or key that gave workdir)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}={workdir} has no {CONFIG}; expected the directory of a "
                            "run made by `python -m jaxlm.main`")
  with open(path) as f:
    try:
      return config_io.loads(f.read())
    except (ValueError, TypeError) as e:
      raise config_lib.ConfigError(f"{path} is not a jaxlm config ({e}); expected one "
                                   "written by `python -m jaxlm.main`") from None


def write_config(workdir: str, config: config_lib.Config) -> None:
  write_atomic(os.path.join(workdir, CONFIG), config_io.dumps(config))


def write_summary(workdir: str, summary: dict) -> None:
  write_atomic(os.path.join(workdir, SUMMARY), json.dumps(summary, indent=2))


def truncate_metrics(path: str, step: int) -> float:
  """Drops metrics.jsonl records past `step`, and any line a crash cut short; returns the
  wall time the kept records reached (0 if none), which a resumed run adds to its own."""
  if not os.path.exists(path):
    return 0.0
  kept, wall = [], 0.0
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get("step", 0) <= step:
        kept.append(json.dumps(record) + "\n")
        wall = max(wall, float(record.get("wall_seconds", 0.0)))
  write_atomic(path, "".join(kept))
  return wall


def read_restarts(workdir: str) -> list[dict]:
  """The records of WORKDIR/restarts.jsonl, oldest first ([] if none)."""
  path = os.path.join(workdir, RESTARTS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def record_restart(workdir: str, record: dict) -> int:
  """Appends a restart's record, numbered ("restart": 1, 2, ...), to WORKDIR/restarts.jsonl;
  returns its number."""
  records = read_restarts(workdir)
  records.append({"restart": len(records) + 1,
                  **{k: v for k, v in record.items() if k != "restart"}})
  write_atomic(os.path.join(workdir, RESTARTS),
               "".join(json.dumps(r) + "\n" for r in records))
  return len(records)


def add_restarts(workdir: str, records: list[dict]) -> None:
  """Records each of `records` not yet in WORKDIR/restarts.jsonl (compared without their
  numbers): a launcher that hands a run every restart so far (launch/tpu_vm.py)."""
  known = [{k: v for k, v in r.items() if k != "restart"} for r in read_restarts(workdir)]
  for record in records:
    if record not in known:
      record_restart(workdir, record)


def last_checkpoint(workdir: str) -> int | None:
  """The highest complete checkpoint step in WORKDIR/checkpoints, without loading JAX.

  Orbax writes a step under a temporary name and renames it to the bare step
  number once complete, so numeric names are the complete ones.
  """
  root = os.path.join(workdir, CHECKPOINTS)
  steps = [int(n) for n in (os.listdir(root) if os.path.isdir(root) else ()) if n.isdigit()]
  return max(steps, default=None)
