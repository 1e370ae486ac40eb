"""What a run trains for, as a plug-in of the train loop: LM, classification, SFT, seq2seq.

A task supplies the parameter specs (the model's plus any head), the loss, the
per-batch evaluation sums and their summary, and the data: an infinite batched
training dataset and the evaluation batches. The Trainer and the loop in
jaxlm/train call only these, so a new task is a new module here, not another
branch in the step.

Every batch is a dict of numpy arrays whose leading axis is the batch; a
summary always holds `val_loss` (checkpoints keep the best by it).
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

from jaxlm.config import Config


class Task(Protocol):
  """The interface jaxlm.train uses; see jaxlm/tasks/lm.py for the reference one."""

  config: Config
  samples_text: bool  # whether the end-of-run sample makes sense (a model that writes text)

  def param_specs(self) -> dict:
    """The ParamSpec tree of every parameter, the model's and the task's head."""

  def flops_per_token(self) -> float:
    """Training FLOPs (forward + backward) per target token, for MFU and summary.json."""

  def batch_shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of each batch array for a global batch of `batch_size`."""

  def loss(self, params, batch: dict) -> tuple[Any, dict]:
    """(scalar mean loss, statistics) of a batch, pure and jittable; the statistics (a
    dict of arrays, maybe empty) are logged at log steps (train.layer_stats)."""

  def loss_weight(self, batch: dict):
    """The denominator of loss()'s weighted mean (its weights' sum): how much a part of
    the batch counts when gradients are accumulated over microbatches."""

  def eval_sums(self, params, batch: dict, token_bytes) -> dict:
    """Sums over a batch (jittable) that summarize() turns into metrics; token_bytes[i] is
    the UTF-8 length of token i (for bits per byte)."""

  def summarize(self, sums: dict) -> dict:
    """Metrics (val_loss and the task's own) from eval_sums added over batches."""

  def train_dataset(self, tok, seed: int, process_index: int, process_count: int):
    """An infinite grain MapDataset of this process's share of each training batch."""

  def epochs(self, tok, examples: int) -> dict[str, float]:
    """{source: passes over its training data} after `examples` training examples (rows
    of batches): summary.json's epochs."""

  def eval_batches(self, tok, max_batches: int, process_index: int,
                   process_count: int) -> Iterable[dict]:
    """This process's share of each evaluation batch (max_batches 0: the whole split)."""


# The task modules implement Task; they import nothing from this package's __init__.
from jaxlm.tasks import classify, lm, seq2seq, sft  # noqa: E402  (after Task, which they follow)

KINDS = {"lm": lm.LanguageModeling, "classify": classify.Classification,
         "sft": sft.SupervisedFineTuning, "seq2seq": seq2seq.Seq2Seq}


def get(config: Config) -> Task:
  """The task a config names (task.kind)."""
  return KINDS[config.task.kind](config)
