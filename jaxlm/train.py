"""Train state, the pure train and eval steps, and the jitted, sharded step builder.

`train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch)`
are pure; `Trainer` applies jit, shardings and donation to them in one place.
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
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm import checkpoint, generate, metrics, optim, plan, sharding
from jaxlm import config as config_lib
from jaxlm.config import Config
from jaxlm.data import pipeline
from jaxlm.models import transformer


@struct.dataclass
class TrainState:
  """Everything that changes during training (the step counter included)."""
  step: jax.Array
  params: Any
  opt_state: Any


def loss_fn(params, batch: dict, config: Config):
  """Mean next-token cross-entropy over weighted targets; also returns per-token nll."""
  segments = batch["segment_ids"] if config.data.mask_documents else None
  logits_BTV = transformer.apply(params, batch["inputs"], config.model,
                                 positions_BT=batch["positions"], segment_ids_BT=segments)
  nll_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, batch["targets"])
  weights_BT = batch["weights"]
  loss = jnp.sum(nll_BT * weights_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)
  return loss, nll_BT


def train_step(state: TrainState, batch: dict, *, config: Config, tx) -> tuple:
  """One optimizer step on a batch; returns the new state and scalar metrics."""
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, config)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, config: Config, token_bytes) -> dict:
  """Sums of nll (nats), target weights and target UTF-8 bytes over a batch."""
  _, nll_BT = loss_fn(params, batch, config)
  w_BT = batch["weights"]
  return {"nll": jnp.sum(nll_BT * w_BT), "tokens": jnp.sum(w_BT),
          "bytes": jnp.sum(token_bytes[batch["targets"]] * w_BT)}


def summarize_eval(sums: dict) -> dict:
  """val_loss (nats per token) and val_bpb (bits per UTF-8 byte) from summed eval_step output."""
  return {"val_loss": sums["nll"] / max(sums["tokens"], 1.0),
          "val_bpb": sums["nll"] / math.log(2) / max(sums["bytes"], 1.0)}


@dataclasses.dataclass
class Trainer:
  """The jitted, sharded init/train/eval functions for one config on one mesh."""
  config: Config
  mesh: jax.sharding.Mesh
  token_bytes: np.ndarray

  def __post_init__(self):
    c = self.config
    rules = c.mesh.rules
    self.specs = transformer.param_specs(c.model)
    self.tx = optim.make(c.optim, c.train.steps, transformer.decay_mask(c.model))
    self.param_shardings = sharding.tree_shardings(self.specs, self.mesh, rules)
    replicated = NamedSharding(self.mesh, P())
    abstract_params = jax.eval_shape(lambda: transformer.init(c.model, jax.random.key(0)))
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
        self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, NamedSharding))
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=opt_shardings)
    self.batch_sharding = sharding.batch_sharding(self.mesh, rules)

    def init_state(rng):
      params = transformer.init(c.model, rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params))

    def step(state, batch):
      with sharding.activation_rules(self.mesh, rules):
        return train_step(state, batch, config=c, tx=self.tx)

    def evaluate(params, batch):
      with sharding.activation_rules(self.mesh, rules):
        return eval_step(params, batch, config=c, token_bytes=jnp.asarray(self.token_bytes))

    batch_shardings = self._batch_tree(self.batch_sharding)
    self.init = jax.jit(init_state, out_shardings=self.state_shardings)
    self.step = jax.jit(step, in_shardings=(self.state_shardings, batch_shardings),
                        out_shardings=(self.state_shardings, replicated), donate_argnums=0)
    self.evaluate = jax.jit(evaluate, in_shardings=(self.param_shardings, batch_shardings),
                            out_shardings=replicated)

  @staticmethod
  def _batch_tree(leaf):
    return {k: leaf for k in ("inputs", "targets", "segment_ids", "positions", "weights")}

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state, without allocating it."""
    shapes = jax.eval_shape(self.init, jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def abstract_batch(self) -> dict:
    B, T = self.config.train.batch_size, self.config.data.seq_len
    return {k: jax.ShapeDtypeStruct((B, T), jnp.float32 if k == "weights" else jnp.int32,
                                    sharding=self.batch_sharding)
            for k in self._batch_tree(None)}

  def device_batch(self, local_batch: dict) -> dict:
    """Assembles the global batch from this process's rows."""
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in local_batch.items()}

  def run_eval(self, params, batches) -> dict:
    """Evaluates params over an iterable of host batches."""
    sums = {"nll": 0.0, "tokens": 0.0, "bytes": 0.0}
    pending = [self.evaluate(params, self.device_batch(b)) for b in batches]
    for out in jax.device_get(pending):
      for k in sums:
        sums[k] += float(out[k])
    return summarize_eval(sums)


# ---------------------------------------------------------------------------
# The training loop.


def prepare_workdir(config: Config, workdir: str) -> None:
  """Creates workdir and writes config.json, or checks it matches the run there."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      try:
        existing = config_lib.loads(f.read())
      except (ValueError, TypeError) as e:
        raise config_lib.ConfigError(f"{path} is not a jaxlm config ({e}); "
                                     "use a new --workdir") from None
    if existing != config:
      old, new = _flatten(config_lib.to_dict(existing)), _flatten(config_lib.to_dict(config))
      diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
      raise config_lib.ConfigError(
          f"--workdir {workdir} holds a run of {existing.name!r} whose config differs in "
          f"{', '.join(diff[:6])}; rerun with the same settings to resume, or use a new "
          "--workdir")
    return
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_atomic(path, config_lib.dumps(config))


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


def setup(config: Config, workdir: str) -> Run:
  """Checks inputs (tokenizer, corpus, mesh, workdir) and builds the run; raises on bad input."""
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  dataset = pipeline.train_dataset(config.data, tok, config.train.batch_size, config.seed,
                                   jax.process_index(), jax.process_count())
  pipeline.token_stream(config.data, "validation", tok)
  trainer = Trainer(config, mesh, tok.token_bytes())
  if plan.device_memory_limit() is not None:  # accelerators: compile ahead, stop if too big
    compiled = plan.compile_step(trainer)
    plan.check_fits(compiled, config)
    trainer.step = compiled
  prepare_workdir(config, workdir)
  return Run(config, workdir, tok, trainer, dataset)


def run(r: Run) -> dict:
  """Trains (or resumes) to train.steps; writes metrics, checkpoints and summary.json."""
  c, trainer, tok = r.config, r.trainer, r.tokenizer
  wall_start = time.time()
  writer = metrics.Writer(r.workdir, c.train.steps)
  mngr = checkpoint.manager(r.workdir, c.checkpoint.keep)
  it = pipeline.train_iterator(r.dataset)
  counts = transformer.param_count(c.model)
  if mngr.latest_step() is not None:
    state, data_state = checkpoint.restore(mngr, trainer.abstract_state())
    it.set_state(data_state)
    writer.print(f"resumed from step {int(state.step)} in {r.workdir}")
  else:
    state = trainer.init(jax.random.key(c.seed))
  tokens_per_step = c.train.batch_size * c.data.seq_len
  flops_per_token = transformer.flops_per_token(c.model, c.data.seq_len)["total"]
  peak = metrics.peak_flops()
  writer.print(f"{c.name}: {counts['total']:,} params ({counts['non_embedding']:,} "
               f"non-embedding) | {tokens_per_step:,} tokens/step | mesh "
               f"{dict(trainer.mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform}"
               f" | workdir {r.workdir}")
  schedule = optim.schedule(c.optim, c.train.steps)
  start_step = int(state.step)
  last_time, last_step = None, start_step
  val = {}

  def evaluate(step: int, final: bool) -> dict:
    batches = pipeline.eval_batches(c.data, tok, c.train.batch_size,
                                    0 if final else c.train.eval_batches,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    result = trainer.run_eval(state.params, batches)
    writer.eval_line(step, result["val_loss"], result["val_bpb"])
    writer.log({"step": step, **result})
    return result

  for step in range(start_step + 1, c.train.steps + 1):
    state, step_metrics = trainer.step(state, trainer.device_batch(next(it)))
    if last_time is None:  # the first step includes compilation
      jax.block_until_ready(step_metrics)
      writer.print(f"compiled and ran step {step} in {time.time() - wall_start:.1f}s")
      last_time, last_step = time.perf_counter(), step
    if step % c.train.log_every == 0 or step == c.train.steps:
      m = jax.device_get(step_metrics)
      now = time.perf_counter()
      seconds = (now - last_time) / max(step - last_step, 1)
      tps = tokens_per_step / seconds if step > last_step else 0.0
      mfu = tps * flops_per_token / (peak * jax.device_count()) if peak and tps else None
      loss, lr = float(m["loss"]), float(schedule(step - 1))
      writer.train_line(step, loss, lr, tps, seconds, mfu)
      writer.log({"step": step, "loss": loss, "lr": lr, "tokens_per_sec": tps,
                  "grad_norm": float(m["grad_norm"])})
      last_time, last_step = now, step
    final = step == c.train.steps
    if (c.train.eval_every and step % c.train.eval_every == 0) or final:
      eval_start = time.perf_counter()
      val = evaluate(step, final)
      if last_time is not None:  # keep evaluation time out of the training throughput
        last_time += time.perf_counter() - eval_start
    if (c.checkpoint.every and step % c.checkpoint.every == 0) or final:
      checkpoint.save(mngr, step, state, it.get_state(), c)
  if not val:  # resumed a finished run
    val = evaluate(c.train.steps, True)
  mngr.wait_until_finished()
  mngr.close()
  tokens = c.train.steps * tokens_per_step
  summary = {"steps": c.train.steps, "final_val_loss": val["val_loss"],
             "final_val_bpb": val["val_bpb"], "params": counts["total"],
             "non_embedding_params": counts["non_embedding"], "tokens": tokens,
             "flops": flops_per_token * tokens, "flops_6nd": 6.0 * counts["total"] * tokens,
             "wall_seconds": time.time() - wall_start}
  if jax.process_index() == 0:
    _write_atomic(os.path.join(r.workdir, "summary.json"), json.dumps(summary, indent=2))
  if c.train.sample_tokens:
    writer.print("sample:\n" + sample_text(state.params, c, tok, c.train.sample_prompt,
                                           c.train.sample_tokens))
  return summary


def sample_text(params, config: Config, tok, prompt: str, n_tokens: int) -> str:
  """The prompt followed by n_tokens sampled at train.sample_temperature."""
  ids = tok.encode(prompt)
  new = generate.sample(params, config.model, ids, n_tokens, window=config.data.seq_len,
                        temperature=config.train.sample_temperature, seed=config.seed,
                        eos_id=tok.eos_id)
  return prompt + tok.decode(new)
