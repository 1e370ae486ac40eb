import pytest

from jaxlm import config as config_lib
from jaxlm import config_io
from jaxlm.config import Config, ConfigError


def test_override_parses_to_declared_types():
  c = config_io.apply_overrides(Config(), ["model.d_model=128", "optim.lr=1e-3",
                                            "model.tie_embeddings=false", "data.tokenizer=bytes",
                                            "train.steps=1_000"])
  assert c.model.d_model == 128 and isinstance(c.model.d_model, int)
  assert c.optim.lr == 1e-3
  assert c.model.tie_embeddings is False
  assert c.data.tokenizer == "bytes"
  assert c.train.steps == 1000
  c = config_io.apply_overrides(Config(), ["checkpoint.at_steps=100, 2_500", "optim.name=muon"])
  assert c.checkpoint.at_steps == (100, 2500) and config_io.loads(config_io.dumps(c)) == c


def test_unknown_key_names_closest():
  with pytest.raises(ConfigError, match="unknown config key 'model.dmodel'.*model.d_model"):
    config_io.apply_overrides(Config(), ["model.dmodel=3"])


@pytest.mark.parametrize("item,pattern", [
    ("model.d_model=abc", "model.d_model='abc' is not a valid int"),
    ("model.tie_embeddings=maybe", "not a valid bool"),
    ("optim.lr=fast", "optim.lr='fast' is not a valid float"),
    ("model.attention=flash", "model.attention='flash' is invalid: expected one of"),
    ("model.n_heads=3", "model.n_heads=3 is invalid: expected a divisor of model.d_model"),
    ("train.steps=0", "train.steps=0 is invalid"),
    ("data.seq_len=4096", "data.seq_len=4096 is invalid: expected at most model.max_seq_len"),
    ("model.d_model", "expected key=value"),
    ("mesh.rules=x", "cannot be set with --set"),
    ("model.parameterization=ntk", "model.parameterization='ntk' is invalid: expected one of"),
    ("model.mup_base_width=0", "model.mup_base_width=0 is invalid"),
    ("checkpoint.at_steps=10,x", "checkpoint.at_steps='10,x' is not a comma-separated list"),
    ("checkpoint.at_steps=0", r"checkpoint.at_steps=\(0,\) is invalid: expected positive"),
    ("optim.name=sgd", "optim.name='sgd' is invalid: expected one of"),
    ("train.microbatches=0", "train.microbatches=0 is invalid"),
])
def test_bad_overrides_name_key_and_expectation(item, pattern):
  with pytest.raises(ConfigError, match=pattern):
    config_io.apply_overrides(Config(), [item])


def test_json_round_trip():
  c = config_io.apply_overrides(Config(), ["model.n_kv_heads=2", "mesh.fsdp=2"])
  assert config_io.loads(config_io.dumps(c)) == c


def test_configs_are_immutable():
  with pytest.raises(Exception):
    Config().model.d_model = 3  # type: ignore[misc]


def test_derived_values():
  m = Config().model
  assert m.kv_heads == m.n_heads and m.head_dim == m.d_model // m.n_heads
  gelu = config_lib.replace(Config(), **{"model.mlp": "gelu"}).model
  assert gelu.ff_dim == 4 * gelu.d_model
  assert m.ff_dim % 64 == 0 and m.ff_dim >= 8 * m.d_model // 3


def test_mup_multipliers():
  m = config_io.apply_overrides(Config(), ["model.d_model=512", "model.n_heads=4"]).model
  assert (m.width_mult, m.readout_mult, m.attention_scale) == (1.0, 1.0, 128 ** -0.5)
  mup = config_lib.replace(m, parameterization="mup", mup_base_width=128, mup_base_head_dim=32)
  assert mup.width_mult == 4.0 and mup.readout_mult == 0.25
  assert mup.attention_scale == pytest.approx(32 ** 0.5 / 128)  # 1/H, equal to 1/sqrt(32) at 32
