"""Train state, the pure train step, the jitted, sharded step builder, and the loop.

`train_step(state, batch) -> (state, metrics)` is pure; what it minimizes and
how a batch is evaluated come from the config's task (jaxlm.tasks); `Trainer`
applies jit, shardings and donation to them in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm import checkpoint, generate, metrics, optim, plan, sharding, tasks, warm_start
from jaxlm import config as config_lib
from jaxlm.config import Config
from jaxlm.data import pipeline
from jaxlm.models import layers


@struct.dataclass
class TrainState:
  """Everything that changes during training (the step counter included)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array          # split every step, so randomness after a resume matches
  nonfinite: jax.Array    # steps so far whose loss or gradients were not finite


def train_step(state: TrainState, batch: dict, *, loss_fn, tx, nonfinite: str = "stop") -> tuple:
  """One optimizer step on a batch; returns the new state and scalar metrics.

  A step whose loss or gradients are not finite is counted in `nonfinite`; with
  nonfinite="skip" (train.nonfinite) its update is dropped (params and optimizer moments stay
  as they were), decided on device so that no step waits for the host.
  """
  rng, _ = jax.random.split(state.rng)  # the other half is this step's (dropout has none yet)
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if nonfinite == "skip":
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
  nonfinite = state.nonfinite + jnp.logical_not(finite).astype(jnp.int32)
  metrics = {"loss": loss, "grad_norm": grad_norm, "nonfinite_steps": nonfinite}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                    nonfinite=nonfinite), metrics


@dataclasses.dataclass
class Trainer:
  """The jitted, sharded init/train/eval functions of one config's task on one mesh."""
  config: Config
  mesh: jax.sharding.Mesh
  token_bytes: np.ndarray

  def __post_init__(self):
    c = self.config
    rules = c.mesh.rules
    self.task = tasks.get(c)
    self.specs = self.task.param_specs()
    self.tx = optim.make(c.optim, c.train.steps, layers.decay_mask(self.specs),
                         layers.lr_scales(self.specs))
    self.param_shardings = sharding.tree_shardings(self.specs, self.mesh, rules)
    replicated = NamedSharding(self.mesh, P())
    dtype = jnp.dtype(c.model.param_dtype)
    abstract_params = jax.eval_shape(lambda: layers.init_params(self.specs, jax.random.key(0),
                                                                dtype))
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=opt_shardings, rng=replicated,
                                      nonfinite=replicated)
    # Each batch array is split over its leading (batch) axis only.
    self.batch_shardings = {k: sharding.batch_sharding(self.mesh, rules, len(shape))
                            for k, (shape, _) in self.task.batch_shapes(1).items()}

    def init_state(rng):
      params = layers.init_params(self.specs, rng, dtype)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                        nonfinite=jnp.zeros((), jnp.int32))

    def step(state, batch):
      with sharding.activation_rules(self.mesh, rules):
        return train_step(state, batch, loss_fn=self.task.loss, tx=self.tx,
                          nonfinite=c.train.nonfinite)

    def evaluate(params, batch):
      with sharding.activation_rules(self.mesh, rules):
        return self.task.eval_sums(params, batch, jnp.asarray(self.token_bytes))

    batch_shardings = self.batch_shardings
    self.init = jax.jit(init_state, out_shardings=self.state_shardings)
    self.step = jax.jit(step, in_shardings=(self.state_shardings, batch_shardings),
                        out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    self.evaluate = jax.jit(evaluate, in_shardings=(self.param_shardings, batch_shardings),
                            out_shardings=replicated)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, without allocating it."""
    shapes = jax.eval_shape(self.init, jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def abstract_batch(self) -> dict:
    shapes = self.task.batch_shapes(self.config.train.batch_size)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_shardings[k])
            for k, (shape, dtype) in shapes.items()}

  def device_batch(self, local_batch: dict) -> dict:
    """Assembles the global batch from this process's rows."""
    return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], v)
            for k, v in local_batch.items()}

  def run_eval(self, params, batches) -> dict:
    """Evaluates params over an iterable of host batches.

    At most two batches are in flight: queuing a whole split's evaluations at
    once holds every batch on device and, on the multi-device CPU backend,
    was seen to abort the process intermittently under load.
    """
    outs, pending = [], []
    for b in batches:
      pending.append(self.evaluate(params, self.device_batch(b)))
      if len(pending) > 2:
        outs.append(jax.device_get(pending.pop(0)))
    outs += jax.device_get(pending)
    sums = jax.tree.map(lambda *xs: np.sum(np.asarray(xs, np.float64), 0), *outs)
    return {k: float(v) for k, v in self.task.summarize(sums).items()}


# ---------------------------------------------------------------------------
# The training loop.


WORKDIR_MODES = ("auto", "resume", "overwrite")


class NonFiniteError(RuntimeError):
  """Training met a non-finite loss or gradient under train.nonfinite=stop."""


def prepare_workdir(config: Config, workdir: str, mode: str = "auto") -> list[str]:
  """Creates workdir and writes config.json, or checks that the run there may go on.

  mode "auto" resumes a run of the same config (the mesh may differ: it says
  where a run trains, not what) and refuses any other; "resume" also continues
  one whose config differs outside model.* (e.g. a lower optim.lr after a NaN);
  "overwrite" moves a run there to WORKDIR.old-<time> and starts anew. Returns
  the keys in which a resumed run's config.json differs (setup rewrites it).
  """
  if mode not in WORKDIR_MODES:
    raise ValueError(f"workdir mode {mode!r} is invalid: expected one of {WORKDIR_MODES}")
  path = os.path.join(workdir, "config.json")
  if mode == "overwrite":
    if jax.process_index() == 0 and os.path.exists(path):
      _move_aside(workdir)
    if jax.process_count() > 1:  # nobody reads the workdir before process 0 has moved it
      multihost_utils.sync_global_devices("jaxlm_workdir_overwrite")
  if os.path.exists(path):
    with open(path) as f:
      try:
        existing = config_lib.loads(f.read())
      except (ValueError, TypeError) as e:
        raise config_lib.ConfigError(f"{path} is not a jaxlm config ({e}); use --overwrite "
                                     "to move it aside, or a new --workdir") from None
    old, new = _flatten(config_lib.to_dict(existing)), _flatten(config_lib.to_dict(config))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if mode == "resume":
      blocking = [k for k in diff if k.startswith("model.")]
    else:
      blocking = [k for k in diff if not k.startswith("mesh.")]
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
    _write_atomic(path, config_lib.dumps(config))
  return []


def _move_aside(workdir: str) -> None:
  """Renames a previous run rather than deleting it: --overwrite should not lose work."""
  base = f"{os.path.abspath(workdir)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  target, n = base, 1
  while os.path.exists(target):
    target, n = f"{base}-{n}", n + 1
  os.rename(workdir, target)
  print(f"--overwrite: moved the previous run in {workdir} to {target}", flush=True)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


@dataclasses.dataclass
class Run:
  """A prepared run: everything built from the config before the first step."""
  config: Config
  workdir: str
  tokenizer: Any
  trainer: Trainer
  dataset: Any
  checkpoints: Any = None  # the Orbax CheckpointManager of workdir
  restored: Any = None     # (state, data iterator state) of the checkpoint resumed from


def setup(config: Config, workdir: str, mode: str = "auto") -> Run:
  """Checks inputs (tokenizer, corpus, mesh, workdir, checkpoints) and builds the run.

  Raises on bad input, before anything in workdir is written; `mode` is as in
  prepare_workdir.
  """
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  trainer = Trainer(config, mesh, tok.token_bytes())
  dataset = trainer.task.train_dataset(tok, config.seed, jax.process_index(),
                                       jax.process_count())
  next(iter(trainer.task.eval_batches(tok, 1)))  # the evaluation data is there and readable
  if config.init.from_workdir:
    warm_start.check_source(config)
  if plan.device_memory_limit() is not None:  # accelerators: compile ahead, stop if too big
    compiled = plan.compile_step(trainer)
    plan.check_fits(compiled, config)
    trainer.step = compiled
  changed = prepare_workdir(config, workdir, mode)
  mngr = checkpoint.manager(workdir, config.checkpoint.keep)
  restored = None
  if mngr.latest_step() is not None:
    restored = checkpoint.restore(mngr, trainer.abstract_state())
  if changed and jax.process_index() == 0:
    print(f"continuing the run in {workdir} with new {', '.join(changed[:6])}", flush=True)
    _write_atomic(os.path.join(workdir, "config.json"), config_lib.dumps(config))
  return Run(config, workdir, tok, trainer, dataset, mngr, restored)


def run(r: Run) -> dict:
  """Trains (or resumes) to train.steps; writes metrics, checkpoints and summary.json.

  SIGTERM or SIGINT ends the current step, saves a checkpoint and returns
  {"preempted_at": step} (main exits 0); rerunning the same command resumes.
  """
  c, trainer, tok = r.config, r.trainer, r.tokenizer
  wall_start = time.time()
  writer = metrics.Writer(r.workdir, c.train.steps)
  mngr = r.checkpoints or checkpoint.manager(r.workdir, c.checkpoint.keep)
  it = pipeline.train_iterator(r.dataset)
  earlier_seconds = 0.0  # wall time of the segments before a resume
  counts = layers.param_count(trainer.specs)  # the task's head included
  if r.restored is not None:
    (state, data_state), r.restored = r.restored, None  # the first step donates it
    it.set_state(data_state)
    if writer.enabled:  # the steps after the checkpoint are logged again
      earlier_seconds = _truncate_metrics(writer.path, int(state.step))
    # Exact where the checkpoint kept it; else (older checkpoints) the last logged step's.
    saved = checkpoint.saved_wall_seconds(mngr, int(state.step))
    earlier_seconds = earlier_seconds if saved is None else saved
    writer.print(f"resumed from step {int(state.step)} in {r.workdir}")
  else:
    state = trainer.init(jax.random.key(c.seed))
    if c.init.from_workdir:
      state = state.replace(params=warm_start.load(c, trainer.mesh, c.mesh.rules, state.params))
      writer.print(warm_start.describe(c))
  tokens_per_step = c.train.batch_size * c.data.seq_len
  flops_per_token = trainer.task.flops_per_token()
  peak = metrics.peak_flops()
  writer.print(f"{c.name}: {counts['total']:,} params ({counts['non_embedding']:,} "
               f"non-embedding) | {tokens_per_step:,} tokens/step | mesh "
               f"{dict(trainer.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform}"
               f" | workdir {r.workdir}")
  schedule = optim.schedule(c.optim, c.train.steps)
  start_step = int(state.step)
  last_time, last_step = None, start_step
  val, loss_mean = {}, None
  checked = {"step": start_step, "nonfinite": int(state.nonfinite)}

  def wall_seconds() -> float:
    """The run's wall time so far, earlier segments of a resumed run included."""
    return earlier_seconds + time.time() - wall_start

  def evaluate_batches(n_batches: int) -> dict:
    """The current params over the first n_batches validation batches (0: all)."""
    batches = trainer.task.eval_batches(tok, n_batches, jax.process_index(),
                                        jax.process_count())
    return trainer.run_eval(state.params, batches)

  def evaluate(step: int, final: bool) -> dict:
    result = evaluate_batches(0 if final else c.train.eval_batches)
    writer.eval_line(step, result)
    writer.log({"step": step, **result})
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
        mngr.wait_until_finished()
        good = mngr.latest_step()  # only finite states are ever saved
        last = ("no checkpoint was saved yet" if good is None else
                f"the last good checkpoint is step {good} in {mngr.directory}")
        raise NonFiniteError(
            f"non-finite loss or gradients at {where} (loss {float(m['loss'])}); {last}; "
            "lower optim.lr or raise optim.warmup_steps and rerun with --resume to go on "
            "from it, or set train.nonfinite=skip to drop such updates")
      writer.print(f"warning: skipped {count - checked['nonfinite']} update(s) with "
                   f"non-finite loss or gradients at {where} ({count} in this run)")
    checked.update(step=step, nonfinite=count)

  with checkpoint.Preemption() as preemption:
    for step in range(start_step + 1, c.train.steps + 1):
      state, step_metrics = trainer.step(state, trainer.device_batch(next(it)))
      if last_time is None:  # the first step includes compilation
        jax.block_until_ready(step_metrics)
        writer.print(f"compiled and ran step {step} in {time.time() - wall_start:.1f}s")
        last_time, last_step = time.perf_counter(), step
      final = step == c.train.steps
      if step % c.train.log_every == 0 or final:
        m = jax.device_get(step_metrics)
        check_finite(step, m)
        now = time.perf_counter()
        seconds = (now - last_time) / max(step - last_step, 1)
        tps = tokens_per_step / seconds if step > last_step else 0.0
        mfu = tps * flops_per_token / (peak * jax.device_count()) if peak and tps else None
        loss, lr = float(m["loss"]), float(schedule(step - 1))
        writer.train_line(step, loss, lr, tps, seconds, mfu)
        writer.log({"step": step, "loss": loss, "lr": lr, "tokens_per_sec": tps,
                    "wall_seconds": wall_seconds(),
                    "grad_norm": float(m["grad_norm"]),
                    "nonfinite_steps": int(m["nonfinite_steps"])})
        loss_mean = _log_spike(writer, step, loss, loss_mean, c.train.spike_factor)
        last_time, last_step = now, step
      # Every process calls this every step: in multi-process runs it is how they agree.
      preempted = preemption.reached(step) and not final
      evaluated = None
      if ((c.train.eval_every and step % c.train.eval_every == 0) or final) and not preempted:
        eval_start = time.perf_counter()
        val = evaluated = evaluate(step, final)
        if last_time is not None:  # keep evaluation time out of the training throughput
          last_time += time.perf_counter() - eval_start
      if (c.checkpoint.every and step % c.checkpoint.every == 0) or final or preempted:
        check_finite(step, jax.device_get(step_metrics))  # never save a non-finite state
        if final and evaluated is not None and c.train.eval_every:
          evaluated = ranked_like_periodic(evaluated)
        checkpoint.save(mngr, step, state, it.get_state(), c, metrics=evaluated,
                        wait=preempted, wall_seconds=wall_seconds())
      if preempted:
        by = f" by {preemption.signal}" if preemption.signal else ""
        writer.print(f"preempted{by} at step {step}; checkpoint saved in {mngr.directory}; "
                     "rerun the same command to resume")
        mngr.close()
        return {"preempted_at": step}
  if not val:  # resumed a finished run: its final evaluation was saved with the checkpoint
    saved = checkpoint.saved_metrics(mngr, c.train.steps) or {}
    full = {k[len(_FULL):]: v for k, v in saved.items() if k.startswith(_FULL)}
    val = full or saved or evaluate(c.train.steps, True)
  mngr.wait_until_finished()
  mngr.close()
  tokens = c.train.steps * tokens_per_step
  summary = {"steps": c.train.steps, **{f"final_{k}": v for k, v in val.items()},
             "params": counts["total"],
             "non_embedding_params": counts["non_embedding"], "tokens": tokens,
             "flops": flops_per_token * tokens, "flops_6nd": 6.0 * counts["total"] * tokens,
             # Over all segments of a resumed run, each up to the checkpoint the
             # next one resumed from.
             "wall_seconds": wall_seconds()}
  if jax.process_index() == 0:
    _write_atomic(os.path.join(r.workdir, "summary.json"), json.dumps(summary, indent=2))
  if c.train.sample_tokens and trainer.task.samples_text:
    writer.print("sample:\n" + sample_text(state.params, c, tok, c.train.sample_prompt,
                                           c.train.sample_tokens))
  return summary


def _log_spike(writer, step: int, loss: float, mean: float | None, factor: float):
  """Reports a loss over `factor` x the running mean of logged losses; returns the new mean."""
  if not math.isfinite(loss):
    return mean
  if factor and mean is not None and loss > factor * mean:
    writer.print(f"warning: loss spike at step {step}: {loss:.4f} is over {factor:g}x the "
                 f"running mean {mean:.4f}")
    writer.log({"step": step, "spike_loss": loss, "running_mean_loss": mean})
  return loss if mean is None else 0.9 * mean + 0.1 * loss


_FULL = "full_"  # the final checkpoint's whole-split metrics, next to its ranking ones


def _truncate_metrics(path: str, step: int) -> float:
  """Drops metrics.jsonl records past `step`, and any line a crash cut short.

  Returns the wall time the kept records reached (0 if none): the earlier
  segments' share of the run, which a resumed run adds to its own.
  """
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
  _write_atomic(path, "".join(kept))
  return wall


def sample_text(params, config: Config, tok, prompt: str, n_tokens: int) -> str:
  """The prompt followed by n_tokens sampled at train.sample_temperature."""
  ids = tok.encode(prompt)
  new = generate.generate(params, config.model, [ids], n_tokens,
                          temperature=config.train.sample_temperature, seed=config.seed,
                          eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
  return prompt + tok.decode(new)
