import jax
import pytest

from jaxlm import registry
from jaxlm.config import Config
from jaxlm.models import transformer
from tests.helpers import tiny_variant


def test_list_has_descriptions():
  names = registry.names()
  assert "shakespeare" in names and "gpt2_small" in names and "llama_small" in names
  assert all(line for line in names.values())


def test_unknown_experiment_suggests():
  with pytest.raises(registry.UnknownNameError, match="did you mean shakespeare"):
    registry.experiment("shakespear")


# The pod experiments (experiments/pod.py) are llama_small's architecture at another size,
# planned with --topology (tests/test_topology.py); their size is checked below.
POD = ("llama_1b", "llama_7b")


@pytest.mark.parametrize("name", sorted(set(registry.names()) - set(POD)))
def test_every_experiment_builds_and_its_tiny_variant_trains(name):
  from jaxlm import sharding
  from jaxlm.data import pipeline
  from jaxlm.train.step import Trainer
  config = registry.experiment(name)
  assert isinstance(config, Config) and config.name == name
  tiny = tiny_variant(config)
  tok = pipeline.tokenizer_for(tiny.data, tiny.model.vocab_size)
  trainer = Trainer(tiny, sharding.make_mesh(tiny.mesh), tok.token_bytes())
  state = trainer.init(jax.random.key(0))
  batch = next(pipeline.train_iterator(trainer.task.train_dataset(tok, 0)))
  state, m = trainer.step(state, trainer.device_batch(batch))
  assert bool(jax.numpy.isfinite(m["loss"]))


def test_presets_have_the_advertised_size():
  gpt2 = transformer.param_count(registry.experiment("gpt2_small").model)["total"]
  llama = transformer.param_count(registry.experiment("llama_small").model)["total"]
  assert 123e6 < gpt2 < 126e6  # GPT-2 small with a 50304 vocabulary: 124.5M
  assert 100e6 < llama < 160e6
  sizes = [transformer.param_count(registry.experiment(n).model)["total"] for n in POD]
  assert 1.2e9 < sizes[0] < 1.3e9 and 6.7e9 < sizes[1] < 6.8e9  # LLaMA 3.2 1B, LLaMA 2 7B
