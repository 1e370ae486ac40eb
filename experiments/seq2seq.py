"""Sequence to sequence: an encoder-decoder restores the punctuation and capitals of a line.

The source is a line of verse or prose lowercased with its punctuation removed,
the target the line as printed (jaxlm.data.finetune.restore_pairs); training
lines come from the train works, test lines from the held-out validation works.
Results and commands are in docs/seq2seq.md.

  python -m jaxlm.main --experiment=shakespeare_restore --workdir=runs/restore
  python -m jaxlm.seq2seq_generate --workdir=runs/restore --eval_lines=0
"""

from jaxlm.config import (CheckpointConfig, Config, DataConfig, ModelConfig, OptimConfig,
                          TaskConfig, TrainConfig)
from jaxlm.registry import register


@register
def shakespeare_restore():
  """Encoder-decoder (2+2 layers, d 128, bytes) restores punctuation and capitals of a line.

  python -m jaxlm.main --experiment=shakespeare_restore --workdir=runs/restore
  """
  # Sized for ~10 minutes on 2 busy CPU cores (docs/seq2seq.md). Lines run to
  # 77 bytes; 64-byte windows keep 96% of them (and skip the rest) at 4/5 the
  # cost of 80-byte ones, a line averaging 42 bytes.
  return Config(
      name="shakespeare_restore",
      model=ModelConfig(vocab_size=257, d_model=128, n_layers=2, encoder_layers=2, n_heads=4,
                        max_seq_len=64),
      data=DataConfig(tokenizer="bytes", seq_len=64),  # source_len 0: also 64
      task=TaskConfig(kind="seq2seq"),
      optim=OptimConfig(lr=3e-3, warmup_steps=30, weight_decay=0.1),
      train=TrainConfig(steps=600, batch_size=32, log_every=25, eval_every=300,
                        eval_batches=8, sample_tokens=0),
      checkpoint=CheckpointConfig(every=300, keep=1),
  )


@register
def shakespeare_restore_tiny():
  """CPU smoke test of shakespeare_restore: 1+1 layers, d 32, a few steps.

  python -m jaxlm.main --experiment=shakespeare_restore_tiny
  """
  return Config(
      name="shakespeare_restore_tiny",
      model=ModelConfig(vocab_size=257, d_model=32, n_layers=1, encoder_layers=1, n_heads=4,
                        max_seq_len=80),
      data=DataConfig(tokenizer="bytes", seq_len=80),
      task=TaskConfig(kind="seq2seq"),
      optim=OptimConfig(lr=3e-3, warmup_steps=2),
      train=TrainConfig(steps=4, batch_size=8, log_every=2, eval_every=0, eval_batches=2,
                        sample_tokens=0),
      checkpoint=CheckpointConfig(every=0, keep=1),
  )
