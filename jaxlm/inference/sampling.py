"""How each new token is drawn from a model's logits: greedy, temperature, top-k, top-p.

Dimension legend (docs/architecture.md): B batch, V vocab.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How each token is chosen: temperature 0 is greedy; top_k 0 and top_p 1 disable filters.

  vocab_limit > 0 never picks ids at or above it: a model's vocabulary padded
  past its tokenizer's (for speed, or an imported one) has ids nothing decodes.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  vocab_limit: int = 0

  def __post_init__(self):
    if not (math.isfinite(self.temperature) and self.temperature >= 0):
      raise ValueError(f"temperature={self.temperature} is invalid: expected a finite "
                       "number >= 0 (0 is greedy)")
    if isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} is invalid: expected an integer >= 0 (0 disables)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p} is invalid: expected 0 < top_p <= 1 (1 disables)")
    if self.vocab_limit < 0:
      raise ValueError(f"vocab_limit={self.vocab_limit} is invalid: expected >= 0 (0: none)")

  def arrays(self) -> tuple:
    # Traced, not static: changing a setting never recompiles.
    return (jnp.float32(self.temperature), jnp.int32(self.top_k), jnp.float32(self.top_p),
            jnp.int32(self.vocab_limit))


def filter_logits(logits_BV: jax.Array, top_k, top_p) -> jax.Array:
  """Sets logits outside the top_k, then outside the top_p probability mass, to -inf."""
  V = logits_BV.shape[-1]
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
  in_k_BV = jnp.arange(V)[None, :] < k
  probs_BV = jax.nn.softmax(jnp.where(in_k_BV, sorted_BV, -jnp.inf), axis=-1)
  # Nucleus (Holtzman et al. 2019): the fewest tokens whose mass reaches top_p,
  # i.e. those with less than top_p ranked above them. top_p = 1 keeps all, as
  # float rounding can make the running sum reach 1 before the tail.
  above_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_BV = in_k_BV & ((above_BV < top_p) | (top_p >= 1.0))
  n_B = jnp.sum(keep_BV, axis=-1)
  cutoff_B1 = jnp.take_along_axis(sorted_BV, (n_B - 1)[:, None], axis=-1)
  return jnp.where(logits_BV >= cutoff_B1, logits_BV, -jnp.inf)


def sample_logits(key: jax.Array, logits_BV: jax.Array, temperature, top_k, top_p,
                  vocab_limit=0) -> jax.Array:
  """One token id per row: argmax at temperature 0, else a draw from the filtered softmax."""
  V = logits_BV.shape[-1]
  in_vocab_V = (vocab_limit <= 0) | (jnp.arange(V) < vocab_limit)
  logits_BV = jnp.where(in_vocab_V, logits_BV, -jnp.inf)

  def draw(logits_BV):
    scaled_BV = logits_BV / temperature
    filtered_BV = jax.lax.cond((top_k > 0) | (top_p < 1), filter_logits,
                               lambda x, *_: x, scaled_BV, top_k, top_p)
    return jax.random.categorical(key, filtered_BV, axis=-1).astype(jnp.int32)

  greedy = lambda logits_BV: jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  return jax.lax.cond(temperature > 0, draw, greedy, logits_BV)
