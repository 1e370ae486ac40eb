"""Where a run reports: stdout, metrics.jsonl, TensorBoard, Weights & Biases (train.loggers).

`Reporter` fans each record out to the loggers a config names; only process 0
writes. On a terminal, stdout is a progress bar (tqdm: step, loss, tokens/s,
ETA) with evaluations, checkpoint saves and warnings printed above it;
elsewhere (CI, SLURM, a pipe) it is plain lines without carriage returns.
metrics.jsonl gets one JSON object per record. TensorBoard event files go to
WORKDIR/tensorboard/ (tensorboardX); a resumed run purges the steps after its
checkpoint there, so none appears twice. W&B runs through its own client; the
run id is kept in WORKDIR/wandb_id, so a resumed run continues the same W&B run
(W&B keeps the first value of a step logged twice).
"""

from __future__ import annotations

import html
import json
import os
import secrets
import sys

import jax
import numpy as np
import tqdm

from jaxlm import config as config_lib
from jaxlm import config_io
from jaxlm import hardware
from jaxlm.run import files


def peak_flops(device=None) -> float | None:
  """The dense bf16 peak of a device by its kind (jaxlm.hardware.CHIPS), for MFU; None when
  unknown (e.g. CPU)."""
  chip = hardware.chip_of(device or jax.devices()[0])
  return chip.peak_flops if chip else None


def flat_scalars(stats: dict) -> dict[str, float]:
  """One scalar per tag from a step's statistics: a model statistic (logits_rms, or
  max_attention_logit per layer) as <name>[/<layer>], a parameter's as
  <stat>/<param>[/<layer>], so that charts group by statistic."""
  out = {}
  for key, value in stats.items():
    named = value.items() if isinstance(value, dict) else [(None, value)]
    for stat, v in named:
      name = key if stat is None else f"{stat}/{key}"
      v = np.asarray(v, np.float64)
      out.update({name: float(v)} if v.ndim == 0 else
                 {f"{name}/{i}": float(x) for i, x in enumerate(v.reshape(-1))})
  return out


class _Stdout:
  """A progress bar on a terminal; plain progress lines anywhere else."""

  def __init__(self, total: int, start: int):
    self.stream, self.total, self.bar = sys.stdout, total, None
    if self.stream.isatty():
      self.bar = tqdm.tqdm(total=total, initial=start, file=self.stream, unit="step",
                           dynamic_ncols=True, smoothing=0.1)

  def line(self, text: str) -> None:
    if self.bar is not None:
      self.bar.write(text, file=self.stream)
    else:
      print(text, file=self.stream, flush=True)

  def advance(self, step: int) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def train(self, step: int, r: dict) -> None:
    if self.bar is not None:
      self.advance(step)
      self.bar.set_postfix_str(f"loss {r['loss']:.4f} | {r['tokens_per_sec']:,.0f} tok/s")
      return
    h, rem = divmod(int(max((self.total - step) * r["step_seconds"], 0)), 3600)
    eta = f"{h}h{rem // 60:02d}m{rem % 60:02d}s" if h else f"{rem // 60}m{rem % 60:02d}s"
    mfu = f" | mfu {r['mfu']:5.1%}" if r.get("mfu") is not None else ""
    self.line(f"step {step:>{len(str(self.total))}}/{self.total} | loss {r['loss']:7.4f} | "
              f"lr {r['lr']:.2e} | {r['tokens_per_sec']:9,.0f} tok/s{mfu} | eta {eta}")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _TensorBoard:
  """Event files in WORKDIR/tensorboard (tensorboardX)."""

  def __init__(self, workdir: str, start: int, resumed: bool):
    import tensorboardX  # optional (the tensorboard extra): only runs that log to it
    self.writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                             purge_step=start + 1 if resumed else None,
                                             flush_secs=30)

  def scalars(self, step: int, values: dict) -> None:
    for tag, value in values.items():
      self.writer.add_scalar(tag, value, step)

  def text(self, step: int, name: str, text: str) -> None:
    self.writer.add_text(name, f"<pre>{html.escape(text)}</pre>", step)

  def figure(self, step: int, name: str, figure) -> None:
    self.writer.add_figure(name, figure, step, close=False)

  def close(self) -> None:
    self.writer.close()


class _Wandb:
  """A Weights & Biases run, resumed by the id kept in WORKDIR/wandb_id."""

  def __init__(self, workdir: str, config: config_lib.Config):
    import wandb  # optional (the wandb extra): only runs that log to it
    self.wandb = wandb
    path = os.path.join(workdir, "wandb_id")
    run_id = open(path).read().strip() if os.path.exists(path) else secrets.token_hex(4)
    files.write_atomic(path, run_id)
    self.run = wandb.init(project=config.train.wandb_project, mode=config.train.wandb_mode,
                          dir=workdir, id=run_id, resume="allow", name=config.name,
                          config=config_io.to_dict(config),
                          settings=wandb.Settings(console="off", silent=True))

  def scalars(self, step: int, values: dict) -> None:
    self.run.log(values, step=step)

  def text(self, step: int, name: str, text: str) -> None:
    self.run.log({name: self.wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

  def figure(self, step: int, name: str, figure) -> None:
    self.run.log({name: self.wandb.Image(figure)}, step=step)

  def close(self) -> None:
    self.run.finish()


class Reporter:
  """The loggers of train.loggers, fed by the train loop (and by evaluate); process 0 only."""

  def __init__(self, config: config_lib.Config, workdir: str, start_step: int = 0,
               resumed: bool = False):
    names = config.train.logger_names
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, files.METRICS)
    self.stdout = (_Stdout(config.train.steps, start_step)
                   if "stdout" in names and self.enabled else None)
    self.jsonl = "jsonl" in names and self.enabled
    self.sinks = [] if not self.enabled else (
        ([_TensorBoard(workdir, start_step, resumed)] if "tensorboard" in names else [])
        + ([_Wandb(workdir, config)] if "wandb" in names else []))
    if self.sinks and not resumed:
      self.text(start_step, "config", config_io.dumps(config))

  def print(self, text: str) -> None:
    """A line for the person watching (above the progress bar on a terminal)."""
    if self.stdout is not None:
      self.stdout.line(text)

  def log(self, record: dict) -> None:
    """One metrics.jsonl record."""
    if self.jsonl:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def advance(self, step: int) -> None:
    """Every step: moves the progress bar (nothing else; no device sync)."""
    if self.stdout is not None:
      self.stdout.advance(step)

  def train(self, step: int, record: dict, stats: dict | None = None) -> None:
    """A log step: record (loss, lr, tokens_per_sec, ...) and the step's statistics."""
    if not self.enabled:
      return
    json_stats = jax.tree.map(lambda x: np.asarray(x).tolist(), stats or {})
    self.log({"step": step, **{k: v for k, v in record.items() if k != "step_seconds"},
              **({"stats": json_stats} if stats else {})})
    scalars = {f"train/{k}": v for k, v in record.items() if v is not None}
    self._scalars(step, {**scalars, **flat_scalars(stats or {})})
    if self.stdout is not None:
      self.stdout.train(step, record)

  def eval(self, step: int, result: dict) -> None:
    if not self.enabled:
      return
    self.log({"step": step, **result})
    self._scalars(step, {f"eval/{k}": v for k, v in result.items()})
    values = " | ".join(f"{k} {v:.4f}" for k, v in result.items())
    total = self.stdout.total if self.stdout is not None else 0
    self.print(f"eval {step:>{len(str(total))}}/{total} | {values}")

  def text(self, step: int, name: str, text: str) -> None:
    for sink in self.sinks:
      sink.text(step, name, text)

  def close(self) -> None:
    for sink in self.sinks:
      sink.close()
    if self.stdout is not None:
      self.stdout.close()

  def _scalars(self, step: int, values: dict) -> None:
    for sink in self.sinks:
      sink.scalars(step, values)


def figure_to_run(config: config_lib.Config, workdir: str, step: int, name: str,
                  figure) -> None:
  """Adds a figure (e.g. evaluate's reliability diagram) to the run's TensorBoard and W&B
  runs, if train.loggers names them; appended, nothing purged."""
  names = config.train.logger_names
  sinks = ([_TensorBoard(workdir, step, resumed=False)] if "tensorboard" in names else []) + (
      [_Wandb(workdir, config)] if "wandb" in names else [])
  for sink in sinks:
    sink.figure(step, name, figure)
    sink.close()


def progress(iterable=None, total: int | None = None, desc: str = ""):
  """`iterable` with a progress bar on a terminal, unchanged (and silent) elsewhere; with
  no iterable, a bar to `update()` and `close()` (doing nothing off a terminal)."""
  if sys.stdout.isatty():
    return tqdm.tqdm(iterable, total=total, desc=desc, file=sys.stdout, dynamic_ncols=True)
  return iterable if iterable is not None else tqdm.tqdm(disable=True)
