"""Tiny configs shared by the tests."""

import jax
import jax.numpy as jnp

from jaxlm import config as config_lib
from jaxlm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def tiny_model(**kw) -> ModelConfig:
  base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
  base.update(kw)
  return ModelConfig(**base)


def tiny_config(**dotted) -> Config:
  """A byte-level run small enough for a few CPU steps in a second or two."""
  config = Config(
      name="tiny",
      model=tiny_model(vocab_size=257, max_seq_len=32),
      data=DataConfig(tokenizer="bytes", seq_len=32),
      optim=OptimConfig(lr=3e-3, warmup_steps=2),
      # The final evaluation reads 4 batches, not the whole validation split (2,000
      # batches of this size: seconds per run, minutes over the suite).
      train=TrainConfig(steps=4, batch_size=8, log_every=2, eval_every=0, eval_batches=2,
                        final_eval_batches=4, sample_tokens=0),
  )
  return config_lib.replace(config, **dotted)


# Overrides that shrink any registered experiment to a CPU-sized variant while
# keeping its architecture choices (norm, MLP, positions, GQA ratio, dtypes).
def tiny_variant(config: Config) -> Config:
  ratio = config.model.n_heads // config.model.kv_heads
  # A corpus of files (python_stdlib's 31 MB) would be prepared first: the embedded one
  # stands in, read with the experiment's own tokenizer.
  corpus = "shakespeare" if config.data.corpus.startswith("files:") else config.data.corpus
  return config_lib.replace(
      config, **{"data.corpus": corpus, "model.d_model": 32, "model.n_layers": 2,
                 "model.n_heads": 4,
                 "model.n_kv_heads": 4 // ratio, "model.d_ff": 0, "model.max_seq_len": 32,
                 "data.seq_len": 32, "train.batch_size": 8, "train.steps": 2,
                 "train.eval_batches": 1, "train.sample_tokens": 0})


def qkv(B=2, T=8, S=8, N=4, K=2, H=16, seed=0):
  """Random queries (B, T, N, H), keys and values (B, S, K, H)."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k1, (B, T, N, H)), jax.random.normal(k2, (B, S, K, H)),
          jax.random.normal(k3, (B, S, K, H)))


def value_and_grads(f, q, k, v, w):
  """Value and gradients of sum(f(q, k, v) * w), jitted."""
  return jax.jit(jax.value_and_grad(
      lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) * w), (0, 1, 2)))(q, k, v)
