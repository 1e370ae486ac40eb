"""Sequence to sequence: restore a line's punctuation and capitals with an encoder-decoder.

Dimension legend (docs/architecture.md): B batch, S source length
(data.source_len), T target length (data.seq_len), V vocab.

A row is one (source, target) pair of jaxlm.data.finetune.restore_pairs: the
source's tokens, right-padded to S (src_segments 1 on tokens, 0 on padding),
and the teacher-forced target: decoder inputs [start] + target and next-token
targets target + [eos], right-padded to T with weight 0. The start token is
the tokenizer's eos id (it never occurs inside a text, so it is free to mean
"begin" as decoder input). Pairs whose source or target does not fit are
skipped. Exact match counts a row when every target is the argmax of its
logits: under teacher forcing that is exactly when greedy decoding writes the
target and stops (as in jaxlm/tasks/sft.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm import params as params_lib
from jaxlm.data import finetune
from jaxlm.models import encoder_decoder, transformer
from jaxlm.tasks import lm

BATCH_KEYS = ("src", "src_segments", "tgt_inputs", "tgt_targets", "tgt_weights")


def source_len(config: Config) -> int:
  """Encoder tokens per row: data.source_len, or data.seq_len when that is 0."""
  return config.data.source_len or config.data.seq_len


def encode_pair(tok, source: str, target: str, src_len: int, tgt_len: int) -> dict | None:
  """The row of one pair (see the module docstring), or None if it does not fit."""
  src, tgt = tok.encode(source), tok.encode(target)
  if len(src) > src_len or len(tgt) + 1 > tgt_len:
    return None
  pad = lambda x, n, dtype=np.int32: np.pad(np.asarray(x, dtype), (0, n - len(x)))
  return {"src": pad(src, src_len), "src_segments": pad(np.ones(len(src)), src_len),
          "tgt_inputs": pad([tok.eos_id, *tgt], tgt_len),
          "tgt_targets": pad([*tgt, tok.eos_id], tgt_len),
          "tgt_weights": pad(np.ones(len(tgt) + 1), tgt_len, np.float32)}


@functools.lru_cache(maxsize=4)
def encoded_rows(split: str, tok, src_len: int, tgt_len: int) -> dict:
  """Every fitting pair of `split` as stacked arrays {key: (P, ...)}, in corpus order."""
  rows = [encode_pair(tok, s, t, src_len, tgt_len) for s, t in finetune.restore_pairs(split)]
  rows = [r for r in rows if r is not None]
  if not rows:
    raise ValueError(f"no {split} line fits data.source_len={src_len} and data.seq_len="
                     f"{tgt_len}; raise them (a line of verse is up to ~80 bytes)")
  return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def target_nll(params, batch: dict, config: Config):
  """Per-token cross-entropy (B, T) of the targets, from the decoder's residual stream."""
  m = config.model
  rows, S = batch["src"].shape  # the table is looked up for the source and the target
  params = transformer.device_tables(params, m, (rows, S + batch["tgt_inputs"].shape[1]))
  memory_BSD = encoder_decoder.encode(params, batch["src"], m, batch["src_segments"])
  x_BTD = encoder_decoder.decoder_trunk(params, memory_BSD, batch["tgt_inputs"], m,
                                        src_segments_BS=batch["src_segments"])
  return transformer.next_token_nll(params, x_BTD, batch["tgt_targets"], m,
                                    config.train.loss_chunk)


@dataclasses.dataclass
class Seq2Seq(lm.RowsTask):
  """Restore punctuation and capitals of a line; reports loss, token accuracy, exact match."""
  config: Config
  samples_text: bool = False  # the end-of-run sample continues a prompt: not this model's job

  def param_specs(self) -> dict:
    return encoder_decoder.param_specs(self.config.model)

  def flops_per_token(self) -> float:
    """Per target token: the decoder's (with cross-attention) plus the encoder's work on
    the source, counted as in transformer.flops_per_token (6 per weight per token;
    attention 6*L*T*D causal, 12*L*S*D over the whole source)."""
    m, S, T = self.config.model, source_len(self.config), self.config.data.seq_len
    specs = self.param_specs()
    enc, dec = (params_lib.param_count(specs[k])["total"] for k in ("encoder", "decoder"))
    decoder = 6.0 * (dec + m.vocab_size * m.d_model) + 6.0 * m.n_layers * T * m.d_model \
        + 12.0 * m.n_layers * S * m.d_model
    encoder = (6.0 * enc + 12.0 * m.encoder_layers * S * m.d_model) * S / T
    return decoder + encoder

  def batch_shapes(self, batch_size: int) -> dict:
    S, T = source_len(self.config), self.config.data.seq_len
    return {k: ((batch_size, S if k.startswith("src") else T),
                np.float32 if k == "tgt_weights" else np.int32) for k in BATCH_KEYS}

  def loss(self, params, batch: dict):
    nll_BT = target_nll(params, batch, self.config)
    w_BT = batch["tgt_weights"]
    return jnp.sum(nll_BT * w_BT) / jnp.maximum(jnp.sum(w_BT), 1.0), {}

  def loss_weight(self, batch: dict):
    return jnp.sum(batch["tgt_weights"])

  def eval_sums(self, params, batch: dict, token_bytes=None) -> dict:
    del token_bytes
    logits_BTV = encoder_decoder.apply(params, batch["src"], batch["tgt_inputs"],
                                       self.config.model, src_segments_BS=batch["src_segments"])
    return lm.teacher_forced_sums(logits_BTV, batch["tgt_targets"], batch["tgt_weights"])

  def summarize(self, sums: dict) -> dict:
    tokens, examples = max(float(sums["tokens"]), 1.0), max(float(sums["examples"]), 1.0)
    return {"val_loss": float(sums["nll"]) / tokens,
            "val_token_accuracy": float(sums["correct"]) / tokens,
            "val_exact_match": float(sums["exact"]) / examples}

  def rows(self, split: str, tok):
    rows = encoded_rows(split, tok, source_len(self.config), self.config.data.seq_len)
    return lambda i: {k: v[i] for k, v in rows.items()}, len(rows["src"])
