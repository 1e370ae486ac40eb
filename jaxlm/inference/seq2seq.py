"""Scoring an encoder-decoder's punctuation restoration (task.kind=seq2seq).

Behind `python -m jaxlm.seq2seq_generate`. `restore()` lowercases and
unpunctuates lines, generates their restorations (greedy by default) with the
one generation loop (inference/generate.py), and decodes them; `evaluate()`
scores greedy restorations of the test lines against the originals, beside
baselines that copy the source unchanged or capitalize its first letter and
"i".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxlm.config import Config
from jaxlm.data import finetune
from jaxlm.inference.generate import generate
from jaxlm.tasks import seq2seq


def restore(params, config: Config, tok, lines: Sequence[str], batch_size: int = 256,
            temperature: float = 0.0, **sampling) -> list[str]:
  """Each line's restoration: unpunctuated, encoded, generated (greedy by default), decoded."""
  S, T = seq2seq.source_len(config), config.data.seq_len
  out = []
  for start in range(0, len(lines), batch_size):
    chunk = [tok.encode(finetune.unpunctuate(line)) for line in lines[start:start + batch_size]]
    ids = generate(params, config.model, chunk, T, eos_id=tok.eos_id, vocab_limit=tok.vocab_size,
                   source_len=S, temperature=temperature, **sampling)  # start_id: eos_id
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
