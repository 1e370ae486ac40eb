"""run/load.py: one loader for every tool; runs written by earlier versions load and resume."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxlm import config as config_lib
from jaxlm.inference import export
from jaxlm.inference.generate import generate
from jaxlm.params import param_count
from jaxlm.run import files
from jaxlm.run.load import load_run
from jaxlm.tasks import get as get_task
from jaxlm.train import loop

# A 2-step run of shakespeare_char (d_model 16, one layer, bytes) written by jaxlm at
# commit e7b2995, before the package was laid out in layers. Resumed by that commit
# for one more step on this test's 8 CPU devices (mesh.data=4, mesh.tensor=2, XLA
# optimization level 0), step 3 had loss 5.517101287841797 and val_loss 5.444032182126558
# over the whole validation split (8,000 batches: 22 s here). This code matched both, so
# the test now evaluates the split's first batch only (train.final_eval_batches=1), whose
# loss with those step-3 params is 5.502860069274902.
OLD_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "run_e7b2995")
OLD_STEP3 = {"loss": 5.517101287841797, "val_loss": 5.502860069274902}


@pytest.fixture
def old_run(tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(OLD_RUN, workdir)
  return workdir


def test_a_run_from_before_the_layout_loads_exports_and_generates(old_run, tmp_path):
  run = load_run(old_run)
  assert run.step == 2 and run.config == files.read_config(old_run)
  assert len(run.mesh.devices.flat) == jax.device_count()  # its 1-device mesh: local fallback
  with open(os.path.join(old_run, "summary.json")) as f:
    assert param_count(get_task(run.config).param_specs())["total"] == json.load(f)["params"]
  config, tok, _, params, step = run  # unpacks as (config, tokenizer, mesh, params, step)
  new = generate(params, config.model, [tok.encode("ROMEO.")], 5, temperature=0.0,
                 eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
  assert len(new) == 5
  out = str(tmp_path / "m.safetensors")
  assert export.export(old_run, out) == 2
  exported, _, _ = export.load(out)
  np.testing.assert_array_equal(exported["embed"], np.asarray(params["embed"]))


def test_a_run_from_before_the_layout_resumes_as_it_would_have(old_run):
  config = config_lib.replace(files.read_config(old_run), **{
      "train.steps": 3, "mesh.data": 4, "mesh.tensor": 2, "train.final_eval_batches": 1})
  summary = loop.run(loop.setup(config, old_run, "resume"))
  assert summary["steps"] == 3
  records = [json.loads(line) for line in open(os.path.join(old_run, "metrics.jsonl"))]
  step3 = {k: v for r in records if r["step"] == 3 for k, v in r.items()}
  assert step3["loss"] == pytest.approx(OLD_STEP3["loss"], rel=1e-5)
  assert step3["val_loss"] == pytest.approx(OLD_STEP3["val_loss"], rel=1e-5)


def test_what_is_not_a_run_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no config.json and no checkpoint"):
    load_run(str(tmp_path / "nowhere"))
  assert not os.path.exists(tmp_path / "nowhere")
  shutil.copytree(OLD_RUN, tmp_path / "run")
  with pytest.raises(FileNotFoundError, match=r"at step 7 .*expected one of steps \[2\]"):
    load_run(str(tmp_path / "run"), 7)
  with pytest.raises(config_lib.ConfigError, match="task.kind='lm' run; expected a seq2seq"):
    load_run(str(tmp_path / "run"), task_kind="seq2seq")
