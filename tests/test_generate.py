"""Key/value-cache decoding and sampling: exact against the full forward pass; the CLI."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import sharding
from jaxlm.data import pipeline
from jaxlm.inference import generate, sampling
from jaxlm.run import checkpoint
from jaxlm.run.load import load_run
from jaxlm.train import loop
from jaxlm.config import MeshConfig
from jaxlm.models import decode, transformer
from tests.helpers import tiny_config, tiny_model
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# init_std large enough that greedy decoding of a random model does not repeat one token.
GQA = tiny_model(n_kv_heads=2, init_std=0.5)
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13]]


@pytest.fixture(scope="module")
def gqa_params():
  return transformer.init(GQA, jax.random.key(0))


@pytest.mark.parametrize("kw", [dict(n_kv_heads=2), dict(positions="learned", norm="layernorm",
                                                          mlp="gelu", use_bias=True),
                                dict(parameterization="mup", mup_base_width=16,
                                     mup_base_head_dim=4, tie_embeddings=False),
                                dict(n_kv_heads=2, qk_norm=True)],
                         ids=["gqa_rope", "gpt2_learned", "mup", "qk_norm"])
def test_cached_logits_equal_full_forward(kw):
  cfg = tiny_model(**kw)
  params = transformer.init(cfg, jax.random.key(0))
  tokens_BT = np.asarray(jax.random.randint(jax.random.key(1), (2, 20), 0, 64))
  full_BTV = np.asarray(transformer.apply(params, tokens_BT, cfg))
  lengths_B = np.array([5, 8])  # a ragged batch: row 0 is left-padded by 3
  prompt_BT = np.zeros((2, 8), np.int32)
  for b, n in enumerate(lengths_B):
    prompt_BT[b, 8 - n:] = tokens_BT[b, :n]
  logits_BV, cache = jax.jit(decode.prefill, static_argnames=("config", "slots"))(
      params, prompt_BT, lengths_B, config=cfg, slots=20)
  assert cache["k"].shape == (cfg.n_layers, 2, cfg.kv_heads, 20, cfg.head_dim)
  step = jax.jit(decode.decode_step, static_argnames="config")
  got, want = [logits_BV], [full_BTV[[0, 1], lengths_B - 1]]
  for i in range(10):  # teacher-forced: feed the sequence's own next tokens
    logits_BV, cache = step(params, cache, tokens_BT[[0, 1], lengths_B + i], config=cfg)
    got.append(logits_BV)
    want.append(full_BTV[[0, 1], lengths_B + i])
  np.testing.assert_allclose(np.stack(got), np.stack(want), atol=2e-5)


@functools.partial(jax.jit, static_argnames="config")
def _next_logits(params, buf_1S, n, *, config):
  return transformer.apply(params, buf_1S, config)[0, n - 1]


def _greedy_by_recompute(params, cfg, prompt, n):
  """Reference: a full forward pass per token, over the last max_seq_len tokens at most;
  past that, from the last max_seq_len // 2 (the context rule of generate())."""
  history, start, S = list(prompt), max(len(prompt) - cfg.max_seq_len, 0), cfg.max_seq_len
  for _ in range(n):
    if len(history) - start > S:
      start = len(history) - S // 2
    context = history[start:]
    buf = np.zeros((1, S), np.int32)  # right-padded: causal, so the padding is never seen
    buf[0, :len(context)] = context
    history.append(int(jnp.argmax(_next_logits(params, buf, len(context), config=cfg))))
  return history[len(prompt):]


def test_ragged_batch_greedy_equals_each_prompt_alone(gqa_params):
  batch = generate.generate(gqa_params, GQA, PROMPTS, 20, temperature=0)
  for prompt, row in zip(PROMPTS, batch):
    assert row.tolist() == _greedy_by_recompute(gqa_params, GQA, prompt, 20)
  assert len(set(batch[1].tolist())) > 3  # not a degenerate repeat


def test_past_max_seq_len_goes_on_from_recent_context(gqa_params):
  # 45 new tokens after 7 with max_seq_len 32: the context fills and restarts twice.
  got = generate.generate(gqa_params, GQA, [PROMPTS[1]], 45, temperature=0)[0]
  assert got.tolist() == _greedy_by_recompute(gqa_params, GQA, PROMPTS[1], 45)


def test_stream_equals_generate_and_seed_is_deterministic(gqa_params):
  kw = dict(temperature=1.0, top_k=20, top_p=0.9)
  free = generate.generate(gqa_params, GQA, PROMPTS, 20, seed=3, **kw)
  eos = int(free[0][3])
  a = generate.generate(gqa_params, GQA, PROMPTS, 20, seed=3, eos_id=eos, **kw)
  for row, unstopped in zip(a, free):  # the same draws, cut after the first eos
    hits = np.flatnonzero(unstopped == eos)
    assert row.tolist() == unstopped[:hits[0] + 1 if hits.size else 20].tolist()
  b = generate.generate(gqa_params, GQA, PROMPTS, 20, seed=3, eos_id=eos, **kw)
  c = generate.generate(gqa_params, GQA, PROMPTS, 20, seed=4, eos_id=eos, **kw)
  assert [x.tolist() for x in a] == [x.tolist() for x in b]
  assert [x.tolist() for x in a] != [x.tolist() for x in c]
  steps = list(generate.stream(gqa_params, GQA, PROMPTS, 20, seed=3, eos_id=eos, **kw))
  steps_BN = np.stack(steps, axis=1)
  assert [row[row >= 0].tolist() for row in steps_BN] == [x.tolist() for x in a]


def test_temperature_zero_and_top_k_one_equal_greedy(gqa_params):
  logits_BV = jax.random.normal(jax.random.key(0), (64, 50)) * 3
  greedy = np.argmax(logits_BV, axis=-1)
  key = jax.random.key(1)
  for temperature, top_k in ((0.0, 0), (1.0, 1), (0.0, 5)):
    got = sampling.sample_logits(key, logits_BV, jnp.float32(temperature), jnp.int32(top_k),
                                 jnp.float32(1.0))
    np.testing.assert_array_equal(got, greedy)
  g = generate.generate(gqa_params, GQA, PROMPTS, 20, temperature=0)
  k1 = generate.generate(gqa_params, GQA, PROMPTS, 20, temperature=1.5, top_k=1, seed=7)
  assert [x.tolist() for x in g] == [x.tolist() for x in k1]


def test_vocab_limit_never_draws_padding_ids():
  logits_BV = jnp.zeros((256, 10)).at[:, 7:].set(5.0)  # padding ids 7..9 most likely
  key = jax.random.key(2)
  for temperature in (0.0, 1.0):
    got = sampling.sample_logits(key, logits_BV, jnp.float32(temperature), jnp.int32(0),
                                 jnp.float32(1.0), jnp.int32(7))
    assert int(np.max(got)) < 7
  with pytest.raises(ValueError, match="vocab_limit"):
    sampling.Sampling(vocab_limit=-1)


def test_filters_keep_top_k_then_nucleus():
  probs = np.array([[0.5, 0.3, 0.15, 0.05]])
  logits = jnp.log(jnp.asarray(probs))
  kept = lambda k, p: np.isfinite(sampling.filter_logits(logits, k, p))[0].tolist()
  assert kept(0, 1.0) == [True] * 4
  assert kept(3, 1.0) == [True, True, True, False]
  assert kept(0, 0.5) == [True, False, False, False]  # the top token alone has 0.5
  assert kept(0, 0.79) == [True, True, False, False]
  assert kept(0, 0.81) == [True, True, True, False]
  assert kept(2, 0.99) == [True, True, False, False]  # top-k first, then top-p


def _chi2(counts, probs):
  expected = probs * counts.sum()
  return float(np.sum((counts - expected) ** 2 / expected))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0),
                                                     (1.0, 3, 1.0), (1.0, 0, 0.8)])
def test_sampled_distribution_matches_model_probabilities(temperature, top_k, top_p):
  cfg = tiny_model(vocab_size=8, init_std=0.15)
  params = transformer.init(cfg, jax.random.key(0))
  prompt = [1, 2, 3]
  logits = np.asarray(transformer.apply(params, jnp.asarray([prompt]), cfg)[0, -1], np.float64)
  p = np.exp(logits / temperature - np.max(logits / temperature))
  p /= p.sum()
  order = np.argsort(-p)
  keep = np.zeros(8, bool)
  keep[order[:top_k or 8]] = True
  q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
  above = np.cumsum(q[order]) - q[order]
  if top_p < 1:
    keep[order[above >= top_p]] = False
  expected = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
  n = 8000
  tokens = generate.generate(params, cfg, [prompt] * n, 1, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=0)
  counts = np.bincount(np.concatenate(tokens), minlength=8)
  assert counts[~keep].sum() == 0
  assert 0.05 < expected.max() < 0.9  # a spread, non-uniform distribution
  # Chi-square, df <= 7: the 0.1% critical value is 24.3; the seed is fixed.
  assert _chi2(counts[keep], expected[keep]) < 24.3, (counts, expected * n)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs the 8 fake CPU devices of conftest")
def test_mesh_sharded_greedy_equals_one_device(gqa_params):
  mesh = sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  rules = MeshConfig().rules
  sharded = jax.device_put(gqa_params, sharding.tree_shardings(transformer.param_specs(GQA),
                                                                mesh, rules))
  # 4 rows: batch divisible by data x fsdp; 4 query and 2 kv heads split over tensor.
  want = generate.generate(gqa_params, GQA, PROMPTS, 20, temperature=0)
  got = generate.generate(sharded, GQA, PROMPTS, 20, temperature=0, mesh=mesh, rules=rules)
  assert [x.tolist() for x in got] == [x.tolist() for x in want]


@pytest.mark.parametrize("kw,message", [
    (dict(temperature=-1.0), "temperature=-1.0 is invalid"),
    (dict(top_k=-2), "top_k=-2 is invalid"),
    (dict(top_p=0.0), "top_p=0.0 is invalid"),
    (dict(top_p=1.5), "top_p=1.5 is invalid"),
    (dict(prompts=[[1], []]), "prompt 1 has shape (0,)"),
    (dict(prompts=[[1, 64]]), "prompt 0 holds token id 64"),
])
def test_bad_input_names_the_setting(gqa_params, kw, message):
  prompts = kw.pop("prompts", PROMPTS)
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    generate.generate(gqa_params, GQA, prompts, 4, **kw)


# ---------------------------------------------------------------------------
# The command line, in subprocesses, on a workdir trained for a few steps.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run"))
  config = tiny_config()
  r = loop.setup(config, path)
  it = pipeline.train_iterator(r.dataset)
  state = r.trainer.init(jax.random.key(0))  # untrained: the CLI's plumbing is under test
  mngr = checkpoint.manager(path, 1, async_save=False)
  checkpoint.save(mngr, 1, state, it.get_state(), config)
  mngr.wait_until_finished()
  mngr.close()
  return path


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "jaxlm.generate", *args], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_streams_one_prompt_and_batches_a_prompt_file(workdir, tmp_path):
  out = _cli(f"--workdir={workdir}", "--prompt=ROMEO.", "--max_new_tokens=12",
             "--temperature=0")
  assert out.returncode == 0, out.stderr[-2000:]
  config, tok, mesh, params, _ = load_run(workdir)
  new = generate.generate(params, config.model, [tok.encode("ROMEO.")], 12, temperature=0,
                          eos_id=tok.eos_id)[0]
  assert out.stdout == "ROMEO." + tok.decode(new) + "\n"
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("ROMEO.\n\nJULIET.\n")
  out = _cli(f"--workdir={workdir}", f"--prompt_file={prompts}", "--num_samples=2",
             "--max_new_tokens=8", "--top_k=5", "--top_p=0.9", "--seed=1")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.count("=== prompt") == 4 and "prompt 2, sample 2 ===\nJULIET." in out.stdout


def test_cli_bad_input_is_one_line_and_exit_2(workdir, tmp_path):
  out = _cli(f"--workdir={workdir}", "--prompt=")
  assert out.returncode == 2 and out.stderr == "error: --prompt is empty; expected some text " \
      "to continue\n", out.stderr[-2000:]
  (tmp_path / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  out = _cli(f"--workdir={tmp_path}", "--prompt=hi", "--top_p=0.5")
  assert out.returncode == 2 and out.stderr.startswith("error: no checkpoint in"), out.stderr
  assert "Traceback" not in out.stderr
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    load_run(str(tmp_path / "nonexistent"))


def test_stop_ids_end_a_row_like_eos():
  config = GQA
  params = transformer.init(config, jax.random.key(0))
  prompts = [[1, 2, 3], [4, 5]]
  free = generate.generate(params, config, prompts, 8, temperature=0.0)
  stop = int(free[0][2])  # the third token row 0 draws
  stopped = generate.generate(params, config, prompts, 8, temperature=0.0, stop_ids=[stop])
  for row, cut in zip(free, stopped):
    ends = list(row).index(stop) + 1 if stop in row else len(row)
    assert list(cut) == list(row[:ends])  # kept as the last token, nothing after it
  assert len(stopped[0]) <= 3
