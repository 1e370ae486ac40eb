"""Text generation: key/value-cache decoding with greedy, temperature, top-k and top-p sampling.

  python -m jaxlm.generate --workdir=DIR --prompt="ROMEO." [--max_new_tokens=200]
      [--temperature=1.0] [--top_k=0] [--top_p=1.0] [--seed=0] [--num_samples=1]
  python -m jaxlm.generate --workdir=DIR --prompt_file=prompts.txt   # one prompt a line

Dimension legend: B batch (prompts x samples), T prompt length, N new tokens, V vocab.

`generate()` runs the prefill and a `lax.while_loop` of decode steps in one
jitted call; `stream()` runs the same jitted step from Python and yields each
token as it is drawn. Step i draws with fold_in(key(seed), i), so the two agree
for a seed. A model sees at most model.max_seq_len tokens: when a row's context
is full, the rows go on from their last max_seq_len // 2 tokens (prefilled
again), so any number of tokens can be generated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import cli
from jaxlm.cli import fail
from jaxlm import checkpoint, sharding
from jaxlm import config as config_lib
from jaxlm.config import ModelConfig
from jaxlm.data import pipeline
from jaxlm.models import decode, layers, transformer


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


def _pick(logits_BV, done_B, key, step, sampling, eos_id):
  tok_B = sample_logits(jax.random.fold_in(key, step), logits_BV, *sampling)
  tok_B = jnp.where(done_B, -1, tok_B)  # -1: this row has ended
  return tok_B, done_B | (tok_B == eos_id)


def _prefill_pick(params, tokens_BT, lengths_B, done_B, key, step, sampling, eos_id, config,
                  cache_len):
  logits_BV, cache = decode.prefill(params, tokens_BT, lengths_B, config, cache_len)
  return (*_pick(logits_BV, done_B, key, step, sampling, eos_id), cache)


def _decode_pick(params, cache, tok_B, done_B, key, step, sampling, eos_id, config):
  logits_BV, cache = decode.decode_step(params, cache, jnp.maximum(tok_B, 0), config)
  return (*_pick(logits_BV, done_B, key, step, sampling, eos_id), cache)


def _scope(shard):
  """Activation sharding rules of shard = (mesh, rules) while tracing; none for None."""
  return sharding.activation_rules(*shard) if shard else contextlib.nullcontext()


# The streaming path: a jitted prefill, then one jitted step per token from Python.
@functools.partial(jax.jit, static_argnames=("config", "cache_len", "shard"))
def _first(params, tokens_BT, lengths_B, done_B, key, step, sampling, eos_id, *,
           config: ModelConfig, cache_len: int, shard):
  with _scope(shard):
    return _prefill_pick(params, tokens_BT, lengths_B, done_B, key, step, sampling, eos_id,
                         config, cache_len)


@functools.partial(jax.jit, static_argnames=("config", "shard"), donate_argnames="cache")
def _next(params, cache, tok_B, done_B, key, step, sampling, eos_id, *, config: ModelConfig,
          shard):
  with _scope(shard):
    return _decode_pick(params, cache, tok_B, done_B, key, step, sampling, eos_id, config)


# The batch path: prefill and the whole decode loop in one jitted call.
@functools.partial(jax.jit, static_argnames=("config", "n_max", "shard"))
def _window(params, tokens_BT, lengths_B, done_B, key, step0, n, sampling, eos_id, *,
            config: ModelConfig, n_max: int, shard):
  """Up to n (<= n_max) new tokens (B, n_max) from one prefill and a decode loop; -1 pads."""
  with _scope(shard):
    B, T = tokens_BT.shape
    tok_B, done_B, cache = _prefill_pick(params, tokens_BT, lengths_B, done_B, key, step0,
                                         sampling, eos_id, config, T + n_max - 1)
    out_BN = jnp.full((B, n_max), -1, jnp.int32).at[:, 0].set(tok_B)

    def cond(carry):
      i, _, done_B, _, _ = carry
      return (i < n) & ~jnp.all(done_B)

    def body(carry):
      i, tok_B, done_B, cache, out_BN = carry
      tok_B, done_B, cache = _decode_pick(params, cache, tok_B, done_B, key, step0 + i,
                                          sampling, eos_id, config)
      out_BN = jax.lax.dynamic_update_slice(out_BN, tok_B[:, None], (0, i))
      return i + 1, tok_B, done_B, cache, out_BN

    carry = (jnp.int32(1), tok_B, done_B, cache, out_BN)
    return jax.lax.while_loop(cond, body, carry)[-1]


def _windows(prompts, max_new_tokens: int, max_len: int, eos_id: int,
             run: Callable) -> Iterator[np.ndarray]:
  """Yields (B, k) blocks of new tokens (-1 once a row has ended), a context window at a time.

  A row's context starts as its prompt's last max_len tokens. When a row's
  context would exceed max_len, every row restarts from its last max_len // 2
  tokens (prefilled again). Until then, each row draws what it would alone;
  past it, rows of a ragged batch restart together, so a row may differ from
  its run alone. `run(tokens_BT, lengths_B, done_B, step0, n, n_max)` yields
  the blocks of one window: at most n tokens, from a cache sized for n_max
  (a static shape).
  """
  history = [np.asarray(p, np.int32) for p in prompts]
  start = [max(len(h) - max_len, 0) for h in history]
  done_B = np.zeros(len(history), bool)
  bucket = max(max_len // 8, 1)  # padded prompt lengths: few shapes, few compilations
  step = 0
  while step < max_new_tokens and not done_B.all():
    if any(len(h) - s > max_len for h, s in zip(history, start)):
      start = [max(len(h) - max(max_len // 2, 1), 0) for h in history]
    context = [h[s:] for h, s in zip(history, start)]
    T = min(-(-max(len(c) for c in context) // bucket) * bucket, max_len)
    tokens_BT = np.zeros((len(context), T), np.int32)
    for b, c in enumerate(context):
      tokens_BT[b, T - len(c):] = c
    lengths_B = np.array([len(c) for c in context], np.int32)
    n_max = min(max_new_tokens, max_len - T + 1)  # the last token drawn needs no slot
    n = min(max_new_tokens - step, n_max)
    for block_BK in run(tokens_BT, lengths_B, done_B.copy(), step, n, n_max):
      yield block_BK
      history = [np.concatenate([h, row[row >= 0]]) for h, row in zip(history, block_BK)]
      done_B |= ((block_BK < 0) | (block_BK == eos_id)).any(axis=1)
      step += block_BK.shape[1]


def _prepare(config: ModelConfig, prompts, max_new_tokens, temperature, top_k, top_p,
             seed, eos_id, mesh, rules, vocab_limit=0):
  """Checks inputs at the boundary; returns what both drivers pass to the jitted steps."""
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
  eos = jnp.int32(-1 if eos_id is None else eos_id)
  return sampling, jax.random.key(seed), shard, eos


def generate(params, config: ModelConfig, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, eos_id: int | None = None, mesh=None,
             rules=None, vocab_limit: int = 0) -> list[np.ndarray]:
  """Continues each prompt by up to max_new_tokens tokens, in one jitted loop per window.

  Args:
    params: model params (sharded over `mesh` when one is given).
    config: the model config.
    prompts: one non-empty sequence of token ids per row; lengths may differ.
    max_new_tokens: tokens to draw per row; a row stops early after eos_id.
    temperature, top_k, top_p: see Sampling; temperature 0 is greedy.
    seed: the same seed gives the same tokens.
    eos_id: end-of-sequence id (kept as the row's last token), or None.
    vocab_limit: if > 0, ids >= it are never drawn (the tokenizer's vocabulary size).
    mesh, rules: a device mesh and logical-axis rules (default config.DEFAULT_RULES)
      for the activations; None runs wherever params live.
  Returns:
    One int32 array of new tokens per row.
  """
  sampling, key, shard, eos = _prepare(config, prompts, max_new_tokens, temperature,
                                       top_k, top_p, seed, eos_id, mesh, rules, vocab_limit)

  def run(tokens_BT, lengths_B, done_B, step0, n, n_max):
    out_BN = _window(params, tokens_BT, lengths_B, done_B, key, step0, n, sampling, eos,
                     config=config, n_max=n_max, shard=shard)
    yield np.asarray(out_BN)[:, :n]

  blocks = list(_windows(prompts, max_new_tokens, config.max_seq_len, int(eos), run))
  out_BN = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(prompts), 0), np.int32)
  return [row[row >= 0] for row in out_BN]


def stream(params, config: ModelConfig, prompts: Sequence[Sequence[int]],
           max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, eos_id: int | None = None, mesh=None,
           rules=None, vocab_limit: int = 0) -> Iterator[np.ndarray]:
  """Like generate(), but yields each step's tokens (B,) as drawn; -1 marks an ended row.

  Inputs are checked on the call, not on the first token.
  """
  sampling, key, shard, eos = _prepare(config, prompts, max_new_tokens, temperature,
                                       top_k, top_p, seed, eos_id, mesh, rules, vocab_limit)

  def run(tokens_BT, lengths_B, done_B, step0, n, n_max):
    tok_B, done_B, cache = _first(params, tokens_BT, lengths_B, done_B, key, step0, sampling,
                                  eos, config=config, cache_len=tokens_BT.shape[1] + n_max - 1,
                                  shard=shard)
    yield np.asarray(tok_B)[:, None]
    for i in range(1, n):
      if np.all(done_B):
        return
      tok_B, done_B, cache = _next(params, cache, tok_B, done_B, key, step0 + i, sampling, eos,
                                   config=config, shard=shard)
      yield np.asarray(tok_B)[:, None]

  blocks = _windows(prompts, max_new_tokens, config.max_seq_len, int(eos), run)
  return (block_B1[:, 0] for block_B1 in blocks)


def load_run(workdir: str):
  """(config, tokenizer, mesh, params, step) of a trained run's latest checkpoint.

  Params are sharded by the run's mesh when this host has its devices, else
  over the local devices along the data axis (replicated weights).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--workdir={workdir} has no config.json; expected the directory "
                            "of a run made by `python -m jaxlm.main`")
  with open(path) as f:
    config = config_lib.loads(f.read())
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}; "
                            "expected a run that has saved at least one step")
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  try:
    mesh = sharding.make_mesh(config.mesh)
  except config_lib.ConfigError:
    mesh = sharding.make_mesh(config_lib.MeshConfig(rules=config.mesh.rules))
  specs = transformer.param_specs(config.model)
  dtype = jnp.dtype(config.model.param_dtype)
  shardings = sharding.tree_shardings(specs, mesh, config.mesh.rules)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype, sharding=sh),
                          specs, shardings, is_leaf=layers.is_spec)
  params, step = checkpoint.restore_params(workdir, abstract)
  return config, tok, mesh, params, step


# ---------------------------------------------------------------------------
# Command line.


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str]:
  """The prompt texts of --prompt or --prompt_file (one a line; blank lines skipped)."""
  if (prompt is None) == (prompt_file is None):
    raise ValueError("expected exactly one of --prompt and --prompt_file")
  if prompt is not None:
    if not prompt:
      raise ValueError("--prompt is empty; expected some text to continue")
    return [prompt]
  if not os.path.isfile(prompt_file):
    raise FileNotFoundError(f"--prompt_file={prompt_file} is not a file; expected a text file "
                            "with one prompt a line")
  with open(prompt_file, encoding="utf-8") as f:
    prompts = [line.rstrip("\n") for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"--prompt_file={prompt_file} has no prompts; expected one a line")
  return prompts


def print_stream(tokens: Iterator[np.ndarray], tok, out=sys.stdout) -> list[int]:
  """Writes row 0's text to `out` as its tokens arrive; returns the ids."""
  ids: list[int] = []
  shown = ""
  for tok_B in tokens:
    if tok_B[0] < 0:
      break
    ids.append(int(tok_B[0]))
    # Hold back a trailing U+FFFD: it may be the first bytes of a character still to come.
    text = tok.decode(ids).rstrip("\ufffd")
    if text.startswith(shown):
      out.write(text[len(shown):])
      out.flush()
      shown = text
  text = tok.decode(ids)
  out.write(text[len(shown):] + "\n")
  out.flush()
  return ids


def main(argv):
  from absl import flags
  F = flags.FLAGS
  cli.start(argv)
  try:
    if not F.workdir:
      raise ValueError("--workdir is required: the directory of a trained run")
    if F.num_samples < 1:
      raise ValueError(f"--num_samples={F.num_samples} is invalid: expected an integer >= 1")
    if F.max_new_tokens < 1:
      raise ValueError(f"--max_new_tokens={F.max_new_tokens} is invalid: expected an integer "
                       ">= 1")
    Sampling(F.temperature, F.top_k, F.top_p)  # checks the flags before the slow load
    texts = read_prompts(F.prompt, F.prompt_file)
    config, tok, mesh, params, _ = load_run(F.workdir)
  except (ValueError, FileNotFoundError) as e:
    fail(str(e))
  prompts = [tok.encode(t) for t in texts for _ in range(F.num_samples)]
  kw = dict(temperature=F.temperature, top_k=F.top_k, top_p=F.top_p, seed=F.seed,
            eos_id=tok.eos_id, mesh=mesh, rules=config.mesh.rules, vocab_limit=tok.vocab_size)
  if len(prompts) == 1:
    sys.stdout.write(texts[0])
    print_stream(stream(params, config.model, prompts, F.max_new_tokens, **kw), tok)
    return
  outs = generate(params, config.model, prompts, F.max_new_tokens, **kw)
  for i, ids in enumerate(outs):
    p, s = divmod(i, F.num_samples)
    print(f"=== prompt {p + 1}, sample {s + 1} ===\n{texts[p]}{tok.decode(ids)}", flush=True)




def _define_flags():
  from absl import flags
  flags.DEFINE_string("workdir", None, "Directory of a trained run (config.json, checkpoints/).")
  flags.DEFINE_string("prompt", None, "Text to continue.")
  flags.DEFINE_string("prompt_file", None, "Text file of prompts, one a line (a batch).")
  flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
  flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.")
  flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 disables.")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1]; 1 disables.")
  flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same text.")
  flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
