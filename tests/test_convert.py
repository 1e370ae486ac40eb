"""Hugging Face GPT-2 and Llama models become jaxlm runs and back with the same logits."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (pip install -e '.[test]')")
transformers = pytest.importorskip("transformers",
                                   reason="needs transformers (pip install -e '.[test]')")

from jaxlm.run.load import load_run  # noqa: E402
from jaxlm.config import ConfigError  # noqa: E402
from jaxlm.convert import hf as convert  # noqa: E402
from jaxlm.models import transformer  # noqa: E402
from tests.helpers import tiny_model  # noqa: E402
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 300  # >= 257, the byte tokenizer that a converted run names
TOL = 1e-4
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
CASES = {  # name: (config, the class --to_hf writes)
    "gpt2_tied": (lambda: transformers.GPT2Config(
        vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, layer_norm_epsilon=1e-4),
        "GPT2LMHeadModel"),
    "gpt2_untied": (lambda: transformers.GPT2Config(
        vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=48,
        activation_function="gelu_pytorch_tanh", tie_word_embeddings=False), "GPT2LMHeadModel"),
    "llama_gqa_sharded": (lambda: transformers.LlamaConfig(
        **SMALL, num_key_value_heads=2, rope_theta=500.0, rms_norm_eps=1e-5), "LlamaForCausalLM"),
    "llama_tied": (lambda: transformers.LlamaConfig(**SMALL, tie_word_embeddings=True),
                   "LlamaForCausalLM"),
    "llama_attention_bias": (lambda: transformers.LlamaConfig(
        **SMALL, num_key_value_heads=1, attention_bias=True), "LlamaForCausalLM"),
    "mistral": (lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2,
                                                   sliding_window=16), "LlamaForCausalLM"),
}


def _hf_model(config, seed=0):
  """A causal LM with every parameter random: norm scales and biases too, away from 1 and 0."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.rand_like(p) + 0.5 if p.ndim == 1 else 0.1 * torch.randn_like(p))
  return model.eval()


def _logits(model, tokens_BT):
  with torch.no_grad():
    return model(torch.from_numpy(tokens_BT)).logits.float().numpy()


@pytest.mark.parametrize("case", CASES)
def test_import_and_export_keep_the_logits(case, tmp_path):
  make_config, arch = CASES[case]
  hf_model = _hf_model(make_config())
  src = tmp_path / "hf"
  hf_model.save_pretrained(src, **({"max_shard_size": "20KB"} if "sharded" in case else {}))
  assert ("sharded" in case) == (src / "model.safetensors.index.json").exists()
  tokens_BT = np.random.RandomState(1).randint(0, V, (2, 12)).astype(np.int32)
  want_BTV = _logits(hf_model, tokens_BT)

  convert.from_hf(str(src), str(tmp_path / "run"))
  config, _, _, params, step = load_run(str(tmp_path / "run"))
  assert step == 0 and config.model.param_dtype == "float32"
  got_BTV = np.asarray(transformer.apply(params, tokens_BT, config.model))
  imported = float(np.abs(got_BTV - want_BTV).max())

  assert convert.to_hf(str(tmp_path / "run"), str(tmp_path / "back")) == (arch, 0)
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
  assert type(back).__name__ == arch
  exported = float(np.abs(_logits(back, tokens_BT) - got_BTV).max())
  print(f"\n{case}: max |logits diff| import {imported:.3g}, export {exported:.3g}")
  assert imported < TOL and exported < TOL
  original = hf_model.state_dict()
  for name, tensor in back.state_dict().items():  # the same weights, bit for bit
    assert torch.equal(tensor, original[name]) if name in original else not tensor.any(), name
  if case == "mistral":  # exact below the sliding window, which bounds the context
    assert config.model.max_seq_len == 16
  assert sorted(os.listdir(tmp_path)) == ["back", "hf", "run"]  # no temporary leftovers


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **SMALL}
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": V,
        "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 4}


@pytest.mark.parametrize("base, change, message", [
    (LLAMA, {"model_type": "bert", "architectures": ["BertForMaskedLM"]}, "model_type='bert'"),
    (LLAMA, {"architectures": ["LlamaForSequenceClassification"]}, "architectures=["),
    (LLAMA, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling={"),
    (LLAMA, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}},
     "rope_parameters={"),
    (LLAMA, {"hidden_act": "gelu"}, "hidden_act='gelu'"),
    (LLAMA, {"head_dim": 16}, "head_dim=16"),
    (LLAMA, {"num_key_value_heads": 3}, "num_key_value_heads=3"),
    (GPT2, {"activation_function": "relu"}, "activation_function='relu'"),
    (GPT2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    (GPT2, {"n_embd": None}, "no 'n_embd'"),
])
def test_unsupported_configs_are_errors_naming_the_key(base, change, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    convert.model_config({**base, **change})


def test_supported_config_keys_map_to_the_model_config():
  m = convert.model_config({**LLAMA, "num_key_value_heads": 2, "rope_theta": 500.0,
                            "rope_scaling": None, "rms_norm_eps": 1e-5})
  assert (m.kv_heads, m.ff_dim, m.rope_theta, m.norm_eps, m.tie_embeddings) == (2, 48, 500.0,
                                                                              1e-5, False)
  m = convert.model_config(GPT2)
  assert (m.positions, m.norm, m.mlp, m.use_bias, m.ff_dim, m.tie_embeddings) == (
      "learned", "layernorm", "gelu", True, 128, True)


@pytest.mark.parametrize("changes, message", [
    (dict(positions="rope", norm="layernorm", mlp="swiglu"), "model.norm='layernorm'"),
    (dict(positions="rope", norm="rmsnorm", mlp="gelu"), "model.mlp='gelu'"),
    (dict(positions="learned", norm="layernorm", mlp="swiglu"), "model.mlp='swiglu'"),
    (dict(positions="learned", norm="layernorm", mlp="gelu", n_kv_heads=2), "model.n_kv_heads=2"),
    (dict(positions="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True), "model.qk_norm=True"),
    (dict(positions="learned", norm="layernorm", mlp="gelu", use_bias=True, qk_norm=True),
     "model.qk_norm=True"),
])
def test_models_without_a_hf_equivalent_are_errors_naming_the_key(changes, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    convert.hf_model_config(tiny_model(**changes))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("convert") / "gpt2"
  _hf_model(CASES["gpt2_tied"][0]()).save_pretrained(path)
  return path


@pytest.mark.parametrize("edit, message", [("drop", "has no tensor 'transformer.ln_f.bias'"),
                                           ("add", "does not have: transformer.h.0.extra")])
def test_missing_or_extra_tensors_are_errors_and_write_nothing(gpt2_dir, edit, message, tmp_path):
  from safetensors.numpy import load_file, save_file
  tensors = load_file(gpt2_dir / "model.safetensors")
  if edit == "drop":
    del tensors["transformer.ln_f.bias"]
  else:
    tensors["transformer.h.0.extra"] = np.zeros(3, np.float32)
  src = tmp_path / "hf"
  src.mkdir()
  save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
  (src / "config.json").write_text((gpt2_dir / "config.json").read_text())
  with pytest.raises(ValueError, match=re.escape(message)):
    convert.from_hf(str(src), str(tmp_path / "run"))
  assert os.listdir(tmp_path) == ["hf"]


def test_bfloat16_weights_are_read_exactly(tmp_path):
  model = _hf_model(CASES["llama_tied"][0]()).to(torch.bfloat16)
  model.save_pretrained(tmp_path)
  config, params = convert.read_hf(str(tmp_path))
  want = model.model.embed_tokens.weight.detach().float().numpy()
  assert params["embed"].dtype == np.float32 and config.model.param_dtype == "float32"
  np.testing.assert_array_equal(params["embed"], want)


def test_existing_targets_are_never_overwritten(gpt2_dir, tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="--workdir .* already exists"):
    convert.from_hf(str(gpt2_dir), str(tmp_path / "run"))
  with pytest.raises(FileExistsError, match="--to_hf .* already exists"):
    convert.to_hf(str(tmp_path / "elsewhere"), str(tmp_path / "run"))
  assert os.listdir(tmp_path / "run") == ["notes.txt"]


def test_cli_converts_both_ways_and_rejects_bad_input(gpt2_dir, tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)

  def cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxlm.convert", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)

  run, back = tmp_path / "run", tmp_path / "back"
  out = cli(f"--from_hf={gpt2_dir}", f"--workdir={run}", "--dtype=bfloat16")
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads((run / "config.json").read_text())["model"]["param_dtype"] == "bfloat16"
  out = cli(f"--to_hf={back}", f"--workdir={run}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "as a GPT2LMHeadModel" in out.stdout
  hf = json.loads((back / "config.json").read_text())
  assert (hf["architectures"], hf["model_type"], hf["dtype"]) == (["GPT2LMHeadModel"], "gpt2",
                                                                  "bfloat16")
  model = transformers.AutoModelForCausalLM.from_pretrained(back).float()
  tokens_BT = np.arange(24, dtype=np.int64).reshape(2, 12)
  want_BTV = _logits(_hf_model(CASES["gpt2_tied"][0]()), tokens_BT)
  diff = float(np.abs(_logits(model, tokens_BT) - want_BTV).max())
  print(f"\ngpt2 through bfloat16 params: max |logits diff| {diff:.3g}")
  assert diff < 0.1  # bfloat16 keeps 8 bits of mantissa
  out = cli(f"--from_hf={gpt2_dir}", f"--workdir={run}")
  assert out.returncode == 2 and out.stderr.count("\n") == 1
  assert out.stderr.startswith(f"error: --workdir {run} already exists")
