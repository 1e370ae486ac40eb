"""Encoder-decoder model, cached decoding, the seq2seq task and its data."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import config as config_lib
from jaxlm import config_io
from jaxlm import registry, sharding
from jaxlm.data import corpus, finetune, pipeline
from jaxlm.inference import generate
from jaxlm.inference import seq2seq as restoration
from jaxlm.models import encoder_decoder as ed
from jaxlm.params import is_spec, param_count
from jaxlm.run.load import load_run
from jaxlm.tasks import seq2seq
from jaxlm.train import loop
from jaxlm.train.step import Trainer
from tests.helpers import tiny_config, tiny_model

TOK = pipeline.tokenizer_for(tiny_config().data, 257)


def s2s_config(**dotted):
  return tiny_config(**{"task.kind": "seq2seq", "model.encoder_layers": 2,
                        "data.source_len": 32, **dotted})


def _params(config, seed=0):
  # Away from init (zero biases, unit norm scales), so every parameter matters.
  params = ed.init(config, jax.random.key(seed))
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return treedef.unflatten([x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                            for x, k in zip(leaves, keys)])


def _inputs(B=3, S=12, T=9, vocab=64, lengths=(12, 7, 3)):
  src_BS = jax.random.randint(jax.random.key(10), (B, S), 0, vocab)
  seg_BS = (jnp.arange(S)[None, :] < jnp.array(lengths)[:, None]).astype(jnp.int32)
  tgt_BT = jax.random.randint(jax.random.key(11), (B, T), 0, vocab)
  return src_BS, seg_BS, tgt_BT


MODELS = {
    "llama_gqa": tiny_model(n_kv_heads=2, encoder_layers=2, n_layers=3),
    "gpt2": tiny_model(positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
                       tie_embeddings=False, encoder_layers=1),
    "qk_norm": tiny_model(qk_norm=True, encoder_layers=1, n_layers=2),
}


def test_param_count_equals_the_spec_tree_and_the_init():
  c = MODELS["llama_gqa"]
  params = ed.init(c, jax.random.key(0))
  leaves = jax.tree.leaves(params)
  specs = ed.param_specs(c)
  assert param_count(specs)["total"] == sum(x.size for x in leaves)
  assert jax.tree.structure(params) == jax.tree.structure(
      jax.tree.map(lambda s: 0, specs, is_leaf=is_spec))
  assert params["encoder"]["layers"]["attn"]["wq"].shape == (2, 32, 4, 8)
  assert params["decoder"]["layers"]["cross"]["wk"].shape == (3, 32, 2, 8)
  # Embedding shared by encoder, decoder and the tied output projection: counted once.
  assert param_count(specs)["total"] - param_count(specs)["non_embedding"] == 64 * 32
  with pytest.raises(ValueError, match="model.encoder_layers=0"):
    ed.param_specs(tiny_model())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cached_decoding_equals_the_full_decoder(name):
  c = MODELS[name]
  params = _params(c)
  src_BS, seg_BS, tgt_BT = _inputs()
  full_BTV = ed.apply(params, src_BS, tgt_BT, c, src_segments_BS=seg_BS)
  memory_BSD = ed.encode(params, src_BS, c, seg_BS)
  cache = ed.init_cache(params, memory_BSD, c, tgt_BT.shape[1] + 2, seg_BS)
  step = jax.jit(ed.decode_step, static_argnames="config")
  cached = []
  for t in range(tgt_BT.shape[1]):
    logits_BV, cache = step(params, cache, tgt_BT[:, t], config=c)
    cached.append(logits_BV)
  np.testing.assert_allclose(np.stack(cached, 1), full_BTV, atol=1e-4)
  assert int(cache["index"]) == tgt_BT.shape[1]


def test_source_padding_changes_nothing():
  c = MODELS["llama_gqa"]
  params = _params(c)
  src_BS, seg_BS, tgt_BT = _inputs()
  base_BTV = ed.apply(params, src_BS, tgt_BT, c, src_segments_BS=seg_BS)
  # Other tokens in the padding, and more of it.
  junk_BS = jnp.where(seg_BS > 0, src_BS, 5)
  longer_BS = jnp.pad(junk_BS, ((0, 0), (0, 6)), constant_values=9)
  longer_seg_BS = jnp.pad(seg_BS, ((0, 0), (0, 6)))
  np.testing.assert_allclose(ed.apply(params, longer_BS, tgt_BT, c, src_segments_BS=longer_seg_BS),
                             base_BTV, atol=1e-5)
  # A row alone, unpadded, is what it is in the batch.
  n = 7
  alone_BTV = ed.apply(params, src_BS[1:2, :n], tgt_BT[1:2], c)
  np.testing.assert_allclose(alone_BTV, base_BTV[1:2], atol=1e-5)
  # The source matters where it is real.
  other_BS = src_BS.at[:, 0].set((src_BS[:, 0] + 1) % 64)
  assert not np.allclose(ed.apply(params, other_BS, tgt_BT, c, src_segments_BS=seg_BS),
                         base_BTV, atol=1e-3)


def test_pallas_cross_attention_matches_xla():
  c = tiny_model(encoder_layers=1, n_layers=1, n_kv_heads=2)
  params = _params(c)
  src_BS, seg_BS, tgt_BT = _inputs()
  xla = ed.apply(params, src_BS, tgt_BT, config_lib.replace(c, attention="xla"),
                 src_segments_BS=seg_BS)
  pallas = ed.apply(params, src_BS, tgt_BT, config_lib.replace(c, attention="pallas"),
                    src_segments_BS=seg_BS)
  np.testing.assert_allclose(pallas, xla, atol=1e-4)


def test_restore_pairs_strip_punctuation_and_keep_test_works_apart():
  assert finetune.unpunctuate("O, what a rogue--and peasant slave am I!") == \
      "o what a rogue and peasant slave am i"
  assert finetune.unpunctuate("'Tis strange; liv'd.") == "'tis strange liv'd"
  hamlet = [w for w in corpus.load_works("validation") if w.name == "hamlet"][0]
  lines = finetune.text_lines(hamlet)
  assert "Who's there?" in lines and "Ber." not in lines
  assert not any(line.startswith("[") for line in lines)
  train_set, test_set = finetune.restore_pairs("train"), finetune.restore_pairs("validation")
  assert 5 < len(train_set) / len(test_set) < 15
  assert all(s == finetune.unpunctuate(t) and s for s, t in test_set)
  test_lines = {line for w in corpus.load_works("validation") for line in finetune.text_lines(w)}
  assert {t for _, t in test_set} <= test_lines


def test_rows_teacher_force_the_target_from_the_start_token():
  row = seq2seq.encode_pair(TOK, "to be", "To be,", 8, 10)
  n = len("To be,") + 1
  assert TOK.decode(row["src"][row["src_segments"] > 0]) == "to be"
  assert row["tgt_inputs"][0] == TOK.eos_id and TOK.decode(row["tgt_inputs"][1:n]) == "To be,"
  assert row["tgt_targets"][n - 1] == TOK.eos_id and row["tgt_weights"].sum() == n
  assert seq2seq.encode_pair(TOK, "to be", "To be,", 8, 6) is None  # target + eos > 6


def test_config_requires_an_encoder_for_seq2seq_and_none_elsewhere():
  with pytest.raises(config_lib.ConfigError, match="model.encoder_layers=0.*> 0"):
    tiny_config(**{"task.kind": "seq2seq"})
  with pytest.raises(config_lib.ConfigError, match="model.encoder_layers=2.*task.kind='lm'"):
    tiny_config(**{"model.encoder_layers": 2})
  with pytest.raises(config_lib.ConfigError, match="data.source_len=64.*max_seq_len=32"):
    s2s_config(**{"data.source_len": 64})


def _trainer(config):
  return Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]),
                       TOK.token_bytes())


def _first_batch(trainer, config):
  ds = trainer.task.train_dataset(TOK, config.seed)
  return trainer.device_batch(next(pipeline.train_iterator(ds)))


def test_one_step_lowers_the_loss_and_counts_the_spec_tree():
  config = s2s_config(**{"optim.warmup_steps": 0, "optim.schedule": "constant"})
  trainer = _trainer(config)
  specs = jax.tree.leaves(trainer.specs, is_leaf=is_spec)
  assert sum(s.size for s in specs) == param_count(ed.param_specs(config.model))["total"]
  batch = _first_batch(trainer, config)
  state = trainer.init(jax.random.key(0))
  before = float(trainer.task.loss(state.params, batch)[0])
  assert before == pytest.approx(np.log(257), rel=0.05)  # near uniform at init
  state, _ = trainer.step(state, batch)
  assert float(trainer.task.loss(state.params, batch)[0]) < before


def test_greedy_generation_writes_what_an_overfit_model_learned():
  config = s2s_config(**{"optim.warmup_steps": 0, "optim.schedule": "constant",
                         "optim.lr": 1e-2, "optim.weight_decay": 0.0, "train.batch_size": 4})
  trainer = _trainer(config)
  batch = _first_batch(trainer, config)
  state = trainer.init(jax.random.key(0))
  for _ in range(200):
    state, m = trainer.step(state, batch)
  params = state.params
  sums = jax.device_get(trainer.task.eval_sums(params, batch))
  host = jax.device_get(batch)
  sources = [row[seg > 0] for row, seg in zip(host["src"], host["src_segments"])]
  outs = generate.generate(params, config.model, sources, config.data.seq_len, temperature=0.0,
                           start_id=TOK.eos_id, eos_id=TOK.eos_id, source_len=32)
  targets = [t[w > 0] for t, w in zip(host["tgt_targets"], host["tgt_weights"])]
  hits = [o.tolist() == t.tolist() for o, t in zip(outs, targets)]
  assert sum(hits) == sums["exact"]  # teacher-forced exact match is greedy decoding's
  assert sum(hits) == len(hits), float(m["loss"])  # and the model reproduces its targets
  # The text path: unpunctuate, generate, decode.
  texts = restoration.restore(params, config, TOK, [TOK.decode(s) for s in sources[:2]])
  assert texts == [TOK.decode(t[:-1]) for t in targets[:2]]


def test_generate_checks_its_inputs():
  c = MODELS["llama_gqa"]
  params = ed.init(c, jax.random.key(0))
  kw = dict(start_id=1, eos_id=2)
  with pytest.raises(ValueError, match="max_new_tokens=40.*max_seq_len=32"):
    generate.generate(params, c, [[1, 2]], 40, **kw)
  with pytest.raises(ValueError, match="prompt 1 .*token ids"):
    generate.generate(params, c, [[1, 2], []], 4, **kw)
  with pytest.raises(ValueError, match="token id 64"):
    generate.generate(params, c, [[1, 64]], 4, **kw)
  with pytest.raises(ValueError, match="decoder-only"):
    generate.generate(params, tiny_model(), [[1]], 4, **kw)
  out = generate.generate(params, c, [[1, 2, 3], [4]], 5, temperature=1.0, **kw)
  assert len(out) == 2 and all(1 <= len(o) <= 5 for o in out)


def test_stream_and_generate_share_one_loop_for_both_model_kinds():
  # The encoder-decoder goes through the decoder-only model's loop: streaming one
  # jitted step at a time draws what the one-call while_loop draws.
  c = MODELS["llama_gqa"]
  params = _params(c)
  kw = dict(start_id=1, eos_id=2, temperature=0.7, seed=3)
  whole = generate.generate(params, c, [[5, 6, 7], [8]], 6, **kw)
  steps = np.stack(list(generate.stream(params, c, [[5, 6, 7], [8]], 6, **kw)), 1)
  for row, want in zip(steps, whole):
    np.testing.assert_array_equal(row[row >= 0], want)


def test_score_counts_edits_against_the_target():
  assert restoration.edit_distance("kitten", "sitting") == 3
  r = restoration.score(["to be", "Not"], ["To be,", "Not"])
  assert r["exact_match"] == 0.5 and r["char_accuracy"] == pytest.approx(1 - 2 / 9)
  assert restoration.capitalize("i think i am") == "I think I am"


def test_tiny_experiment_trains_end_to_end(tmp_path):
  config = config_io.apply_overrides(registry.experiment("shakespeare_restore_tiny"),
                                      ["train.steps=2", "train.batch_size=64",
                                       "data.seq_len=40",
                                       "model.max_seq_len=40"])
  workdir = str(tmp_path / "run")
  summary = loop.run(loop.setup(config, workdir))
  with open(os.path.join(workdir, "summary.json")) as f:
    written = json.load(f)
  assert written["final_val_exact_match"] == summary["final_val_exact_match"]
  assert {"final_val_loss", "final_val_token_accuracy"} <= set(written)
  assert written["params"] == param_count(ed.param_specs(config.model))["total"]
  # The run's checkpoint loads and restores a line.
  loaded, tok, _, params, step = load_run(workdir)
  assert step == 2 and loaded == config
  assert isinstance(restoration.restore(params, loaded, tok, ["to be"])[0], str)
