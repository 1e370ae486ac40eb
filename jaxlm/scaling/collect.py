"""A sweep directory to runs.csv, and runs.csv back to validated arrays for the fit."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import socket
import subprocess

import numpy as np

from jaxlm.run import files
from jaxlm.scaling import flops as flops_lib

COLUMNS = ("name", "status", "role", "params", "non_embedding_params", "tokens", "flops",
           "spent_flops", "flops_convention", "loss", "bpb", "lr", "steps", "wall_seconds",
           "d_model", "parameterization", "mup_base_width", "seed")
# Beside these, one column per downstream metric a run was scored on (`<task>/<metric>`,
# e.g. shakespeare_word/acc) from its harness_summary.json (python -m jaxlm.evaluate
# --tasks) or its summary.json's "harness" (train.harness_tasks).
# role: point (an ordinary run), stable (a WSD study's constant-rate run: spent, not fitted)
# or branch (its cooldowns: tokens and flops count the whole path, spent_flops their own).


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _may_be_running(status: dict, workdir: str) -> bool:
  """False where a `running` status.json's process is known to be gone.

  The launcher records its run's host and pid; on this host the process is
  looked up, and must be the run of this workdir (a pid can be reused). A run
  on another host is looked up in SLURM's queue where the launcher recorded its
  job (an array task ran by launch/sweep_slurm.py) and squeue answers, and is
  otherwise taken at its word. A status without a pid (written by an older
  launcher) counts as interrupted.
  """
  pid, host = status.get("pid"), status.get("host")
  if not pid:
    return False
  if host != socket.gethostname():
    return _slurm_job_queued(status.get("slurm_job"))
  if os.path.isdir("/proc"):
    try:
      with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
        args = f.read().decode(errors="replace").split("\0")
      return f"--workdir={workdir}" in args
    except OSError:
      return False
  try:  # no /proc (macOS): ask the kernel whether the pid exists
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def _slurm_job_queued(job: str | None) -> bool:
  """False only where squeue says SLURM job `job` ("123" or "123_4") is no longer queued."""
  if not job or not shutil.which("squeue"):
    return True
  try:
    out = subprocess.run(["squeue", "--noheader", "--jobs", str(job), "--format=%T"],
                         capture_output=True, text=True, timeout=20, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return True
  if out.returncode == 0:
    return bool(out.stdout.strip())  # a state (RUNNING, PENDING, ...) or nothing: gone
  # A job SLURM has forgotten is an error, not an empty answer.
  return "invalid job id" not in (out.stderr + out.stdout).lower()


def _row(sweep_dir: str, name: str, convention: str, role: str = "point") -> dict:
  workdir = os.path.join(sweep_dir, name)
  row = {"name": name, "role": role}
  summary_path = os.path.join(workdir, files.SUMMARY)
  status_path = os.path.join(workdir, "status.json")
  config_path = os.path.join(workdir, files.CONFIG)
  if os.path.exists(summary_path):
    row["status"] = "ok"
  elif os.path.exists(status_path):
    status = _read_json(status_path)
    row["status"] = status.get("status", "unknown")
    if row["status"] == "running" and not _may_be_running(status, workdir):
      row["status"] = "interrupted"  # its process is gone: the launcher was killed
  else:
    row["status"] = "incomplete" if os.path.exists(config_path) else "pending"
  if os.path.exists(config_path):
    config = files.read_config(workdir)
    tokens = config.train.steps * config.train.batch_size * config.data.seq_len
    acc = flops_lib.training_flops(config.model, config.data.seq_len, tokens, convention)
    own = (config.train.steps - config.init.from_step) / config.train.steps
    row.update(params=acc["params"], non_embedding_params=acc["non_embedding_params"],
               tokens=tokens, flops=acc["flops"], flops_convention=convention,
               spent_flops=acc["flops"] * own,
               lr=config.optim.lr, steps=config.train.steps, d_model=config.model.d_model,
               parameterization=config.model.parameterization, seed=config.seed)
    if config.model.parameterization == "mup":
      row["mup_base_width"] = config.model.mup_base_width
  if row["status"] == "ok":
    summary = _read_json(summary_path)
    row.update(loss=summary["final_val_loss"], bpb=summary["final_val_bpb"],
               wall_seconds=summary["wall_seconds"], tokens=summary["tokens"])
    scored = os.path.join(workdir, files.HARNESS_SUMMARY)
    harness = _read_json(scored) if os.path.exists(scored) else summary.get("harness")
    for task, metrics in (harness or {}).get("tasks", {}).items():
      row.update({f"{task}/{k}": v for k, v in metrics.items() if not k.endswith("_stderr")})
  return row


def collect(sweep_dir: str, convention: str = "6ND") -> list[dict]:
  """One row per run in sweep_dir (finished or not); planned but unstarted ones as pending."""
  if not os.path.isdir(sweep_dir):
    raise FileNotFoundError(f"sweep directory {sweep_dir!r} does not exist: expected the "
                            "--dir given to launch/sweep_local.py")
  if convention not in flops_lib.CONVENTIONS:
    raise ValueError(f"flops convention {convention!r} is invalid: expected one of "
                     f"{', '.join(flops_lib.CONVENTIONS)}")
  plan, roles = os.path.join(sweep_dir, "sweep.json"), {}
  if os.path.exists(plan):
    roles = {r["name"]: r.get("role", "point") for r in _read_json(plan)["runs"]}
  names = set(roles)
  for entry in os.listdir(sweep_dir):
    path = os.path.join(sweep_dir, entry)
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f))
                                   for f in ("config.json", "status.json", "summary.json")):
      names.add(entry)
  return [_row(sweep_dir, n, convention, roles.get(n, "point")) for n in sorted(names)]


def write_csv(rows: list[dict], path: str) -> None:
  """Writes rows with the COLUMNS header and any downstream columns; missing values are
  empty cells."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  columns = COLUMNS + tuple(sorted({k for row in rows for k in row if "/" in k}))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else
                          repr(float(row[k])) if isinstance(row[k], (float, np.floating))
                          else row[k])
                      for k in columns} for row in rows)


def read_runs(path: str) -> dict:
  """Validated arrays params, tokens, loss, flops (float64) from a runs.csv, and the convention.

  Rows whose `status` column is present and not "ok" are skipped (they have no
  loss), and so are a WSD study's stable runs (`role` stable: never cooled down). A
  missing required column or a non-positive or non-numeric value is an error naming
  the row (1-based, header excluded) and the column.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"runs file {path!r} does not exist: expected a CSV such as "
                            "`python -m jaxlm.scaling collect` writes")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    for column in ("params", "tokens", "loss"):
      if column not in header:
        raise ValueError(f"{path}: column {column!r} is missing: expected columns params, "
                         f"tokens, loss (optional flops); found {', '.join(header) or 'none'}")
    rows = list(reader)
  has_flops = "flops" in header
  out = {"params": [], "tokens": [], "loss": [], "flops": [], "names": []}
  scores = {c: [] for c in header if "/" in c}  # downstream columns
  for i, row in enumerate(rows, start=1):
    if row.get("status", "ok") not in ("ok", "") or row.get("role") == "stable":
      continue
    values = {}
    for column in ("params", "tokens", "loss") + (("flops",) if has_flops else ()):
      text = (row.get(column) or "").strip()
      try:
        value = float(text)  # full precision: Besiroglu et al. 2024 trace Chinchilla's
      except ValueError:     # too-narrow intervals partly to rounded inputs
        raise ValueError(f"{path}: row {i} ({row.get('name', '')!r}) has {column}={text!r}: "
                         "expected a positive number") from None
      if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{path}: row {i} ({row.get('name', '')!r}) has {column}={text}: "
                         "expected a positive number")
      values[column] = value
    values.setdefault("flops", 6.0 * values["params"] * values["tokens"])
    for column in ("params", "tokens", "loss", "flops"):
      out[column].append(values[column])
    out["names"].append(row.get("name", str(i)))
    for c in scores:
      scores[c].append(float(row[c]) if (row.get(c) or "").strip() else math.nan)
  arrays = {k: np.asarray(v, dtype=np.float64) for k, v in out.items() if k != "names"}
  arrays["names"] = out["names"]
  # Downstream scores by column (NaN where a run has none); not checked: never fitted.
  arrays["downstream"] = {c: np.asarray(v, dtype=np.float64) for c, v in scores.items()}
  arrays["flops_convention"] = _convention(rows, header, arrays)
  return arrays


def _convention(rows, header, arrays) -> str:
  if "flops" not in header:
    return "6ND"
  if "flops_convention" in header:
    found = {r["flops_convention"] for r in rows if r.get("flops_convention")}
    if len(found) == 1:
      return found.pop()
    if len(found) > 1:
      raise ValueError(f"runs mix flops conventions {sorted(found)}: expected one")
  # No label: flops equal to 6·N·D to rounding are 6ND; any other count is "exact".
  six = 6.0 * arrays["params"] * arrays["tokens"]
  return "6ND" if np.allclose(arrays["flops"], six, rtol=1e-6) else "exact"
