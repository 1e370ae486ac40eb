"""Supervised fine-tuning: next-token loss on the response only, exact-match accuracy.

Dimension legend (docs/architecture.md): B batch, T length, V vocab.

Each row is one (prompt, response) pair: the prompt's tokens (cut from the
left when too long), the response's and end-of-sequence, padded to
data.seq_len + 1. Only the response and the end-of-sequence token are targets
(weight 1); the prompt is context. Exact match counts a row when every target
is the argmax of its logits: under teacher forcing that is exactly when greedy
decoding from the prompt writes the response and stops.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxlm.config import Config
from jaxlm.data import finetune
from jaxlm.models import transformer
from jaxlm.tasks import lm


def encode_pair(tok, prompt: str, response: str, seq_len: int, max_response: int) -> dict:
  """The packed row of one (prompt, response) pair: inputs, targets, weights on the response."""
  answer = list(tok.encode(response)[:max_response]) + [tok.eos_id]
  room = seq_len + 1 - len(answer)
  if room < 1:
    raise ValueError(f"data.seq_len={seq_len} leaves no room for a prompt before a "
                     f"{len(answer)}-token response; raise data.seq_len or lower "
                     "task.max_response_tokens")
  context = list(tok.encode(prompt))[-room:]
  seq = np.asarray(context + answer, np.int32)
  idx = np.arange(seq_len)
  valid = idx < len(seq) - 1
  inputs, targets = (np.pad(x, (0, seq_len + 1 - len(seq))) for x in (seq[:-1], seq[1:]))
  weights = ((idx >= len(context) - 1) & valid).astype(np.float32)
  return {"inputs": inputs, "targets": targets, "segment_ids": valid.astype(np.int32),
          "positions": np.where(valid, idx, 0).astype(np.int32), "weights": weights}


@functools.lru_cache(maxsize=4)
def _encoded(split: str, tok, seq_len: int, max_response: int) -> list[dict]:
  return [encode_pair(tok, p, r, seq_len, max_response)
          for p, r in finetune.speaker_examples(split)]


@dataclasses.dataclass
class SupervisedFineTuning(lm.RowsTask, lm.LanguageModeling):
  """Name the speaker of a speech; reports response loss and exact-match accuracy.

  The model, batch layout and loss are language modeling's (the weights select
  the response); the data and the evaluation are its own.
  """
  config: Config
  samples_text: bool = True

  def eval_sums(self, params, batch: dict, token_bytes=None) -> dict:
    del token_bytes
    logits_BTV = transformer.apply(params, batch["inputs"], self.config.model,
                                   positions_BT=batch["positions"],
                                   segment_ids_BT=batch["segment_ids"])
    return lm.teacher_forced_sums(logits_BTV, batch["targets"], batch["weights"])

  def summarize(self, sums: dict) -> dict:
    return {"val_loss": float(sums["nll"]) / max(float(sums["tokens"]), 1.0),
            "val_exact_match": float(sums["exact"]) / max(float(sums["examples"]), 1.0)}

  def rows(self, split: str, tok):
    rows = _encoded(split, tok, self.config.data.seq_len, self.config.task.max_response_tokens)
    return rows.__getitem__, len(rows)
