"""Progress lines on stdout, WORKDIR/metrics.jsonl records, and model FLOPs utilization."""

from __future__ import annotations

import json
import os
import time

import jax

from jaxlm.run import files

# Dense bf16 peak FLOP/s per chip, for MFU (vendor datasheets, without sparsity).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def peak_flops(device=None) -> float | None:
  """The dense bf16 peak of a device by its kind, or None when unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Writer:
  """Writes metrics.jsonl and progress lines; silent on every process but the first."""

  def __init__(self, workdir: str, total_steps: int):
    self.enabled = jax.process_index() == 0
    self.total = total_steps
    self.path = os.path.join(workdir, files.METRICS)
    self.start = time.time()

  def log(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def print(self, text: str) -> None:
    if self.enabled:
      print(text, flush=True)

  def train_line(self, step: int, loss: float, lr: float, tokens_per_sec: float,
                 step_seconds: float, mfu: float | None) -> None:
    eta = fmt_duration((self.total - step) * step_seconds)
    width = len(str(self.total))
    extra = f" | mfu {mfu:5.1%}" if mfu is not None else ""
    self.print(f"step {step:>{width}}/{self.total} | loss {loss:7.4f} | lr {lr:.2e} | "
               f"{tokens_per_sec:9,.0f} tok/s{extra} | eta {eta}")

  def eval_line(self, step: int, result: dict) -> None:
    """One line of evaluation metrics (val_loss, val_bpb, val_accuracy, ...)."""
    values = " | ".join(f"{k} {v:.4f}" for k, v in result.items())
    self.print(f"eval {step:>{len(str(self.total))}}/{self.total} | {values}")
