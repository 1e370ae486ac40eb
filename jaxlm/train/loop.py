"""The training loop: build a run from its config (setup), then train, evaluate and save (run).

`setup()` is the boundary where input is checked: tokenizer, corpus, mesh,
warm-start source, memory on accelerators, the workdir and its checkpoints,
all before anything in the workdir is written. `run()` resumes from the
checkpoint setup restored, steps the Trainer's jitted step, logs, evaluates,
saves, and writes summary.json and an end-of-run sample.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxlm import params as params_lib
from jaxlm import sharding
from jaxlm import config as config_lib
from jaxlm.config import Config, ConfigError
from jaxlm.data import pipeline
from jaxlm.inference.generate import generate
from jaxlm.run import checkpoint, files, loggers
from jaxlm.train import optim, plan, warm_start
from jaxlm.train.preemption import Preemption
from jaxlm.train.step import Trainer
from jaxlm.train.watchdog import Watchdog
from jaxlm.train.workdir import prepare_workdir


class NonFiniteError(RuntimeError):
  """Training met a non-finite loss or gradient under train.nonfinite=stop."""


@dataclasses.dataclass
class Run:
  """A prepared run: everything built from the config before the first step."""
  config: Config
  workdir: str
  tokenizer: Any
  trainer: Trainer
  dataset: Any
  checkpoints: Any         # the Orbax CheckpointManager of workdir
  restored: Any = None     # (state, data iterator state) of the checkpoint resumed from
  branched: bool = False   # restored is init.from_workdir's at init.from_step (a new branch)
  harness: Any = None      # (params, beat) -> {task: {metric: value}}: train.harness_tasks


def setup(config: Config, workdir: str, mode: str = "auto") -> Run:
  """Checks inputs (tokenizer, corpus, mesh, workdir, checkpoints) and builds the run;
  raises on bad input before anything in workdir is written (`mode`: prepare_workdir's)."""
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  trainer = Trainer(config, mesh, tok.token_bytes())
  dataset = trainer.task.train_dataset(tok, config.seed, jax.process_index(),
                                       jax.process_count())
  next(iter(trainer.task.eval_batches(tok, 1)))  # the evaluation data is there and readable
  if config.init.from_step:
    warm_start.check_branch(config)
  elif config.init.from_workdir:
    warm_start.check_source(config)
  if plan.device_memory_limit() is not None:  # accelerators: compile ahead, stop if too big
    trainer.compile_steps(unlogged=config.train.log_every > 1)
    plan.check_fits(trainer.step, config)
  harness = _harness(config, tok, mesh) if config_lib.names(config.train.harness_tasks) else None
  changed = prepare_workdir(config, workdir, mode)
  mngr = checkpoint.manager(workdir, config.checkpoint.keep,
                            keep_steps=config.checkpoint.at_steps)
  restored, branched = None, False
  if mngr.latest_step() is not None:
    restored = checkpoint.restore(mngr, trainer.abstract_state())
  elif config.init.from_step:  # a new branch: the parent's whole state at the branch point
    parent = checkpoint.manager(config.init.from_workdir, keep=1, async_save=False,
                                read_only=True)
    restored = checkpoint.restore(parent, trainer.abstract_state(), config.init.from_step)
    branched = True
  if changed and jax.process_index() == 0:
    print(f"continuing the run in {workdir} with new {', '.join(changed[:6])}", flush=True)
    files.write_config(workdir, config)
  return Run(config, workdir, tok, trainer, dataset, mngr, restored, branched, harness)


def _harness(config: Config, tok, mesh):
  """The scorer of train.harness_tasks, its task names and directories checked."""
  t = config.train
  if config.task.kind != "lm":  # lm is decoder-only: the config ties encoders to seq2seq
    raise ConfigError(f"train.harness_tasks={t.harness_tasks!r} scores language models; "
                      f"this run has task.kind={config.task.kind!r} (expected lm)")
  if importlib.util.find_spec("lm_eval") is None:
    raise ConfigError(f"train.harness_tasks={t.harness_tasks!r} needs the LM Evaluation "
                      "Harness; install it with `pip install 'jaxlm[harness]'`")
  from jaxlm.inference import harness  # lm-eval is optional: imported only when asked for
  names = config_lib.names(t.harness_tasks)
  try:
    manager = harness.task_manager(names, config_lib.names(t.harness_include))
  except ValueError as e:
    raise ConfigError(f"train.harness_tasks / train.harness_include: {e}") from None

  def score(params, beat) -> dict:
    lm = harness.JaxlmLM(params, config, tok, mesh, t.batch_size, on_batch=beat)
    return harness.metrics(harness.evaluate(
        lm, names, num_fewshot=None if t.harness_fewshot < 0 else t.harness_fewshot,
        limit=t.harness_limit or None, manager=manager, seed=config.seed))

  return score


def run(r: Run) -> dict:
  """Trains (or resumes) to train.steps; writes metrics, checkpoints and summary.json.

  SIGTERM or SIGINT ends the current step, saves a checkpoint and returns
  {"preempted_at": step} (main exits 0); rerunning the same command resumes.
  """
  c, trainer = r.config, r.trainer
  wall_start = time.time()
  mngr = r.checkpoints
  it = pipeline.train_iterator(r.dataset)
  earlier_seconds = 0.0  # wall time of the segments before a resume
  counts = params_lib.param_count(trainer.specs)  # the task's head included
  resumed, branched = r.restored is not None, r.branched
  if resumed:
    (state, data_state), r.restored = r.restored, None  # the first step donates it
    it.set_state(data_state)
    if jax.process_index() == 0:  # the steps after the checkpoint are logged again
      earlier_seconds = files.truncate_metrics(os.path.join(r.workdir, files.METRICS),
                                               int(state.step))
    # Exact where the checkpoint kept it; else (older checkpoints) the last logged step's.
    saved = checkpoint.saved_wall_seconds(mngr, int(state.step))
    earlier_seconds = earlier_seconds if saved is None else saved
  else:
    state = trainer.init(jax.random.key(c.seed))
    if jax.process_index() == 0:  # a restart before the first checkpoint logs anew
      files.truncate_metrics(os.path.join(r.workdir, files.METRICS), 0)
  start_step = int(state.step)
  report = loggers.Reporter(c, r.workdir, start_step, resumed)
  try:
    if branched:
      report.print(f"branched from {c.init.from_workdir} at step {start_step}")
    elif resumed:
      report.print(f"resumed from step {start_step} in {r.workdir}")
    elif c.init.from_workdir:
      state = state.replace(params=warm_start.load(c, trainer.mesh, c.mesh.rules, state.params))
      report.print(warm_start.describe(c))
    try:
      summary = _train(r, state, it, mngr, report, counts,
                       lambda: earlier_seconds + time.time() - wall_start)
    except OSError as e:  # metrics.jsonl, summary.json, a logger's files on a full disk
      reason = checkpoint.storage_reason(e)
      if reason is None:
        raise
      raise checkpoint.storage_fault(mngr, reason, e.filename or f"the run in {r.workdir}") \
          from e
  finally:
    report.close()
  return summary


def _train(r: Run, state, it, mngr, report: loggers.Reporter, counts: dict, wall_seconds):
  """The loop of run(), from `state` to train.steps; `wall_seconds()` is the run's wall
  time so far, earlier segments of a resumed run included."""
  c, trainer, tok = r.config, r.trainer, r.tokenizer
  began = wall_seconds()  # this segment's start (a resumed run's clock goes on)
  tokens_per_step = c.train.batch_size * c.data.seq_len
  flops_per_token = trainer.task.flops_per_token()
  peak = loggers.peak_flops()
  report.print(f"{c.name}: {counts['total']:,} params ({counts['non_embedding']:,} "
               f"non-embedding) | {tokens_per_step:,} tokens/step | mesh "
               f"{dict(trainer.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform}"
               f" | workdir {r.workdir}")
  schedule = optim.schedule(c.optim, c.train.steps)
  start_step = int(state.step)
  last_time, last_step = None, start_step
  val, loss_mean, scored = {}, None, None
  checked = {"step": start_step, "nonfinite": int(state.nonfinite)}
  waited = 0.0  # seconds spent waiting for the next batch since the last log step
  profile = Profile(c.train.profile_steps, os.path.join(r.workdir, "tensorboard"), report)

  def evaluate_batches(n_batches: int) -> dict:
    """The current params over the first n_batches validation batches (0: all)."""
    batches = trainer.task.eval_batches(tok, n_batches, jax.process_index(),
                                        jax.process_count())
    return trainer.run_eval(state.params, watchdog.beating(batches, "an evaluation"))

  def evaluate(step: int, final: bool) -> dict:
    result = evaluate_batches(c.train.final_eval_batches if final else c.train.eval_batches)
    report.eval(step, result)
    return result

  def ranked_like_periodic(full: dict) -> dict:
    """The final checkpoint's metrics: ranked on the periodic evaluations' batches.

    The final evaluation covers the whole validation split, the periodic ones
    its first train.eval_batches batches; keep-best must compare like with
    like, so the final step is ranked on those batches too (one more short
    evaluation) and carries the whole split's result as full_<metric>.
    """
    return {**evaluate_batches(c.train.eval_batches),
            **{f"{_FULL}{k}": v for k, v in full.items()}}

  def check_finite(step: int, m: dict) -> None:
    """Stops (train.nonfinite=stop) or reports skipped updates since the last check."""
    count, first = int(m["nonfinite_steps"]), checked["step"] + 1
    if count > checked["nonfinite"]:
      where = f"step {step}" if first == step else f"steps {first}-{step}"
      if c.train.nonfinite == "stop":
        checkpoint.finish(mngr)
        good = mngr.latest_step()  # only finite states are ever saved
        last = ("no checkpoint was saved yet" if good is None else
                f"the last good checkpoint is step {good} in {mngr.directory}")
        raise NonFiniteError(
            f"non-finite loss or gradients at {where} (loss {float(m['loss'])}); {last}; "
            "lower optim.lr or raise optim.warmup_steps and rerun with --resume to go on "
            "from it, or set train.nonfinite=skip to drop such updates")
      report.print(f"warning: skipped {count - checked['nonfinite']} update(s) with "
                   f"non-finite loss or gradients at {where} ({count} in this run)")
    checked.update(step=step, nonfinite=count)

  watchdog = Watchdog(c.train.hang_timeout, os.path.join(r.workdir, files.LOGS),
                      jax.process_index())
  with Preemption() as preemption, watchdog:
    for step in range(start_step + 1, c.train.steps + 1):
      # After the first (compiled) step, every step's time joins the watchdog's median.
      watchdog.beat(f"step {step}", step_done=step > start_step + 1)
      profile.before(step)
      fetch_start = time.perf_counter()
      host_batch = next(it)
      waited += time.perf_counter() - fetch_start
      indices = host_batch.pop("index", None)  # where each row came from, for spike records
      final = step == c.train.steps
      logged = step % c.train.log_every == 0 or final
      batch = trainer.device_batch(host_batch)
      state, step_metrics = (trainer.step if logged else trainer.unlogged_step)(state, batch)
      profile.after(step, step_metrics)
      report.advance(step)
      if last_time is None:  # the first step includes compilation, and so does the other
        jax.block_until_ready(step_metrics)  # step's (not in a throughput record later)
        watchdog.beat("compiling the train step")
        trainer.compile_steps(state, batch, unlogged=any(
            s % c.train.log_every for s in range(step + 1, c.train.steps)))
        watchdog.beat(f"step {step + 1}")  # its time stays out of the watchdog's median
        report.print(f"compiled and ran step {step} in {wall_seconds() - began:.1f}s")
        last_time, last_step, waited = time.perf_counter(), step, 0.0
      if logged:
        m = jax.device_get(step_metrics)
        check_finite(step, m)
        now = time.perf_counter()
        steps = max(step - last_step, 1)
        seconds = (now - last_time) / steps
        tps = tokens_per_step / seconds if step > last_step else 0.0
        loss = float(m["loss"])
        record = {"loss": loss, "lr": float(schedule(step - 1)), "tokens_per_sec": tps,
                  "wall_seconds": wall_seconds(), "grad_norm": float(m["grad_norm"]),
                  "nonfinite_steps": int(m["nonfinite_steps"]),
                  "tokens": step * tokens_per_step, "input_wait_seconds": waited / steps,
                  "step_seconds": seconds}
        if peak and tps:
          record["mfu"] = tps * flops_per_token / (peak * jax.device_count())
        report.train(step, record, m.get("stats"))
        loss_mean = _log_spike(report, step, loss, loss_mean, c.train.spike_factor, indices)
        last_time, last_step, waited = now, step, 0.0
      # Every process calls this every step: in multi-process runs it is how they agree.
      preempted = preemption.reached(step) and not final
      evaluated = None
      if ((c.train.eval_every and step % c.train.eval_every == 0) or final) and not preempted:
        eval_start = time.perf_counter()
        val = evaluated = evaluate(step, final)
        last_time += time.perf_counter() - eval_start  # out of the training throughput
      if ((c.checkpoint.every and step % c.checkpoint.every == 0) or final or preempted
          or step in c.checkpoint.at_steps):
        check_finite(step, jax.device_get(step_metrics))  # never save a non-finite state
        watchdog.beat(f"saving checkpoint {step}")
        if final and evaluated is not None and c.train.eval_every:
          evaluated = ranked_like_periodic(evaluated)
        checkpoint.save(mngr, step, state, it.get_state(), c, metrics=evaluated,
                        wait=preempted, wall_seconds=wall_seconds())
        report.print(f"saving checkpoint {step} in {mngr.directory}")
      if r.harness and ((c.train.harness_every and step % c.train.harness_every == 0)
                        or final) and not preempted:
        harness_start = time.perf_counter()
        scored = _score_harness(r, state.params, step, report, watchdog) or scored
        last_time += time.perf_counter() - harness_start  # out of the throughput too
      if preempted:
        profile.stop()
        by = f" by {preemption.signal}" if preemption.signal else ""
        report.print(f"preempted{by} at step {step}; checkpoint saved in {mngr.directory}; "
                     "rerun the same command to resume")
        mngr.close()
        return {"preempted_at": step}
    profile.stop()
    if not val:  # resumed a finished run: its final evaluation was saved with the checkpoint
      saved = checkpoint.saved_metrics(mngr, c.train.steps) or {}
      full = {k[len(_FULL):]: v for k, v in saved.items() if k.startswith(_FULL)}
      val = full or saved or evaluate(c.train.steps, True)
    # A resumed finished run scores its final params here (the loop did not run); a score
    # that failed at the last step is not tried again.
    if r.harness and start_step >= c.train.steps:
      scored = _score_harness(r, state.params, c.train.steps, report, watchdog)
    watchdog.beat("the last checkpoint's write")
    checkpoint.finish(mngr)
  mngr.close()
  tokens = c.train.steps * tokens_per_step
  summary = {"steps": c.train.steps, **{f"final_{k}": v for k, v in val.items()},
             "params": counts["total"],
             "non_embedding_params": counts["non_embedding"], "tokens": tokens,
             "flops": flops_per_token * tokens, "flops_6nd": 6.0 * counts["total"] * tokens,
             # Over all segments of a resumed run, each up to the checkpoint the
             # next one resumed from.
             "wall_seconds": wall_seconds(),
             # Restarts of the run after faults, recorded by the launchers.
             "restarts": len(files.read_restarts(r.workdir)),
             # How many times the run saw its training data (a corpus smaller than the
             # run repeats), by source.
             "epochs": trainer.task.epochs(tok, c.train.steps * c.train.batch_size)}
  if scored is not None:
    summary["harness"] = scored
  if c.init.from_step:  # a branch: tokens and FLOPs above count the whole path; its parent's
    parent = c.init.from_step * tokens_per_step
    summary["parent"] = {"workdir": c.init.from_workdir, "step": c.init.from_step,
                         "tokens": parent, "flops": flops_per_token * parent}
  if jax.process_index() == 0:
    files.write_summary(r.workdir, summary)
  if c.train.sample_tokens and trainer.task.samples_text:  # at train.sample_temperature
    new = generate(state.params, c.model, [tok.encode(c.train.sample_prompt)],
                   c.train.sample_tokens, temperature=c.train.sample_temperature, seed=c.seed,
                   eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
    text = c.train.sample_prompt + tok.decode(new)
    report.print("sample:\n" + text)
    report.text(c.train.steps, "sample", text)
  return summary


class Profile:
  """A jax.profiler trace of train.profile's steps START..STOP into WORKDIR/tensorboard."""

  def __init__(self, steps: tuple[int, int] | None, logdir: str, report: loggers.Reporter):
    self.steps, self.logdir, self.report, self.tracing = steps, logdir, report, False

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.logdir)
      self.tracing = True

  def after(self, step: int, outputs) -> None:
    if self.tracing and step >= self.steps[1]:
      jax.block_until_ready(outputs)  # the trace holds the last step's work
      self.stop()

  def stop(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
      self.report.print(f"profile of steps {self.steps[0]}-{self.steps[1]} written to "
                        f"{self.logdir} (tensorboard --logdir {self.logdir}, Profile tab)")


def _score_harness(r: Run, params, step: int, report: loggers.Reporter, watchdog) -> dict | None:
  """Scores train.harness_tasks and reports them; a failure is a warning, not the run's end
  (the checkpoint of this step is already saved)."""
  try:
    tasks = r.harness(params, lambda: watchdog.beat(f"harness tasks at step {step}"))
  except Exception as e:  # a task's data or settings: the training itself is fine
    report.print(f"warning: harness tasks at step {step} failed: {type(e).__name__}: {e}")
    return None
  report.eval(step, {f"harness/{task}/{k}": v for task, row in tasks.items()
                     for k, v in row.items()})
  return {"step": step, "tasks": tasks}


def _log_spike(report, step: int, loss: float, mean: float | None, factor: float,
               indices=None):
  """Reports a loss over `factor` x the running mean of logged losses, with the step's
  batch rows (`indices`, every process's); returns the new running mean."""
  if not math.isfinite(loss):
    return mean
  if factor and mean is not None and loss > factor * mean:
    report.print(f"warning: loss spike at step {step}: {loss:.4f} is over {factor:g}x the "
                 f"running mean {mean:.4f}")
    record = {"step": step, "spike_loss": loss, "running_mean_loss": mean}
    if indices is not None:  # every process has the same loss, so all of them get here
      rows = multihost_utils.process_allgather(indices) if jax.process_count() > 1 else indices
      record["batch_indices"] = np.asarray(rows).reshape(-1).tolist()
    report.log(record)
  return loss if mean is None else 0.9 * mean + 0.1 * loss


_FULL = "full_"  # the final checkpoint's whole-split metrics, next to its ranking ones
