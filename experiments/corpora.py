"""Experiments on a real corpus no one here wrote: the Python standard library's own source.

Every `*.py` under the running interpreter's stdlib directory, site-packages
left out: about 1,800 files and 31 MB on CPython 3.11, present on every
machine. The first run prepares it into token shards (data.cache_dir), later
runs reuse them. docs/data.md has the results.
"""

import sysconfig

from jaxlm import config as config_lib
from jaxlm.config import (CheckpointConfig, Config, DataConfig, ModelConfig, OptimConfig,
                          TrainConfig)
from jaxlm.data import tokenizer
from jaxlm.registry import register

STDLIB = sysconfig.get_paths()["stdlib"]
STDLIB_CORPUS = f"files:{STDLIB}/**/*.py,!{STDLIB}/site-packages/**"
# A byte-level BPE of 4096 trained on the corpus (3.2 bytes per token on its held-out
# files), committed so the experiment runs in one command; rebuilt with
#   python -m jaxlm.data.tokenizer train --corpus="files:$STDLIB/**/*.py,!$STDLIB/site-packages/**" \
#       --vocab_size=4096 --kind=bpe --out=jaxlm/data/assets/python_stdlib_bpe4096
STDLIB_TOKENIZER = str(tokenizer.ASSETS / "python_stdlib_bpe4096")


@register
def python_stdlib():
  """The Python standard library's source with its own BPE tokenizer: ~8 minutes on 2 cores.

  python -m jaxlm.main --experiment=python_stdlib
  """
  # The default experiment's model with a 4096 vocabulary and 128-token windows:
  # 1000 steps of 64 x 128 tokens are 8.2M tokens, 0.84 of an epoch.
  return Config(
      name="python_stdlib",
      model=ModelConfig(vocab_size=4096, d_model=128, n_layers=4, n_heads=4, max_seq_len=128),
      data=DataConfig(corpus=STDLIB_CORPUS, tokenizer="hf", tokenizer_path=STDLIB_TOKENIZER,
                      seq_len=128),
      optim=OptimConfig(lr=4e-3, warmup_steps=50),
      train=TrainConfig(steps=1000, batch_size=64, log_every=50, eval_every=500,
                        eval_batches=8, loss_chunk=1024,
                        sample_prompt="def ", sample_tokens=100),
      checkpoint=CheckpointConfig(every=500, keep=2),
  )


@register
def python_stdlib_bytes():
  """The same model, steps and windows on the standard library at byte level, to compare.

  python -m jaxlm.main --experiment=python_stdlib_bytes
  """
  return config_lib.replace(python_stdlib(), name="python_stdlib_bytes", **{
      "model.vocab_size": 257, "data.tokenizer": "bytes", "data.tokenizer_path": ""})
