"""Evaluation of a trained run: loss, perplexity, bits per byte, calibration, loss by position.

Behind `python -m jaxlm.evaluate --workdir=DIR [--split=validation|train]`.

Dimension legend (docs/architecture.md): B batch, T length, V vocab, E
confidence bins.

Reads the whole split in order, each target once (pipeline.eval_batches), and
writes WORKDIR/eval_<split>.json and the reliability diagram
WORKDIR/reliability_<split>.png. Bits per byte divide the summed loss by the
UTF-8 bytes the targets stand for, so runs with different tokenizers compare.
Calibration is that of the top-1 prediction: the expected calibration error
over 15 equal-width confidence bins (Guo et al. 2017, "On Calibration of Modern
Neural Networks"). Loss by position is the mean loss at each position the model
is given (0..T-1; positions restart where a document starts).
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm import sharding
from jaxlm.config import Config
from jaxlm.data import mixture, pipeline
from jaxlm.models import transformer
from jaxlm.run import files, loggers
from jaxlm.run.load import load_run
from jaxlm.tasks import lm

SPLITS = ("validation", "train")
N_BINS = 15


def eval_sums(params, batch: dict, *, config: Config, token_bytes, n_bins: int = N_BINS) -> dict:
  """Sums over a batch's weighted targets: loss, bytes, confidence bins and loss by position."""
  segments = batch["segment_ids"] if config.data.mask_documents else None
  logits_BTV = transformer.apply(params, batch["inputs"], config.model,
                                 positions_BT=batch["positions"], segment_ids_BT=segments)
  targets_BT, w_BT = batch["targets"], batch["weights"]
  T = targets_BT.shape[1]
  nll_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  conf_BT = jnp.exp(jnp.max(jax.nn.log_softmax(logits_BTV, axis=-1), axis=-1))
  correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
  bin_BT = jnp.minimum((conf_BT * n_bins).astype(jnp.int32), n_bins - 1)

  def by(index_BT, value_BT, n):
    return jax.ops.segment_sum((value_BT * w_BT).reshape(-1), index_BT.reshape(-1), n)

  return {"nll": jnp.sum(nll_BT * w_BT), "tokens": jnp.sum(w_BT),
          "bytes": jnp.sum(token_bytes[targets_BT] * w_BT),
          "correct": jnp.sum(correct_BT * w_BT),
          "bin_count_E": by(bin_BT, jnp.ones_like(w_BT), n_bins),
          "bin_confidence_E": by(bin_BT, conf_BT, n_bins),
          "bin_correct_E": by(bin_BT, correct_BT, n_bins),
          "position_nll_T": by(batch["positions"], nll_BT, T),
          "position_tokens_T": by(batch["positions"], jnp.ones_like(w_BT), T)}


def summarize(sums: dict) -> dict:
  """Loss, perplexity, bits per byte, accuracy, ECE, bins and loss by position from eval_sums."""
  base = lm.summarize_eval(sums)
  n = max(sums["tokens"], 1.0)
  count_E = sums["bin_count_E"]
  seen_E = np.maximum(count_E, 1.0)
  n_bins = len(count_E)
  bins = [{"low": c / n_bins, "high": (c + 1) / n_bins, "count": int(count_E[c]),
           "confidence": float(sums["bin_confidence_E"][c] / seen_E[c]),
           "accuracy": float(sums["bin_correct_E"][c] / seen_E[c])} for c in range(n_bins)]
  ece = float(np.sum(np.abs(sums["bin_correct_E"] - sums["bin_confidence_E"])) / n)
  pos_T = sums["position_nll_T"] / np.maximum(sums["position_tokens_T"], 1.0)
  return {"loss": base["val_loss"], "perplexity": math.exp(base["val_loss"]),
          "bits_per_byte": base["val_bpb"], "accuracy": sums["correct"] / n, "ece": ece,
          "tokens": int(sums["tokens"]), "bytes": int(sums["bytes"]), "calibration_bins": bins,
          "loss_by_position": [float(x) if m else None
                               for x, m in zip(pos_T, sums["position_tokens_T"])]}


def evaluate(params, config: Config, tok, mesh, split: str = "validation",
             max_batches: int = 0) -> dict:
  """Evaluates params over the split (all of it, or max_batches spread over it).

  A mixture run (data.mixture) is evaluated on each source's split: the result
  summarizes all their tokens together, and adds `sources` (each source's own
  summary) and `mixture` (loss and bits per byte averaged with the mixture's
  weights, the training run's val_loss and val_bpb).
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is invalid: expected one of {', '.join(SPLITS)}")
  rules = config.mesh.rules
  batch_sharding = sharding.batch_sharding(mesh, rules)
  token_bytes = jnp.asarray(tok.token_bytes())

  @jax.jit
  def step(params, batch):
    with sharding.activation_rules(mesh, rules):
      return eval_sums(params, batch, config=config, token_bytes=token_bytes)

  def sums_of(data, n_batches: int) -> dict:  # eval_sums over one data config's split
    batches = pipeline.eval_batches(data, tok, config.train.batch_size, n_batches, split=split)
    sums = sum_batches(lambda b: step(params, jax.device_put(b, batch_sharding)),
                       loggers.progress(batches, desc=f"evaluating {split}"))
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in sums.items()}

  if not config.data.mixture:
    return summarize(sums_of(config.data, max_batches))
  parts = mixture.sources(config.data)
  per = mixture.per_source(max_batches, len(parts))  # as the training evaluation
  sums = {name: sums_of(data, per) for name, data, _ in parts}
  by_source = {name: summarize(s) for name, s in sums.items()}
  total = summarize(jax.tree.map(lambda *xs: sum(xs), *sums.values()))
  weighted = {key: sum(w * by_source[name][key] for name, _, w in parts)
              for key in ("loss", "bits_per_byte")}
  return {**total, "sources": by_source, "mixture": weighted}


def sum_batches(evaluate_batch, batches) -> dict:
  """The float64 sums over batches of evaluate_batch(batch), a jitted function's dict.

  At most two batches are in flight: queuing a whole split's evaluations at
  once holds every batch on device and, on the multi-device CPU backend,
  was seen to abort the process intermittently under load.
  """
  outs, pending = [], []
  for batch in batches:
    pending.append(evaluate_batch(batch))
    if len(pending) > 2:
      outs.append(jax.device_get(pending.pop(0)))
  outs += jax.device_get(pending)
  return jax.tree.map(lambda *xs: np.sum(np.asarray(xs, np.float64), 0), *outs)


def reliability_diagram(result: dict):
  """A matplotlib figure: accuracy against confidence per bin, and the share of tokens per bin."""
  try:  # matplotlib is optional (the plot extra), and slow to import
    from matplotlib.figure import Figure  # not pyplot's: no display, nothing to close
  except ImportError:
    raise ImportError("the reliability diagram needs matplotlib; install it with "
                      "`pip install 'jaxlm[plot]'`") from None
  bins = result["calibration_bins"]
  centers = [(b["low"] + b["high"]) / 2 for b in bins]
  width = bins[0]["high"] - bins[0]["low"]
  total = max(sum(b["count"] for b in bins), 1)
  fig = Figure(figsize=(5, 6))
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.bar(centers, [b["accuracy"] if b["count"] else 0 for b in bins], width=width,
          edgecolor="black", label="accuracy")
  top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
  top.set(ylabel="accuracy of top-1 prediction",
          title=f"ECE {result['ece']:.4f} ({result.get('split', '')})")
  top.legend(loc="upper left")
  bottom.bar(centers, [b["count"] / total for b in bins], width=width, edgecolor="black")
  bottom.set(xlabel="confidence of top-1 prediction", ylabel="share of tokens", xlim=(0, 1))
  fig.tight_layout()
  return fig


def run(workdir: str, split: str = "validation", max_batches: int = 0) -> dict:
  """Evaluates a run's latest checkpoint (on all of the split, or max_batches spread over it);
  writes eval_<split>.json and reliability_<split>.png, and adds the diagram to the run's
  TensorBoard and W&B runs where it logs to them."""
  if max_batches < 0:
    raise ValueError(f"--batches={max_batches} is invalid: expected 0 (the whole split) or a "
                     "positive count")
  config, tok, mesh, params, step = load_run(workdir)
  if config.model.encoder_layers:
    raise ValueError(f"--workdir={workdir} is an encoder-decoder run; this evaluation is of "
                     "language models (score it with python -m jaxlm.seq2seq_generate "
                     "--eval_lines=0)")
  result = {"split": split, "step": step, "tokenizer": tok.name, "batches": max_batches,
            **evaluate(params, config, tok, mesh, split, max_batches)}
  files.write_atomic(os.path.join(workdir, f"eval_{split}.json"), json.dumps(result, indent=2))
  fig = reliability_diagram(result)
  fig.savefig(os.path.join(workdir, f"reliability_{split}.png"), dpi=100)
  loggers.figure_to_run(config, workdir, step, f"reliability/{split}", fig)
  return result
