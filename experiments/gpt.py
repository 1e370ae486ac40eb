"""GPT-2 / LLaMA-style decoder-only experiments on the embedded Shakespeare corpus."""

from jaxlm.config import (CheckpointConfig, Config, DataConfig, ModelConfig, OptimConfig,
                          TrainConfig)
from jaxlm.registry import register


@register
def shakespeare():
  """Default: a small LLaMA-style GPT learns Shakespeare on a laptop CPU in ~5 minutes.

  python -m jaxlm.main --experiment=shakespeare
  """
  # Sized for the 5-minute budget on 2 CPU cores (docs/benchmarks.md): at this
  # scale, short windows with a large batch see more text per second than long
  # ones, since attention's cost per token grows with the window.
  return Config(
      name="shakespeare",
      model=ModelConfig(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, max_seq_len=64),
      data=DataConfig(tokenizer="sentencepiece", seq_len=64),
      optim=OptimConfig(lr=4e-3, warmup_steps=30),
      train=TrainConfig(steps=350, batch_size=128, log_every=25, eval_every=175,
                        eval_batches=8, loss_chunk=1024),
      checkpoint=CheckpointConfig(every=175, keep=2),
  )


@register
def shakespeare_char():
  """Byte-level variant of the default, comparable to nanoGPT's shakespeare_char.

  python -m jaxlm.main --experiment=shakespeare_char
  """
  base = shakespeare()
  return Config(name="shakespeare_char",
                model=ModelConfig(vocab_size=257, d_model=128, n_layers=4, n_heads=2,
                                  max_seq_len=256),
                data=DataConfig(tokenizer="bytes", seq_len=256),
                optim=base.optim, train=base.train, checkpoint=base.checkpoint)


@register
def gpt2_small():
  """GPT-2 small (124M): learned positions, LayerNorm, GELU, tied embeddings, length 1024.

  python -m jaxlm.main --experiment=gpt2_small --set model.attention=cudnn
  """
  return Config(
      name="gpt2_small",
      model=ModelConfig(vocab_size=50304, d_model=768, n_layers=12, n_heads=12,
                        max_seq_len=1024, positions="learned", norm="layernorm", mlp="gelu",
                        use_bias=True, tie_embeddings=True, compute_dtype="bfloat16"),
      data=DataConfig(tokenizer="sentencepiece", vocab_size=8192, seq_len=1024),
      optim=OptimConfig(lr=6e-4, warmup_steps=700, weight_decay=0.1),
      train=TrainConfig(steps=20000, batch_size=32, log_every=50, eval_every=1000),
      checkpoint=CheckpointConfig(every=1000, keep=3),
  )


@register
def llama_small():
  """LLaMA-style 124M: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied embeddings.

  python -m jaxlm.main --experiment=llama_small
  """
  return Config(
      name="llama_small",
      model=ModelConfig(vocab_size=32768, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
                        max_seq_len=1024, positions="rope", norm="rmsnorm", mlp="swiglu",
                        tie_embeddings=False, compute_dtype="bfloat16"),
      data=DataConfig(tokenizer="sentencepiece", vocab_size=8192, seq_len=1024),
      optim=OptimConfig(lr=6e-4, warmup_steps=700, weight_decay=0.1),
      train=TrainConfig(steps=20000, batch_size=32, log_every=50, eval_every=1000),
      checkpoint=CheckpointConfig(every=1000, keep=3),
  )
