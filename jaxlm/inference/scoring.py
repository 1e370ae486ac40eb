"""Scoring continuations: the log-likelihood of each (context, continuation) pair of token ids.

Dimension legend (docs/architecture.md): B batch (requests), T length, V vocab.

What the LM Evaluation Harness asks of a model (jaxlm/inference/harness.py), and
what any ranking of answers needs: for each pair, the summed log-probability
of the continuation's tokens given everything before them, and whether greedy
decoding would have produced the continuation exactly. A pair longer than the
model's context keeps its last max_seq_len + 1 tokens (the harness's rule).

Pairs are sorted longest first and scored batch_size at a time, each batch
right-padded to a length bucket and to batch_size rows, so the number of
compilations stays at the number of buckets used (at most about log2 of
max_seq_len plus 8), whatever the mix of request lengths.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxlm import sharding
from jaxlm.config import ModelConfig
from jaxlm.models import transformer
from jaxlm.run import loggers


@functools.partial(jax.jit, static_argnames=("config", "mesh", "rules"))
def _score(params, tokens_BT, targets_BT, weights_BT, *, config: ModelConfig, mesh, rules):
  """Per row: the summed log-probability of the weighted targets, and whether each
  weighted target is the argmax."""
  with sharding.activation_rules(mesh, rules):
    logits_BTV = transformer.apply(params, tokens_BT, config).astype(jnp.float32)
  picked_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
  logp_BT = picked_BT - jax.nn.logsumexp(logits_BTV, axis=-1)
  greedy_BT = jnp.argmax(logits_BTV, axis=-1) == targets_BT
  out = (jnp.sum(logp_BT * weights_BT, axis=1), jnp.all(greedy_BT | (weights_BT == 0), axis=1))
  # Replicated, so every process of a multi-host mesh can read the results.
  return jax.lax.with_sharding_constraint(out, jax.sharding.NamedSharding(mesh, P()))


def buckets(max_len: int) -> list[int]:
  """The padded lengths batches take: powers of two from 8, then multiples of max_len // 8."""
  step = max(max_len // 8, 1)
  lengths = {min(2 ** i, max_len) for i in range(3, max(max_len.bit_length(), 3) + 1)}
  lengths |= {min(step * i, max_len) for i in range(1, 9)}
  return sorted(lengths)


class Scorer:
  """Scores (context, continuation) token-id pairs with a decoder-only model's params on a
  mesh (rules: the activations' logical-axis rules). batch_size, the rows per forward pass,
  is rounded up to a multiple of the mesh's batch-parallel devices; on_batch is called after
  each batch (a training run's watchdog beats)."""

  def __init__(self, params, config: ModelConfig, mesh, rules, batch_size: int = 16,
               on_batch=None):
    if config.encoder_layers:
      raise ValueError("scoring continuations needs a decoder-only model; this one has "
                       f"model.encoder_layers={config.encoder_layers}")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} is invalid: expected a positive integer")
    self.params, self.config, self.mesh, self.rules = params, config, mesh, tuple(rules)
    self._sharding = sharding.batch_sharding(mesh, self.rules)
    ways = int(np.prod([mesh.shape[a] for a in sharding.spec_axes(self._sharding.spec[0])]))
    self.batch_size = -(-batch_size // ways) * ways
    self._buckets = buckets(config.max_seq_len)
    self.on_batch = on_batch or (lambda: None)

  def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                    desc: str = "scoring") -> list[tuple[float, bool]]:
    """(summed log-probability, greedy) of each continuation given its context.

    Args:
      pairs: (context ids, continuation ids); the context non-empty (the
        harness puts the end-of-text id where a request has none), the
        continuation 1 to max_seq_len ids.
    """
    rows, max_len = [], self.config.max_seq_len
    for i, (context, continuation) in enumerate(pairs):
      if len(context) == 0 or not 0 < len(continuation) <= max_len:
        raise ValueError(f"request {i} has {len(context)} context and {len(continuation)} "
                         f"continuation tokens; expected a context of at least 1 and a "
                         f"continuation of 1 to model.max_seq_len={max_len}")
      whole = np.asarray(list(context) + list(continuation), np.int32)[-(max_len + 1):]
      rows.append((whole, len(continuation)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list = [None] * len(rows)
    bar = loggers.progress(total=len(rows), desc=desc)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      logp_B, greedy_B = self._batch([rows[i] for i in chunk])
      for i, lp, g in zip(chunk, logp_B, greedy_B):
        out[i] = (float(lp), bool(g))
      bar.update(len(chunk))
      self.on_batch()
    bar.close()
    return out

  def _batch(self, rows):
    """Scores up to batch_size rows (whole sequence, continuation length) in one call."""
    longest = max(len(whole) - 1 for whole, _ in rows)
    T = next(b for b in self._buckets if b >= longest)
    B = self.batch_size
    tokens_BT, targets_BT = np.zeros((2, B, T), np.int32)
    weights_BT = np.zeros((B, T), np.float32)
    for b, (whole, n) in enumerate(rows):
      L = len(whole) - 1
      tokens_BT[b, :L], targets_BT[b, :L] = whole[:-1], whole[1:]
      weights_BT[b, L - n:L] = 1.0
    put = functools.partial(jax.device_put, device=self._sharding)
    logp_B, greedy_B = jax.device_get(_score(
        self.params, put(tokens_BT), put(targets_BT), put(weights_BT), config=self.config,
        mesh=self.mesh, rules=self.rules))
    return logp_B[:len(rows)], greedy_B[:len(rows)]
