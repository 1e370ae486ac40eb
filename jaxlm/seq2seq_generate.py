"""Generation from an encoder-decoder: encode once, then decode from a KV cache; restoration CLI.

  python -m jaxlm.seq2seq_generate --workdir=DIR --text="but soft what light through yonder"
  python -m jaxlm.seq2seq_generate --workdir=DIR --eval_lines=0 [--show=8]   # all test lines

Dimension legend: B batch, S source length, N new tokens, V vocab.

`generate()` runs the encoder, the cross-attention keys and values of every
decoder layer, and a `lax.while_loop` of cached decoder steps in one jitted
call, drawing tokens with jaxlm.generate's sampling (temperature 0 is greedy;
step i draws with fold_in(key(seed), i), as there). `evaluate()` scores greedy
restorations of test lines against the originals, beside baselines that copy
the source unchanged or capitalize its first letter and "i".
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import checkpoint, cli
from jaxlm import config as config_lib
from jaxlm import generate as lm_generate
from jaxlm.cli import fail
from jaxlm.config import Config, ModelConfig
from jaxlm.data import finetune, pipeline
from jaxlm.models import encoder_decoder, layers


@functools.partial(jax.jit, static_argnames=("config", "n_max"))
def _generate(params, src_BS, src_segments_BS, key, sampling, start_id, eos_id, *,
              config: ModelConfig, n_max: int):
  """Up to n_max new tokens (B, n_max) per row, -1 after a row's eos."""
  B = src_BS.shape[0]
  memory_BSD = encoder_decoder.encode(params, src_BS, config, src_segments_BS)
  cache = encoder_decoder.init_cache(params, memory_BSD, config, n_max, src_segments_BS)

  def cond(carry):
    i, _, done_B, _, _ = carry
    return (i < n_max) & ~jnp.all(done_B)

  def body(carry):
    i, tok_B, done_B, cache, out_BN = carry
    logits_BV, cache = encoder_decoder.decode_step(params, cache, jnp.maximum(tok_B, 0), config)
    tok_B = lm_generate.sample_logits(jax.random.fold_in(key, i), logits_BV, *sampling)
    tok_B = jnp.where(done_B, -1, tok_B)  # -1: this row has ended
    out_BN = jax.lax.dynamic_update_slice(out_BN, tok_B[:, None], (0, i))
    return i + 1, tok_B, done_B | (tok_B == eos_id), cache, out_BN

  carry = (jnp.int32(0), jnp.full((B,), start_id, jnp.int32), jnp.zeros((B,), bool), cache,
           jnp.full((B, n_max), -1, jnp.int32))
  return jax.lax.while_loop(cond, body, carry)[-1]


def generate(params, config: ModelConfig, sources: Sequence[Sequence[int]],
             max_new_tokens: int, *, start_id: int, eos_id: int | None = None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             vocab_limit: int = 0, source_len: int | None = None) -> list[np.ndarray]:
  """The decoder's output for each source, up to max_new_tokens tokens (eos kept last).

  Args:
    params: encoder-decoder params (encoder_decoder.init or a trained run's).
    config: the model config (model.encoder_layers > 0).
    sources: one non-empty sequence of token ids per row; lengths may differ.
    max_new_tokens: at most model.max_seq_len (the decoder's positions).
    start_id: the decoder's first input (the task's start token: the eos id).
    eos_id: a row ends after writing it; None: rows run to max_new_tokens.
    temperature, top_k, top_p, vocab_limit: jaxlm.generate.Sampling; temperature 0
      (the default) is greedy; vocab_limit > 0 never writes ids at or above it.
    seed: the same seed gives the same tokens.
    source_len: pad sources to this many tokens (one compilation for all calls);
      default the longest source.
  """
  c = config
  if c.encoder_layers < 1:
    raise ValueError(f"model.encoder_layers={c.encoder_layers}: expected an encoder-decoder "
                     "config (> 0); use jaxlm.generate for a decoder-only model")
  if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or \
      not 1 <= max_new_tokens <= c.max_seq_len:
    raise ValueError(f"max_new_tokens={max_new_tokens} is invalid: expected an integer in "
                     f"[1, model.max_seq_len={c.max_seq_len}]")
  if len(sources) == 0:
    raise ValueError("no sources given; expected a list of token-id sequences, one per row")
  S = max(len(s) for s in sources) if source_len is None else source_len
  for i, ids in enumerate(np.asarray(s) for s in sources):
    if ids.ndim != 1 or not 1 <= ids.size <= min(S, c.max_seq_len):
      raise ValueError(f"source {i} has shape {ids.shape}; expected 1 to "
                       f"{min(S, c.max_seq_len)} token ids (source_len, model.max_seq_len)")
    bad = ids[(ids < 0) | (ids >= c.vocab_size)]
    if bad.size:
      raise ValueError(f"source {i} holds token id {int(bad[0])}; expected 0 <= id < "
                       f"model.vocab_size={c.vocab_size}")
  src_BS = np.zeros((len(sources), S), np.int32)
  for b, ids in enumerate(sources):
    src_BS[b, :len(ids)] = ids
  segments_BS = (np.arange(S)[None, :] < np.array([len(s) for s in sources])[:, None])
  sampling = lm_generate.Sampling(temperature, top_k, top_p, vocab_limit).arrays()
  out_BN = _generate(params, src_BS, segments_BS.astype(np.int32), jax.random.key(seed),
                     sampling, jnp.int32(start_id), jnp.int32(-1 if eos_id is None else eos_id),
                     config=c, n_max=int(max_new_tokens))
  return [row[row >= 0] for row in np.asarray(out_BN)]


def restore(params, config: Config, tok, lines: Sequence[str], batch_size: int = 256,
            **sampling) -> list[str]:
  """Each line's restoration: unpunctuated, encoded, generated (greedy by default), decoded."""
  S, T = config.data.source_len or config.data.seq_len, config.data.seq_len
  out = []
  for start in range(0, len(lines), batch_size):
    chunk = [tok.encode(finetune.unpunctuate(line)) for line in lines[start:start + batch_size]]
    ids = generate(params, config.model, chunk, T, start_id=tok.eos_id, eos_id=tok.eos_id,
                   vocab_limit=tok.vocab_size, source_len=S, **sampling)
    out.extend(tok.decode(row) for row in ids)
  return out


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance (insertions, deletions, substitutions of characters)."""
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def score(outputs: Sequence[str], targets: Sequence[str]) -> dict:
  """exact_match (fraction of lines) and char_accuracy (1 - edits / target characters)."""
  edits = sum(edit_distance(o, t) for o, t in zip(outputs, targets))
  chars = max(sum(len(t) for t in targets), 1)
  return {"exact_match": float(np.mean([o == t for o, t in zip(outputs, targets)])),
          "char_accuracy": 1.0 - edits / chars}


def capitalize(source: str) -> str:
  """A rule-based baseline: capitalize the line's first letter and the word "i"."""
  text = " ".join("I" if w == "i" else w for w in source.split(" "))
  return text[:1].upper() + text[1:]


def evaluate(params, config: Config, tok, n_lines: int = 0, batch_size: int = 256) -> dict:
  """Greedy restorations of the test lines that fit the windows (n_lines of them spread
  evenly; 0: all) scored against the originals, beside two baselines: copying the
  source, and capitalize().

  Returns {model, copy, capitalize: score(); lines; examples: [(source, output, target)]}.
  """
  from jaxlm.tasks import seq2seq  # pylint: disable=import-outside-toplevel
  S, T = seq2seq.source_len(config), config.data.seq_len
  pairs = [(s, t) for s, t in finetune.restore_pairs("validation")  # those the task evaluates
           if seq2seq.encode_pair(tok, s, t, S, T) is not None]
  if 0 < n_lines < len(pairs):
    pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, n_lines).round().astype(int)]
  sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
  outputs = restore(params, config, tok, sources, batch_size)
  return {"model": score(outputs, targets), "copy": score(sources, targets),
          "capitalize": score([capitalize(s) for s in sources], targets),
          "lines": len(pairs), "examples": list(zip(sources, outputs, targets))}


def load_run(workdir: str):
  """(config, tokenizer, params, step) of a trained seq2seq run's latest checkpoint."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--workdir={workdir} has no config.json; expected the directory "
                            "of a run made by `python -m jaxlm.main`")
  with open(path) as f:
    config = config_lib.loads(f.read())
  if config.task.kind != "seq2seq":
    raise ValueError(f"--workdir={workdir} is a task.kind={config.task.kind!r} run; expected "
                     "a seq2seq run (use jaxlm.generate for language models)")
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  dtype = jnp.dtype(config.model.param_dtype)
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype),
                          encoder_decoder.param_specs(config.model), is_leaf=layers.is_spec)
  params, step = checkpoint.restore_params(workdir, abstract)
  return config, tok, params, step


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  F = flags.FLAGS
  cli.start(argv)
  try:
    if not F.workdir:
      raise ValueError("--workdir is required: the directory of a trained seq2seq run")
    if (F.text is None) == (F.eval_lines is None):
      raise ValueError("expected exactly one of --text and --eval_lines")
    if F.eval_lines is not None and F.eval_lines < 0:
      raise ValueError(f"--eval_lines={F.eval_lines} is invalid: expected >= 0 (0: all)")
    if F.text is not None and not finetune.unpunctuate(F.text):
      raise ValueError(f"--text={F.text!r} has no words once unpunctuated; expected a line")
    config, tok, params, step = load_run(F.workdir)
  except (ValueError, FileNotFoundError) as e:
    fail(str(e))
  if F.text is not None:
    try:
      print(restore(params, config, tok, [F.text], temperature=F.temperature, seed=F.seed)[0])
    except ValueError as e:
      fail(f"--text: {e}")
    return
  result = evaluate(params, config, tok, F.eval_lines)
  print(f"step {step}, {result['lines']} test lines (greedy):")
  for name in ("model", "copy", "capitalize"):
    r = result[name]
    print(f"  {name:10s}  exact match {r['exact_match']:.4f}  char accuracy "
          f"{r['char_accuracy']:.4f}")
  examples = result["examples"]
  for i in np.linspace(0, len(examples) - 1, min(F.show, len(examples))).round().astype(int):
    source, output, target = examples[i]
    print(f"  source: {source}\n  output: {output}\n  target: {target}")


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("workdir", None, "Directory of a trained seq2seq run.")
  flags.DEFINE_string("text", None, "A line to restore (lowercased and unpunctuated first).")
  flags.DEFINE_integer("eval_lines", None, "Score this many test lines (0: all).")
  flags.DEFINE_integer("show", 8, "Example restorations (spread over the lines) printed with "
                       "--eval_lines.")
  flags.DEFINE_float("temperature", 0.0, "Softmax temperature of --text; 0 is greedy.")
  flags.DEFINE_integer("seed", 0, "Random seed of --text sampling.")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(main)
