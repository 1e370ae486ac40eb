"""Next-token language modeling on the packed corpus, or a mixture of corpora: pretraining.

With data.mixture, every batch carries `sources` (B, T), each token's source;
evaluation sums come per source and summarize() reports `val_loss/NAME` and
`val_bpb/NAME` for each, and as val_loss and val_bpb their mean under the
mixture's weights (what the training loss estimates)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import config as config_lib
from jaxlm.config import Config
from jaxlm.data import mixture, pipeline
from jaxlm.models import transformer

BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")


def token_nll(params, batch: dict, config: Config):
  """Per-token next-token cross-entropy (B, T), the logits' log-sum-exp (B, T), and the
  model's statistics (the layers' largest attention scores, the output logits' RMS)."""
  segments = batch["segment_ids"] if config.data.mask_documents else None
  tables = transformer.device_tables(params, config.model, batch["inputs"].shape)
  x_BTD, stats = transformer.trunk(tables, batch["inputs"], config.model, with_stats=True,
                                   positions_BT=batch["positions"], segment_ids_BT=segments)
  nll_BT, lse_BT = transformer.next_token_nll(tables, x_BTD, batch["targets"], config.model,
                                              config.train.loss_chunk, return_lse=True)
  stats = {**stats, "logits_rms": transformer.logits_rms(tables, x_BTD, config.model)}
  return nll_BT, lse_BT, stats


def by_source(x_BT, sources_BT, n_sources: int):
  """Sums of x_BT over the tokens of each source: (n_sources,)."""
  return jax.ops.segment_sum(x_BT.reshape(-1), sources_BT.reshape(-1), num_segments=n_sources)


def loss_fn(params, batch: dict, config: Config, sources: tuple[str, ...] = ()):
  """Mean next-token cross-entropy over weighted targets (plus train.z_loss times the
  mean squared log-sum-exp of the logits: PaLM's z-loss, which keeps the softmax's
  normalizer near 1), and the model's statistics (with the z-loss term, if on; with a
  mixture's source names, `loss/NAME` and `tokens/NAME`: each source's mean loss in the
  batch and its weighted target tokens, by which microbatches weight it)."""
  nll_BT, lse_BT, stats = token_nll(params, batch, config)
  weights_BT = batch["weights"]
  mean = lambda x_BT: jnp.sum(x_BT * weights_BT) / jnp.maximum(jnp.sum(weights_BT), 1.0)
  loss = mean(nll_BT)
  if sources:
    nll_S, tokens_S = (by_source(x_BT, batch["sources"], len(sources))
                       for x_BT in (nll_BT * weights_BT, weights_BT))
    stats.update({f"loss/{name}": nll_S[s] / jnp.maximum(tokens_S[s], 1.0)
                  for s, name in enumerate(sources)})
    stats.update({f"tokens/{name}": tokens_S[s] for s, name in enumerate(sources)})
  if config.train.z_loss:
    stats["z_loss"] = config.train.z_loss * mean(jnp.square(lse_BT))
    loss = loss + stats["z_loss"]
  return loss, stats


def summarize_eval(sums: dict) -> dict:
  """val_loss (nats per token) and val_bpb (bits per UTF-8 byte) from summed eval sums."""
  return {"val_loss": sums["nll"] / max(sums["tokens"], 1.0),
          "val_bpb": sums["nll"] / math.log(2) / max(sums["bytes"], 1.0)}


def teacher_forced_sums(logits_BTV, targets_BT, w_BT) -> dict:
  """Sums of teacher-forced logits against weighted targets: nll, tokens, correct (argmax
  hits), examples (rows with a target) and exact (rows whose every target is its logits'
  argmax: under teacher forcing, exactly the rows greedy decoding writes right)."""
  nll_BT = jax.nn.logsumexp(logits_BTV, -1) - jnp.take_along_axis(
      logits_BTV, targets_BT[..., None], -1)[..., 0]
  right_BT = jnp.argmax(logits_BTV, -1) == targets_BT
  has_B = jnp.any(w_BT > 0, -1)
  exact_B = has_B & ~jnp.any(~right_BT & (w_BT > 0), -1)
  return {"nll": jnp.sum(nll_BT * w_BT), "tokens": jnp.sum(w_BT),
          "correct": jnp.sum(right_BT * w_BT), "exact": jnp.sum(exact_B.astype(jnp.float32)),
          "examples": jnp.sum(has_B.astype(jnp.float32))}


class RowsTask:
  """The data of a task whose examples are fixed rows (classify, sft, seq2seq): rows(split,
  tok) gives (row(i) -> dict of arrays, number of rows)."""

  def train_dataset(self, tok, seed: int, process_index: int = 0, process_count: int = 1):
    row, n = self.rows("train", tok)
    return pipeline.rows_dataset(row, n, self.config.train.batch_size, seed, process_index,
                                 process_count)

  def epochs(self, tok, examples: int) -> dict[str, float]:
    return {self.config.data.corpus: examples / self.rows("train", tok)[1]}

  def eval_batches(self, tok, max_batches: int = 0, process_index: int = 0,
                   process_count: int = 1):
    row, n = self.rows("validation", tok)
    return pipeline.batch_rows(row, n, self.config.train.batch_size, max_batches,
                               process_index, process_count)


@dataclasses.dataclass
class LanguageModeling:
  """Pretraining: predict every next token of the corpus; reports bits per byte."""
  config: Config
  samples_text: bool = True

  def __post_init__(self):
    d = self.config.data  # the mixture's (name, spec, weight); () for one corpus
    self.sources = config_lib.parse_mixture(d.corpora, d.mixture)

  def param_specs(self) -> dict:
    return transformer.param_specs(self.config.model)

  def flops_per_token(self) -> float:
    return transformer.flops_per_token(self.config.model, self.config.data.seq_len)["total"]

  def batch_shapes(self, batch_size: int) -> dict:
    keys = BATCH_KEYS + (("sources",) if self.sources else ())
    return {k: ((batch_size, self.config.data.seq_len), np.float32 if k == "weights" else np.int32)
            for k in keys}

  def loss(self, params, batch: dict):
    return loss_fn(params, batch, self.config, tuple(name for name, _, _ in self.sources))

  def loss_weight(self, batch: dict):
    return jnp.sum(batch["weights"])

  def eval_sums(self, params, batch: dict, token_bytes=None) -> dict:
    nll_BT, _, _ = token_nll(params, batch, self.config)
    w_BT = batch["weights"]
    sums = {"nll": nll_BT * w_BT, "tokens": w_BT, "bytes": token_bytes[batch["targets"]] * w_BT}
    if not self.sources:
      return {k: jnp.sum(v) for k, v in sums.items()}
    return {k: by_source(v, batch["sources"], len(self.sources)) for k, v in sums.items()}

  def summarize(self, sums: dict) -> dict:
    if not self.sources:
      return summarize_eval(sums)
    out, seen = {}, []  # a source without tokens in this evaluation is left out
    for s, (name, _, weight) in enumerate(self.sources):
      if float(sums["tokens"][s]) > 0:
        one = summarize_eval({k: float(v[s]) for k, v in sums.items()})
        out.update({f"{k}/{name}": v for k, v in one.items()})
        seen.append((name, weight))
    for key in ("val_loss", "val_bpb"):
      out[key] = (sum(w * out[f"{key}/{name}"] for name, w in seen)
                  / max(sum(w for _, w in seen), 1e-30))
    return out

  def train_dataset(self, tok, seed: int, process_index: int = 0, process_count: int = 1):
    c = self.config
    make = mixture.train_dataset if self.sources else pipeline.train_dataset
    return make(c.data, tok, c.train.batch_size, seed, process_index, process_count)

  def epochs(self, tok, examples: int) -> dict[str, float]:
    c = self.config
    if self.sources:
      return mixture.epochs(c.data, tok, c.seed, examples)
    return {c.data.corpus: examples / pipeline.windows_per_epoch(c.data, tok)}

  def eval_batches(self, tok, max_batches: int = 0, process_index: int = 0,
                   process_count: int = 1):
    c = self.config
    make = mixture.eval_batches if self.sources else pipeline.eval_batches
    return make(c.data, tok, c.train.batch_size, max_batches, process_index=process_index,
                process_count=process_count)
