"""Exported params load back without Orbax and equal the checkpoint's."""

import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlm import config as config_lib, config_io, sharding
from jaxlm.inference import export
from jaxlm.run import checkpoint
from jaxlm.train.step import Trainer
from jaxlm.data import pipeline
from tests.helpers import tiny_config
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A workdir with checkpoints at steps 1 and 2 of a tiny one-device run."""
  workdir = str(tmp_path_factory.mktemp("export") / "run")
  config = tiny_config(**{"mesh.data": 1})
  tok = pipeline.tokenizer_for(config.data, config.model.vocab_size)
  trainer = Trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]),
                          tok.token_bytes())
  it = pipeline.train_iterator(pipeline.train_dataset(config.data, tok, 8, 0))
  state = trainer.init(jax.random.key(0))
  mngr = checkpoint.manager(workdir, keep=2, async_save=False)
  for step in (1, 2):
    state, _ = trainer.step(state, trainer.device_batch(next(it)))
    checkpoint.save(mngr, step, state, it.get_state(), config)
  mngr.close()
  return workdir, config, trainer


@pytest.mark.parametrize("suffix", [".safetensors", ".msgpack"])
def test_exported_params_equal_the_checkpoint(run_dir, suffix, tmp_path):
  workdir, config, trainer = run_dir
  out = str(tmp_path / f"model{suffix}")
  assert export.export(workdir, out, step=1) == 1
  params, saved_config, step = export.load(out)
  assert step == 1 and config_io.from_dict(config_lib.Config, saved_config) == config
  want, _ = checkpoint.restore_params(workdir, trainer.abstract_state().params, step=1)
  assert jax.tree.structure(params) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert [p for p in os.listdir(tmp_path) if ".tmp" in p] == []


def test_safetensors_layout_follows_the_spec(run_dir, tmp_path):
  out = str(tmp_path / "model.safetensors")
  export.export(run_dir[0], out)
  blob = open(out, "rb").read()
  (n,) = struct.unpack("<Q", blob[:8])
  header = json.loads(blob[8:8 + n])
  assert n % 8 == 0 and header["__metadata__"]["step"] == "2"
  entries = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
  assert entries[0][0][0] == 0 and entries[-1][0][1] == len(blob) - 8 - n
  for (a, b), (c, _) in zip([e[0] for e in entries], [e[0] for e in entries[1:]]):
    assert b == c  # contiguous, no gaps or overlaps
  embed = header["embed"]
  assert embed["dtype"] == "F32" and embed["shape"] == [257, 32]
  begin, end = embed["data_offsets"]
  raw = np.frombuffer(blob[8 + n + begin:8 + n + end], "<f4").reshape(257, 32)
  np.testing.assert_array_equal(raw, export.load(out)[0]["embed"])


def test_cli_writes_the_file_and_rejects_bad_input(run_dir, tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)

  def cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxlm.export", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)

  out = cli(f"--workdir={run_dir[0]}", f"--out={tmp_path / 'm.safetensors'}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "wrote the params of step 2" in out.stdout
  assert export.load(str(tmp_path / "m.safetensors"))[2] == 2
  out = cli(f"--workdir={run_dir[0]}", f"--out={tmp_path / 'm.bin'}")
  assert out.returncode == 2 and "expected a file name ending in .safetensors" in out.stderr
  assert "Traceback" not in out.stderr and not os.path.exists(tmp_path / "m.bin")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    export.export(str(tmp_path / "nowhere"), str(tmp_path / "m.msgpack"))
  assert not os.path.exists(tmp_path / "nowhere")  # reading a run never creates one
  with pytest.raises(FileNotFoundError, match=r"at step 7 .*expected one of steps \[1, 2\]"):
    export.export(run_dir[0], str(tmp_path / "m.msgpack"), step=7)
