"""Sampling text from a trained model.

This version recomputes the forward pass over a fixed window for every new
token (simple and exact; a key/value-cache decoder is the planned fast path).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import ModelConfig
from jaxlm.models import transformer


@functools.partial(jax.jit, static_argnames=("config",))
def _next_token(params, buf_1W, n, key, temperature, *, config: ModelConfig):
  logits_1WV = transformer.apply(params, buf_1W, config)
  logits_V = jax.lax.dynamic_index_in_dim(logits_1WV[0], n - 1, keepdims=False)
  greedy = jnp.argmax(logits_V).astype(jnp.int32)
  drawn = jax.random.categorical(key, logits_V / jnp.maximum(temperature, 1e-6)).astype(jnp.int32)
  return jnp.where(temperature > 0, drawn, greedy)


def sample(params, config: ModelConfig, prompt_ids, max_new_tokens: int, *, window: int,
           temperature: float = 1.0, seed: int = 0, eos_id: int | None = None) -> np.ndarray:
  """Continues prompt_ids by up to max_new_tokens sampled tokens (0 temperature = greedy).

  The model sees the last `window` tokens (at most model.max_seq_len).
  Returns only the new tokens; stops early after eos_id.
  """
  window = min(window, config.max_seq_len)
  prompt = np.asarray(prompt_ids, np.int32)[-window:]
  if len(prompt) == 0:
    raise ValueError("sample() needs a non-empty prompt")
  buf = np.zeros((1, window), np.int32)
  buf[0, :len(prompt)] = prompt
  n = len(prompt)
  key = jax.random.key(seed)
  out = []
  for _ in range(max_new_tokens):
    key, sub = jax.random.split(key)
    tok = int(_next_token(params, jnp.asarray(buf), n, sub, temperature, config=config))
    out.append(tok)
    if eos_id is not None and tok == eos_id:
      break
    if n == window:
      buf = np.roll(buf, -1, axis=1)
      n -= 1
    buf[0, n] = tok
    n += 1
  return np.array(out, np.int32)
