"""LLaMA-class models sized for TPU pods and GPU clusters, planned from any machine first.

  python -m jaxlm.main --experiment=llama_7b --dry_run --topology=v5p-256

compiles the real train step for that slice on this CPU (libtpu: pip install
'jaxlm[topology]') and prints per-chip memory, what it communicates and a roofline
step time (docs/sharding.md). To train, point them at a corpus and a tokenizer of
the model's vocabulary: --set data.corpus=prepared:DIR --set data.tokenizer=hf
--set data.tokenizer_path=TOKENIZER_DIR.
"""

from jaxlm.config import (CheckpointConfig, Config, DataConfig, MeshConfig, ModelConfig,
                          OptimConfig, TrainConfig)
from jaxlm.registry import register

# Fully sharded data parallelism over every chip: at 1B-7B parameters, 64-512 chips and
# these batches, FSDP's gathers hide behind each layer's matmuls and no tensor
# parallelism is needed (docs/sharding.md, "Which mesh for which scale").
_FSDP = MeshConfig(data=1, fsdp=-1)


@register
def llama_1b():
  """LLaMA 3.2 1B shape: 16 layers x 2048, grouped-query attention, 128K vocabulary, 1M-token
  batches of length 2048.

  python -m jaxlm.main --experiment=llama_1b --dry_run --topology=v5p-128
  """
  return Config(
      name="llama_1b",
      model=ModelConfig(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                        d_ff=8192, max_seq_len=2048, rope_theta=500000.0, tie_embeddings=True,
                        compute_dtype="bfloat16", remat="dots"),
      data=DataConfig(seq_len=2048, vocab_size=8192),
      optim=OptimConfig(lr=3e-4, warmup_steps=2000, weight_decay=0.1, min_lr_ratio=0.1),
      train=TrainConfig(steps=50000, batch_size=512, log_every=50, eval_every=1000),
      checkpoint=CheckpointConfig(every=1000, keep=3),
      mesh=_FSDP,
  )


@register
def llama_7b():
  """LLaMA 2 7B shape: 32 layers x 4096, 32K vocabulary, 2M-token batches of length 4096,
  every layer recomputed in the backward pass.

  python -m jaxlm.main --experiment=llama_7b --dry_run --topology=v5p-256
  """
  return Config(
      name="llama_7b",
      model=ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                        max_seq_len=4096, tie_embeddings=False, compute_dtype="bfloat16",
                        remat="full"),
      data=DataConfig(seq_len=4096, vocab_size=8192),
      optim=OptimConfig(lr=3e-4, warmup_steps=2000, weight_decay=0.1, min_lr_ratio=0.1),
      train=TrainConfig(steps=250000, batch_size=512, log_every=50, eval_every=1000),
      checkpoint=CheckpointConfig(every=1000, keep=3),
      mesh=_FSDP,
  )
