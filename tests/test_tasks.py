"""Fine-tuning tasks: genre classification and SFT, and starting from a trained run."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import config as config_lib
from jaxlm import sharding, tasks
from jaxlm.inference import generate
from jaxlm.models import transformer
from jaxlm.run import checkpoint
from jaxlm.train import loop, warm_start
from jaxlm.train.step import Trainer
from jaxlm.data import corpus, finetune, pipeline
from jaxlm.tasks import sft
from tests.helpers import tiny_config

TOK = pipeline.tokenizer_for(tiny_config().data, 257)


def _trainer(config):
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  return Trainer(config, sharding.make_mesh(config.mesh),
                       tok.token_bytes())


def _first_batch(task, config):
  return task.train_dataset(TOK, config.seed)[0]  # no prefetch threads left running


def test_genre_passages_hold_out_whole_works():
  tokens, lengths, labels = finetune.genre_passages("validation", TOK, 32)
  assert tokens.shape == (len(labels), 32) and lengths.max() == 32
  assert set(labels.tolist()) == set(range(4))  # one validation work per genre
  n_val = sum(len(TOK.encode(w.text)) // 32 for w in corpus.load_works("validation"))
  assert abs(len(labels) - n_val) <= 4


def test_speeches_parse_speakers_and_split_without_overlap():
  hamlet = [w for w in corpus.load_works() if w.name == "hamlet"][0]
  speeches = finetune.speeches(hamlet)
  assert speeches[0].speaker == "Ber" and speeches[0].text.startswith("Who's there?")
  train_set, test_set = finetune.speaker_examples("train"), finetune.speaker_examples("validation")
  assert 0.08 < len(test_set) / (len(train_set) + len(test_set)) < 0.12
  assert all(p.endswith("\nSPEAKER:") and r.startswith(" ") for p, r in test_set[:50])
  baselines = finetune.speaker_baselines()
  assert 0.05 < baselines["majority"] < 0.3 < baselines["two_back"] < 0.8
  assert all("; after " in p for p, _ in test_set[:50])


def test_sft_rows_weight_only_the_response_and_cut_the_prompt_from_the_left():
  row = sft.encode_pair(TOK, "x" * 100 + "TAIL:", " ROMEO", seq_len=16, max_response=8)
  answer = list(TOK.encode(" ROMEO")) + [TOK.eos_id]
  w = row["weights"]
  assert w.sum() == len(answer)
  assert row["targets"][w > 0].tolist() == answer
  # What precedes the answer is the end of the prompt, not its start.
  prompt_part = row["inputs"][: 16 - len(answer) + 1]
  assert TOK.decode(prompt_part).endswith("TAIL:")
  with pytest.raises(ValueError, match="data.seq_len"):
    sft.encode_pair(TOK, "p", " ROMEO", seq_len=4, max_response=8)


def test_classification_starts_at_log_c_and_learns():
  config = tiny_config(**{"task.kind": "classify", "optim.warmup_steps": 0,
                          "optim.schedule": "constant", "optim.lr": 3e-3})
  trainer = _trainer(config)
  batch = trainer.device_batch(_first_batch(trainer.task, config))
  state = trainer.init(jax.random.key(0))
  assert float(trainer.task.loss(state.params, batch)[0]) == pytest.approx(math.log(4), 1e-5)
  for _ in range(8):
    state, m = trainer.step(state, batch)
  assert float(m["loss"]) < 0.8 * math.log(4)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classification_ignores_padding(pooling):
  config = tiny_config(**{"task.kind": "classify", "task.pooling": pooling})
  task = tasks.get(config)
  params = jax.tree.map(lambda x: x + 0.1, _trainer(config).init(jax.random.key(1)).params)
  batch = next(iter(task.eval_batches(TOK, 1)))
  batch["segment_ids"][0, 20:] = 0  # shorten the first passage to 20 tokens
  other = {k: v.copy() for k, v in batch.items()}
  other["inputs"][0, 20:] = 7  # what sits in the padding must not matter
  from jaxlm.tasks.classify import class_logits
  a = class_logits(params, batch, config, pooling)
  b = class_logits(params, other, config, pooling)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_classification_eval_counts_accuracy_per_class():
  # The whole validation split (16,474 passages) in 129 batches of 128, not 2,060 of 8.
  config = tiny_config(**{"task.kind": "classify", "train.batch_size": 128})
  trainer = _trainer(config)
  state = trainer.init(jax.random.key(0))
  params = dict(state.params, head={"w": state.params["head"]["w"],
                                    "b": jnp.array([0.0, 0.0, 5.0, 0.0])})  # always "history"
  batches = list(trainer.task.eval_batches(TOK, 0))
  out = trainer.run_eval(params, batches)
  _, _, labels = finetune.genre_passages("validation", TOK, 32)
  assert out["val_accuracy"] == pytest.approx(np.mean(labels == 2), abs=1e-6)
  assert out["val_balanced_accuracy"] == pytest.approx(0.25, abs=1e-6)


def test_sft_exact_match_equals_greedy_generation():
  config = tiny_config(**{"task.kind": "sft", "data.seq_len": 32})
  trainer = _trainer(config)
  task = trainer.task
  params = trainer.init(jax.random.key(0)).params
  # A model that has learned a few answers exactly: tune one batch to near zero loss.
  batch = trainer.device_batch(_first_batch(task, config))
  state = trainer.init(jax.random.key(0))
  for _ in range(60):  # one step at a time (see the session note on intermittent aborts)
    state, _ = jax.block_until_ready(trainer.step(state, batch))
  params = state.params
  host = jax.device_get(batch)
  sums = jax.device_get(task.eval_sums(params, batch, jnp.asarray(TOK.token_bytes())))
  greedy_hits = 0
  for i in range(host["inputs"].shape[0]):
    w = host["weights"][i]
    first = int(np.argmax(w > 0))
    prompt = host["inputs"][i, :first + 1].tolist()
    answer = host["targets"][i][w > 0].tolist()
    out = generate.generate(params, config.model, [prompt], len(answer), temperature=0.0,
                            eos_id=TOK.eos_id)[0]
    greedy_hits += out.tolist() == answer
  assert sums["exact"] == greedy_hits
  assert sums["examples"] == host["inputs"].shape[0]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """(config, workdir) of a 2-step language-model run, shared by the fine-tuning tests."""
  config = tiny_config(**{"train.steps": 2})
  workdir = str(tmp_path_factory.mktemp("pre"))
  loop.run(loop.setup(config, workdir))
  return config, workdir


def test_fine_tuning_starts_from_the_pretrained_params(tmp_path, pretrained):
  pre, pre_dir = pretrained
  config = config_lib.replace(pre, **{"task.kind": "classify", "init.from_workdir": pre_dir})
  r = loop.setup(config, str(tmp_path / "ft"))
  abstract = jax.eval_shape(lambda: transformer.init(pre.model, jax.random.key(0)))
  src, _ = checkpoint.restore_params(pre_dir, abstract)
  fresh = r.trainer.init(jax.random.key(0)).params
  params = warm_start.load(config, r.trainer.mesh, config.mesh.rules, fresh)
  for a, b in zip(jax.tree.leaves(src), jax.tree.leaves({k: params[k] for k in src})):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.any(np.asarray(params["head"]["w"]))
  summary = loop.run(r)
  assert {"final_val_loss", "final_val_accuracy", "final_val_balanced_accuracy"} <= set(summary)


def test_fine_tuning_source_errors_name_the_key(tmp_path, pretrained):
  pre, pre_dir = pretrained
  with pytest.raises(config_lib.ConfigError, match="init.from_workdir.*no config.json"):
    loop.setup(config_lib.replace(pre, **{"init.from_workdir": str(tmp_path / "nope")}),
                str(tmp_path / "a"))
  wider = config_lib.replace(pre, **{"init.from_workdir": pre_dir, "model.d_model": 64})
  with pytest.raises(config_lib.ConfigError, match="model.d_model=32.*init.grow"):
    loop.setup(wider, str(tmp_path / "b"))
  other_norm = config_lib.replace(pre, **{"init.from_workdir": pre_dir,
                                          "model.norm": "layernorm"})
  with pytest.raises(config_lib.ConfigError, match="model.norm"):
    loop.setup(other_norm, str(tmp_path / "c"))
  with pytest.raises(config_lib.ConfigError, match="init.grow"):
    config_lib.replace(pre, **{"init.grow": "stack"})
