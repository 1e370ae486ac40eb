"""Train state, the pure train step, and the one place that jits and shards it.

`train_step(state, batch) -> (state, metrics)` is pure; what it minimizes and
how a batch is evaluated come from the config's task (jaxlm.tasks); `Trainer`
applies jit, shardings and donation to them for one config on one mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm import params as params_lib
from jaxlm import config as config_lib
from jaxlm import sharding, tasks
from jaxlm.config import Config
from jaxlm.inference.evaluate import sum_batches
from jaxlm.train import optim


@struct.dataclass
class TrainState:
  """Everything that changes during training (the step counter included)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array          # split every step, so randomness after a resume matches
  nonfinite: jax.Array    # steps so far whose loss or gradients were not finite


def accumulated_grad(loss_fn, loss_weight, params, batch: dict, microbatches: int,
                     place=lambda mb: mb, unroll: bool = False, local=None):
  """((loss, stats), grads) of the whole batch, computed over `microbatches` parts in turn.

  A `lax.scan` over the parts (one compiled body, one part's activations alive at a
  time; unroll: a copy of the body per part, which XLA may schedule across parts).
  Each part's mean loss and gradients are weighted by its loss_weight (the
  denominator of its weighted mean), so the result is the whole batch's to float
  rounding; statistics are weighted means, those named max_* maxima, tokens/NAME sums,
  and a loss/NAME beside a tokens/NAME (a mixture source's mean) is weighted by it.
  Part k holds rows k, k + K, k + 2K, ...: with the batch split over devices in
  contiguous blocks, every device keeps its own rows. `place` pins a part to the batch's
  sharding.

  local: (mesh, the leading mesh axes of the batch's split that split no parameter:
  "data", alone or beside one axis that splits parameters, fsdp or tensor). The loop then
  runs in a shard_map manual over those axes, on each group's own rows
  (sharding.on_each_device), each group sums its own gradients, and the sums are
  all-reduced over those axes once after the loop, where under automatic sharding every
  part's gradient was (docs/sharding.md).
  """
  if local is None:
    return _mean(*_summed(loss_fn, loss_weight, params, batch, microbatches, place, unroll),
                 params)
  mesh, axes = local

  def on_device(params, batch):
    with sharding.on_each_device(axes):
      grads, total, weight, stats = _summed(loss_fn, loss_weight, params, batch, microbatches,
                                            place, unroll)
    grads, total, weight = jax.lax.psum((grads, total, weight), axes)
    stats = {k: jax.lax.pmax(v, axes) if k.startswith("max_") else jax.lax.psum(v, axes)
             for k, v in stats.items()}
    return _mean(grads, total, weight, stats, params)

  return jax.shard_map(on_device, mesh=mesh, in_specs=(P(), P(axes)), out_specs=P(),
                       axis_names=set(axes), check_vma=False)(params, batch)


def _summed(loss_fn, loss_weight, params, batch: dict, microbatches: int, place, unroll):
  """(gradients, loss, loss weight, statistics) summed over the parts, each weighted."""
  K = microbatches
  parts = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // K, K, *x.shape[1:]),
                                              0, 1), batch)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  stats_shape = jax.eval_shape(lambda p, b: loss_fn(p, b)[1], params,
                               jax.tree.map(lambda x: x[0], parts))
  init_stat = lambda name, s: jnp.full(s.shape, -jnp.inf if name.startswith("max_") else 0.0,
                                       jnp.float32)

  def body(carry, part):
    grads, total, weight, stats = carry
    part = place(part)
    (loss, s), g = grad_fn(params, part)
    w = loss_weight(part).astype(jnp.float32)
    grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32) * w, grads, g)
    stats = {k: jnp.maximum(v, s[k]) if k.startswith("max_") else v + s[k] * _weight(k, s, w)
             for k, v in stats.items()}
    return (grads, total + loss * w, weight + w, stats), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  carry = (zeros, jnp.float32(0), jnp.float32(0),
           {k: init_stat(k, s) for k, s in stats_shape.items()})
  return jax.lax.scan(body, carry, parts, unroll=microbatches if unroll else 1)[0]


def _weight(name: str, stats: dict, weight):
  """What statistic `name` of a part is weighted by when summed over parts (_summed)."""
  if name.startswith("tokens/"):
    return 1.0
  if name.startswith("loss/") and "tokens/" + name[5:] in stats:
    return stats["tokens/" + name[5:]]
  return weight


def _mean(grads, total, weight, stats, params):
  """((loss, stats), grads): the weighted sums of _summed divided by their weight."""
  weight = jnp.maximum(weight, 1.0)  # as each task's own mean: max(sum of weights, 1)
  grads = jax.tree.map(lambda g, p: (g / weight).astype(p.dtype), grads, params)
  stats = {k: v if k.startswith(("max_", "tokens/")) else v / jnp.maximum(
      _weight(k, stats, weight), 1.0) for k, v in stats.items()}
  return (total / weight, stats), grads


def train_step(state: TrainState, batch: dict, *, loss_fn, tx, nonfinite: str = "stop",
               specs=None, microbatches: int = 1, loss_weight=None,
               place=lambda mb: mb, unroll_microbatches: bool = False, local=None) -> tuple:
  """One optimizer step on a batch; returns the new state and metrics.

  A step whose loss or gradients are not finite is counted in `nonfinite`; with
  nonfinite="skip" (train.nonfinite) its update is dropped (params and optimizer moments stay
  as they were), decided on device so that no step waits for the host. Given the params'
  specs (train.layer_stats), metrics["stats"] holds the loss function's statistics and
  each parameter's norms and update ratio (params.update_stats). Trainer compiles the step
  twice, with them for log steps and without for the rest (gating them with lax.cond
  inside one step cost more: its operands, the whole gradient and update trees, were
  materialized apart from the optimizer's fusions). With microbatches > 1
  the gradient is accumulated over that many parts of the batch (accumulated_grad; `local`
  its per-device form), and the optimizer steps once.
  """
  rng, _ = jax.random.split(state.rng)  # the other half is this step's (dropout has none yet)
  if microbatches > 1:
    (loss, stats), grads = accumulated_grad(loss_fn, loss_weight, state.params, batch,
                                            microbatches, place, unroll_microbatches, local)
  else:
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if nonfinite == "skip":
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
  nonfinite = state.nonfinite + jnp.logical_not(finite).astype(jnp.int32)
  metrics = {"loss": loss, "grad_norm": grad_norm, "nonfinite_steps": nonfinite}
  if specs is not None:  # a few reductions per parameter: ~1% of a step (docs/benchmarks.md)
    metrics["stats"] = {**stats, **params_lib.update_stats(specs, state.params, grads, updates)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                    nonfinite=nonfinite), metrics


@dataclasses.dataclass
class Trainer:
  """The jitted, sharded init/train/eval functions of one config's task on one mesh.

  step returns the statistics of train.layer_stats in its metrics; unlogged_step, the one
  the training loop runs between log steps, does not (with layer_stats off, the same
  function)."""
  config: Config
  mesh: jax.sharding.Mesh
  token_bytes: np.ndarray

  def __post_init__(self):
    c = self.config
    rules = c.mesh.rules
    self.task = tasks.get(c)
    self.specs = self.task.param_specs()
    self.tx = optim.make(c.optim, c.train.steps, params_lib.decay_mask(self.specs),
                         params_lib.lr_scales(self.specs), self.specs)
    self.param_shardings = sharding.tree_shardings(self.specs, self.mesh, rules)
    replicated = NamedSharding(self.mesh, P())
    dtype = jnp.dtype(c.model.param_dtype)
    abstract = params_lib.abstract_params(self.specs, dtype)
    opt_shardings = sharding.like_params(jax.eval_shape(self.tx.init, abstract), abstract,
                                         self.param_shardings, replicated)
    self.state_shardings = TrainState(step=replicated, params=self.param_shardings,
                                      opt_state=opt_shardings, rng=replicated,
                                      nonfinite=replicated)
    # Each batch array is split over its leading (batch) axis only.
    self.batch_shardings = {k: sharding.batch_sharding(self.mesh, rules, len(shape))
                            for k, (shape, _) in self.task.batch_shapes(1).items()}
    axes = next(iter(self.batch_shardings.values())).spec[0] or ()
    rows = math.prod(self.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
    if c.train.batch_size % rows:
      raise config_lib.ConfigError(
          f"train.batch_size={c.train.batch_size} cannot be split evenly over the {rows} "
          f"devices of mesh {dict(self.mesh.shape)} that share each batch; expected a "
          f"multiple of {rows}")
    if c.train.batch_size % (c.train.microbatches * rows):
      raise config_lib.ConfigError(
          f"train.microbatches={c.train.microbatches} splits train.batch_size="
          f"{c.train.batch_size} into parts of {c.train.batch_size / c.train.microbatches:g} "
          f"rows, which the {rows} devices the batch is split over cannot share evenly; "
          f"expected batch_size divisible by microbatches x {rows}")

    def init_state(rng):
      params = params_lib.init_params(self.specs, rng, dtype)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        opt_state=self.tx.init(params), rng=jax.random.fold_in(rng, 1),
                        nonfinite=jnp.zeros((), jnp.int32))

    # The leading batch axes that split no parameter: each of their device groups
    # accumulates its own gradient over the microbatches (accumulated_grad's local form).
    # Not with parameters split over two axes (fsdp and tensor): XLA's SPMD partitioner
    # fails a check compiling that (jax 0.10.2, CPU and TPU, mesh 2x2x2).
    split = {a for s in jax.tree.leaves(self.param_shardings) for e in s.spec
             for a in sharding.spec_axes(e)}
    lead = tuple(itertools.takewhile(lambda a: a not in split, sharding.spec_axes(axes)))
    local = (self.mesh, lead) if c.train.microbatches > 1 and lead and len(split) <= 1 else None

    def place(part):  # a microbatch keeps the batch's sharding: every device its own rows
      return {k: sharding.constrain(v, ("batch",) + (None,) * (v.ndim - 1))
              for k, v in part.items()}

    def step(state, batch, stats: bool):
      with sharding.activation_rules(self.mesh, rules):
        return train_step(state, batch, loss_fn=self.task.loss, tx=self.tx,
                          nonfinite=c.train.nonfinite, specs=self.specs if stats else None,
                          microbatches=c.train.microbatches,
                          loss_weight=self.task.loss_weight, place=place,
                          unroll_microbatches=c.train.microbatch_loop == "unroll",
                          local=local)

    def evaluate(params, batch):
      with sharding.activation_rules(self.mesh, rules):
        return self.task.eval_sums(params, batch, jnp.asarray(self.token_bytes))

    self.init = jax.jit(init_state, out_shardings=self.state_shardings)
    jit_step = lambda stats: jax.jit(
        functools.partial(step, stats=stats), out_shardings=(self.state_shardings, replicated),
        in_shardings=(self.state_shardings, self.batch_shardings), donate_argnums=0)
    self.step = jit_step(c.train.layer_stats)
    # The steps between log steps: the same update, metrics without "stats", whose
    # computation XLA then drops (1.5-4.7% of a CPU step; docs/benchmarks.md).
    self.unlogged_step = jit_step(False) if c.train.layer_stats else self.step
    self.evaluate = jax.jit(evaluate, in_shardings=(self.param_shardings, self.batch_shardings),
                            out_shardings=replicated)

  def compile_steps(self, state=None, batch=None, unlogged: bool = True) -> None:
    """Compiles step (and unlogged_step, unless `unlogged` is False: no step between log
    steps is left to run) ahead of time for state and batch (arrays or abstract; default:
    abstract_state() and abstract_batch()) and calls the compiled forms from then on: a
    step compiling its variant in the middle of a run would add the compilation to a
    throughput record."""
    state = self.abstract_state() if state is None else state
    batch = self.abstract_batch() if batch is None else batch
    compile_ = lambda fn: fn if isinstance(fn, jax.stages.Compiled) else (
        fn.lower(state, batch).compile())
    same = self.unlogged_step is self.step
    self.step = compile_(self.step)
    if same:
      self.unlogged_step = self.step
    elif unlogged:
      self.unlogged_step = compile_(self.unlogged_step)

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
    """Assembles the global batch from this process's rows (keys the task does not read,
    such as a training row's "index", stay on the host)."""
    return {k: jax.make_array_from_process_local_data(self.batch_shardings[k], v)
            for k, v in local_batch.items() if k in self.batch_shardings}

  def run_eval(self, params, batches) -> dict:
    """Evaluates params over an iterable of host batches."""
    sums = sum_batches(lambda b: self.evaluate(params, self.device_batch(b)), batches)
    return {k: float(v) for k, v in self.task.summarize(sums).items()}
