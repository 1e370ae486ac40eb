"""Generation: one decoding loop over a key/value cache, for both model kinds.

Dimension legend (docs/architecture.md): B batch (prompts x samples), T prompt
(context) length, S source length, M new tokens, V vocab.

A model kind's `start` (decode.prefill, encoder_decoder.start) reads the inputs
and returns the first token's logits and a cache; its `step` feeds one token.
`generate()` runs start and a `lax.while_loop` of steps in one jitted call;
`stream()` the same start and step from Python, yielding each token as drawn.
Step i draws with fold_in(key(seed), i), so the two agree. A decoder-only
model's context slides when full (to its last max_seq_len // 2 tokens), so any
number of tokens can be drawn; an encoder-decoder writes at most max_seq_len.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import config as config_lib
from jaxlm import sharding
from jaxlm.config import ModelConfig
from jaxlm.inference.sampling import Sampling, sample_logits
from jaxlm.models import decode, encoder_decoder


def _start(params, inputs: dict, config: ModelConfig, n_max: int):
  """First-token logits (B, V) and a cache with room for n_max new tokens."""
  if config.encoder_layers:  # one slot per token fed: the start token and n_max - 1 more
    return encoder_decoder.start(params, inputs["src"], inputs["src_segments"],
                                 inputs["start"], config, n_max)
  T = inputs["tokens"].shape[1]  # the last token drawn is never fed, so needs no slot
  return decode.prefill(params, inputs["tokens"], inputs["lengths"], config, T + n_max - 1)


def _pick(logits_BV, done_B, key, i, sampling, stops_S):
  tok_B = sample_logits(jax.random.fold_in(key, i), logits_BV, *sampling)
  tok_B = jnp.where(done_B, -1, tok_B)  # -1: this row has ended
  return tok_B, done_B | jnp.any(tok_B[:, None] == stops_S[None, :], axis=1)


def _step_pick(params, cache, tok_B, done_B, key, i, sampling, stops_S, config):
  """Feeds each row's last token (an ended row's -1 as 0) and draws the next."""
  step = encoder_decoder.decode_step if config.encoder_layers else decode.decode_step
  logits_BV, cache = step(params, cache, jnp.maximum(tok_B, 0), config)
  return (*_pick(logits_BV, done_B, key, i, sampling, stops_S), cache)


def _scope(shard):
  """Activation sharding rules of shard = (mesh, rules) while tracing; none for None."""
  return sharding.activation_rules(*shard) if shard else contextlib.nullcontext()


# The streaming path: a jitted start, then one jitted step per token from Python.
@functools.partial(jax.jit, static_argnames=("config", "n_max", "shard"))
def _first(params, inputs, done_B, key, i, sampling, stops_S, *, config: ModelConfig,
           n_max: int, shard):
  with _scope(shard):
    logits_BV, cache = _start(params, inputs, config, n_max)
    return (*_pick(logits_BV, done_B, key, i, sampling, stops_S), cache)


@functools.partial(jax.jit, static_argnames=("config", "shard"), donate_argnames="cache")
def _next(params, cache, tok_B, done_B, key, i, sampling, stops_S, *, config: ModelConfig,
          shard):
  with _scope(shard):
    return _step_pick(params, cache, tok_B, done_B, key, i, sampling, stops_S, config)


# The batch path: start and the whole decode loop in one jitted call.
@functools.partial(jax.jit, static_argnames=("config", "n_max", "shard"))
def _window(params, inputs, done_B, key, i0, n, sampling, stops_S, *, config: ModelConfig,
            n_max: int, shard):
  """Up to n (<= n_max) new tokens (B, n_max) from one start and a decode loop; -1 pads."""
  with _scope(shard):
    logits_BV, cache = _start(params, inputs, config, n_max)
    tok_B, done_B = _pick(logits_BV, done_B, key, i0, sampling, stops_S)
    out_BM = jnp.full((tok_B.shape[0], n_max), -1, jnp.int32).at[:, 0].set(tok_B)

    def cond(carry):
      i, _, done_B, _, _ = carry
      return (i < n) & ~jnp.all(done_B)

    def body(carry):
      i, tok_B, done_B, cache, out_BM = carry
      tok_B, done_B, cache = _step_pick(params, cache, tok_B, done_B, key, i0 + i, sampling,
                                        stops_S, config)
      out_BM = jax.lax.dynamic_update_slice(out_BM, tok_B[:, None], (0, i))
      return i + 1, tok_B, done_B, cache, out_BM

    carry = (jnp.int32(1), tok_B, done_B, cache, out_BM)
    return jax.lax.while_loop(cond, body, carry)[-1]


def _windows(prompts, max_new_tokens: int, max_len: int, stops: np.ndarray,
             run: Callable) -> Iterator[np.ndarray]:
  """Yields (B, m) blocks of new tokens (-1 once a row has ended), a context window at a time.

  A row's context starts as its prompt's last max_len tokens. When a row's
  context would exceed max_len, every row restarts from its last max_len // 2
  tokens (prefilled again). Until then, each row draws what it would alone;
  past it, rows of a ragged batch restart together, so a row may differ from
  its run alone. `run(inputs, done_B, i0, n, n_max)` yields the blocks of one
  window: at most n tokens, from a cache sized for n_max (a static shape).
  """
  history = [np.asarray(p, np.int32) for p in prompts]
  start = [max(len(h) - max_len, 0) for h in history]
  done_B = np.zeros(len(history), bool)
  bucket = max(max_len // 8, 1)  # padded prompt lengths: few shapes, few compilations
  drawn = 0
  while drawn < max_new_tokens and not done_B.all():
    if any(len(h) - s > max_len for h, s in zip(history, start)):
      start = [max(len(h) - max(max_len // 2, 1), 0) for h in history]
    context = [h[s:] for h, s in zip(history, start)]
    T = min(-(-max(len(c) for c in context) // bucket) * bucket, max_len)
    tokens_BT = np.zeros((len(context), T), np.int32)
    for b, c in enumerate(context):
      tokens_BT[b, T - len(c):] = c
    inputs = {"tokens": tokens_BT, "lengths": np.array([len(c) for c in context], np.int32)}
    n_max = min(max_new_tokens, max_len - T + 1)  # the last token drawn needs no slot
    n = min(max_new_tokens - drawn, n_max)
    for block_BM in run(inputs, done_B.copy(), drawn, n, n_max):
      yield block_BM
      history = [np.concatenate([h, row[row >= 0]]) for h, row in zip(history, block_BM)]
      done_B |= ((block_BM < 0) | np.isin(block_BM, stops)).any(axis=1)
      drawn += block_BM.shape[1]


def _sources(config: ModelConfig, sources, max_new_tokens: int, start_id: int,
             source_len: int | None) -> dict:
  """An encoder-decoder's inputs: sources right-padded to S, with segment ids and start tokens."""
  max_len = config.max_seq_len
  if not 1 <= max_new_tokens <= max_len:
    raise ValueError(f"max_new_tokens={max_new_tokens} is invalid for an encoder-decoder: "
                     f"expected an integer in [1, model.max_seq_len={max_len}]")
  S = max(len(s) for s in sources) if source_len is None else source_len
  src_BS = np.zeros((len(sources), S), np.int32)
  for b, ids in enumerate(sources):
    if not len(ids) <= min(S, max_len):
      raise ValueError(f"source {b} has {len(ids)} tokens; expected 1 to {min(S, max_len)} "
                       "(source_len, model.max_seq_len)")
    src_BS[b, :len(ids)] = ids
  segments_BS = np.arange(S)[None, :] < np.array([len(s) for s in sources])[:, None]
  return {"src": src_BS, "src_segments": segments_BS.astype(np.int32),
          "start": np.full((len(sources),), start_id, np.int32)}


def _prepare(params, config: ModelConfig, prompts, max_new_tokens, temperature, top_k, top_p,
             seed, eos_id, mesh, rules, vocab_limit, start_id, source_len, stop_ids):
  """Checks inputs at the boundary; returns what both drivers pass to the jitted steps, and
  blocks(run): the blocks of new tokens `run` yields over the whole generation."""
  if ("encoder" in params) != bool(config.encoder_layers):
    kind = "an encoder-decoder's" if "encoder" in params else "a decoder-only model's"
    raise ValueError(f"params are {kind} but model.encoder_layers={config.encoder_layers}; "
                     "expected the config the params were made with (decoder-only: 0)")
  if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or \
      max_new_tokens < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: expected an integer >= 0")
  if len(prompts) == 0:
    raise ValueError("no prompts given; expected a list of token-id sequences, one per row")
  for i, p in enumerate(prompts):
    ids = np.asarray(p)
    if ids.ndim != 1 or ids.size == 0:
      raise ValueError(f"prompt {i} has shape {ids.shape}; expected a non-empty 1-D sequence "
                       "of token ids")
    bad = ids[(ids < 0) | (ids >= config.vocab_size)]
    if bad.size:
      raise ValueError(f"prompt {i} holds token id {int(bad[0])}; expected 0 <= id < "
                       f"model.vocab_size={config.vocab_size}")
  sampling = Sampling(temperature, top_k, top_p, vocab_limit).arrays()
  shard = None if mesh is None else (mesh, tuple(rules or config_lib.DEFAULT_RULES))
  stops_S = np.array([-1 if eos_id is None else eos_id, *stop_ids], np.int32)
  start_id = eos_id if start_id is None else start_id

  def blocks(run: Callable) -> Iterator[np.ndarray]:
    if not config.encoder_layers:  # a window at a time (_windows)
      return _windows(prompts, max_new_tokens, config.max_seq_len, stops_S, run)
    if start_id is None:
      raise ValueError("an encoder-decoder needs start_id (or eos_id): the decoder's first input")
    inputs = _sources(config, prompts, max_new_tokens, start_id, source_len)
    return run(inputs, np.zeros(len(prompts), bool), 0, max_new_tokens, max_new_tokens)

  return sampling, jax.random.key(seed), shard, stops_S, blocks


def generate(params, config: ModelConfig, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, eos_id: int | None = None, mesh=None,
             rules=None, vocab_limit: int = 0, start_id: int | None = None,
             source_len: int | None = None, stop_ids: Sequence[int] = ()) -> list[np.ndarray]:
  """Up to max_new_tokens new tokens per row, each window in one jitted loop.

  Args:
    params: model params (sharded over `mesh` when one is given).
    config: the model config: decoder-only, or an encoder-decoder
      (model.encoder_layers > 0), whose prompts are its sources.
    prompts: one non-empty sequence of token ids per row; lengths may differ.
    max_new_tokens: tokens to draw per row (an encoder-decoder: at most
      model.max_seq_len); a row stops early after eos_id.
    temperature, top_k, top_p: see Sampling; temperature 0 is greedy.
    seed: the same seed gives the same tokens.
    eos_id: end-of-sequence id (kept as the row's last token), or None.
    stop_ids: more ids that end a row like eos_id (e.g. a newline's, for a
      generation that stops at the end of a line).
    mesh, rules: a device mesh and logical-axis rules (default config.DEFAULT_RULES)
      for the activations; None runs wherever params live.
    vocab_limit: if > 0, ids >= it are never drawn (the tokenizer's vocabulary size).
    start_id: an encoder-decoder's first decoder input (default eos_id).
    source_len: an encoder-decoder's sources are padded to this many tokens (one
      compilation for all calls); default the longest source.
  Returns:
    One int32 array of new tokens per row.
  """
  sampling, key, shard, stops, blocks = _prepare(
      params, config, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id, mesh,
      rules, vocab_limit, start_id, source_len, stop_ids)

  def run(inputs, done_B, i0, n, n_max):
    out_BM = _window(params, inputs, done_B, key, i0, n, sampling, stops, config=config,
                     n_max=n_max, shard=shard)
    yield np.asarray(out_BM)[:, :n]

  new = list(blocks(run))
  out_BM = np.concatenate(new, axis=1) if new else np.zeros((len(prompts), 0), np.int32)
  return [row[row >= 0] for row in out_BM]


def stream(params, config: ModelConfig, prompts: Sequence[Sequence[int]],
           max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, eos_id: int | None = None, mesh=None,
           rules=None, vocab_limit: int = 0, start_id: int | None = None,
           source_len: int | None = None, stop_ids: Sequence[int] = ()) -> Iterator[np.ndarray]:
  """Like generate(), but yields each step's tokens (B,) as drawn; -1 marks an ended row.
  Inputs are checked on the call, not on the first token."""
  sampling, key, shard, stops, blocks = _prepare(
      params, config, prompts, max_new_tokens, temperature, top_k, top_p, seed, eos_id, mesh,
      rules, vocab_limit, start_id, source_len, stop_ids)

  def run(inputs, done_B, i0, n, n_max):
    tok_B, done_B, cache = _first(params, inputs, done_B, key, i0, sampling, stops,
                                  config=config, n_max=n_max, shard=shard)
    yield np.asarray(tok_B)[:, None]
    for i in range(1, n):
      if np.all(done_B):
        return
      tok_B, done_B, cache = _next(params, cache, tok_B, done_B, key, i0 + i, sampling, stops,
                                   config=config, shard=shard)
      yield np.asarray(tok_B)[:, None]

  return (block_B1[:, 0] for block_B1 in blocks(run))
