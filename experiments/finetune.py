"""Fine-tuning the default Shakespeare model: genre classification and speaker naming (SFT).

Both start from a run of the `shakespeare` experiment (`init.from_workdir`);
leave it empty to train the same model from scratch for comparison:

  python -m jaxlm.main --experiment=shakespeare --workdir=runs/pretrained
  python -m jaxlm.main --experiment=shakespeare_genre --set init.from_workdir=runs/pretrained
  python -m jaxlm.main --experiment=shakespeare_genre          # from scratch
  python -m jaxlm.main --experiment=shakespeare_speaker --set init.from_workdir=runs/pretrained
"""

from jaxlm import config as config_lib
from jaxlm.config import CheckpointConfig, OptimConfig, TaskConfig, TrainConfig
from jaxlm.registry import register
from experiments.gpt import shakespeare


@register
def shakespeare_genre():
  """Label a 64-token passage comedy, tragedy, history or poem; test works held out.

  python -m jaxlm.main --experiment=shakespeare_genre --set init.from_workdir=runs/pretrained
  """
  base = shakespeare()
  return config_lib.replace(
      base, name="shakespeare_genre", task=TaskConfig(kind="classify", pooling="mean"),
      optim=OptimConfig(lr=1e-3, warmup_steps=20, weight_decay=0.1),
      train=TrainConfig(steps=300, batch_size=64, log_every=25, eval_every=100,
                        eval_batches=8, sample_tokens=0),
      checkpoint=CheckpointConfig(every=0, keep=1))


@register
def shakespeare_speaker():
  """Name the speaker of a speech given the scene's last two speakers (SFT); exact match.

  python -m jaxlm.main --experiment=shakespeare_speaker --set init.from_workdir=runs/pretrained
  """
  base = shakespeare()
  return config_lib.replace(
      base, name="shakespeare_speaker", task=TaskConfig(kind="sft", max_response_tokens=8),
      optim=OptimConfig(lr=1e-3, warmup_steps=20, weight_decay=0.1),
      train=TrainConfig(steps=600, batch_size=64, log_every=25, eval_every=200,
                        eval_batches=8, sample_tokens=0),
      checkpoint=CheckpointConfig(every=0, keep=1))
