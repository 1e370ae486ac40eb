"""Passage classification: the decoder's residual stream, pooled, into a linear head.

Dimension legend (docs/architecture.md): B batch, T length, D model width, Y classes.

The head reads the final-normed residual stream at the last real token
(`task.pooling=last`, what a causal model has seen all of the passage at) or
its mean over the real tokens (`mean`). Starting from a pretrained run
(`init.from_workdir`), the trunk's params come from it and the head starts at
zero, so the first step's loss is exactly log C.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm.data import finetune
from jaxlm.models import layers, transformer
from jaxlm.params import ParamSpec, zeros
from jaxlm.tasks import lm

BATCH_KEYS = ("inputs", "segment_ids", "positions", "labels", "weights")


def class_logits(params, batch: dict, config: Config, pooling: str) -> jax.Array:
  """Float32 logits (B, Y) of each row's passage."""
  m = config.model
  mask_BT = batch["segment_ids"] > 0
  tables = transformer.device_tables(params, m, batch["inputs"].shape, output=False)
  x_BTD = transformer.trunk(tables, batch["inputs"], m, positions_BT=batch["positions"],
                            segment_ids_BT=batch["segment_ids"])
  x_BTD = layers.norm(params["final_norm"], x_BTD, m.norm, m.norm_eps).astype(jnp.float32)
  if pooling == "last":
    last_B = jnp.maximum(jnp.sum(mask_BT, axis=1) - 1, 0)
    pooled_BD = jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)[:, 0]
  else:
    w_BT = mask_BT.astype(jnp.float32)
    pooled_BD = jnp.sum(x_BTD * w_BT[..., None], 1) / jnp.maximum(w_BT.sum(1), 1.0)[:, None]
  head = params["head"]
  return pooled_BD @ head["w"].astype(jnp.float32) + head["b"].astype(jnp.float32)


@dataclasses.dataclass
class Classification(lm.RowsTask):
  """Genre of a passage (comedy, tragedy, history, poem); reports accuracy."""
  config: Config
  samples_text: bool = False
  n_classes: int = len(finetune.GENRES)

  def param_specs(self) -> dict:
    d, y = self.config.model.d_model, self.n_classes
    return {**transformer.param_specs(self.config.model),
            "head": {"w": ParamSpec((d, y), ("embed", "classes"), zeros, decay=True),
                     "b": ParamSpec((y,), ("classes",), zeros)}}

  def flops_per_token(self) -> float:
    m = self.config.model  # the trunk's; no vocabulary projection (the head's is negligible)
    return (transformer.flops_per_token(m, self.config.data.seq_len)["total"]
            - 6.0 * m.vocab_size * m.d_model)

  def batch_shapes(self, batch_size: int) -> dict:
    T = self.config.data.seq_len
    return {k: ((batch_size,) if k in ("labels", "weights") else (batch_size, T),
                np.float32 if k == "weights" else np.int32) for k in BATCH_KEYS}

  def _nll(self, params, batch):
    logits_BY = class_logits(params, batch, self.config, self.config.task.pooling)
    nll_B = jax.nn.logsumexp(logits_BY, -1) - jnp.take_along_axis(
        logits_BY, batch["labels"][:, None], -1)[:, 0]
    return nll_B, logits_BY

  def loss(self, params, batch: dict):
    nll_B, _ = self._nll(params, batch)
    w_B = batch["weights"]
    return jnp.sum(nll_B * w_B) / jnp.maximum(jnp.sum(w_B), 1.0), {}

  def loss_weight(self, batch: dict):
    return jnp.sum(batch["weights"])

  def eval_sums(self, params, batch: dict, token_bytes=None) -> dict:
    del token_bytes
    nll_B, logits_BY = self._nll(params, batch)
    w_B = batch["weights"]
    correct_B = (jnp.argmax(logits_BY, -1) == batch["labels"]).astype(jnp.float32) * w_B
    onehot_BY = jax.nn.one_hot(batch["labels"], self.n_classes) * w_B[:, None]
    return {"nll": jnp.sum(nll_B * w_B), "examples": jnp.sum(w_B),
            "correct": jnp.sum(correct_B),
            "class_correct": jnp.sum(onehot_BY * correct_B[:, None], 0),
            "class_examples": jnp.sum(onehot_BY, 0)}

  def summarize(self, sums: dict) -> dict:
    n = max(float(sums["examples"]), 1.0)
    per_class = np.asarray(sums["class_correct"]) / np.maximum(sums["class_examples"], 1.0)
    present = np.asarray(sums["class_examples"]) > 0
    return {"val_loss": float(sums["nll"]) / n, "val_accuracy": float(sums["correct"]) / n,
            "val_balanced_accuracy": float(per_class[present].mean()) if present.any() else 0.0}

  def rows(self, split: str, tok):
    tokens, lengths, labels = finetune.genre_passages(split, tok, self.config.data.seq_len)
    return lambda i: _example(tokens[i], int(lengths[i]), int(labels[i])), len(labels)


def _example(tokens, length: int, label: int) -> dict:
  T = len(tokens)
  valid = np.arange(T) < length
  return {"inputs": np.asarray(tokens, np.int32), "segment_ids": valid.astype(np.int32),
          "positions": np.where(valid, np.arange(T), 0).astype(np.int32),
          "labels": np.int32(label), "weights": np.float32(1.0)}
