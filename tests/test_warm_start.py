"""Branches (init.from_step): a run continuing another's whole state at a saved step."""

import json

import pytest

from jaxlm import config as config_lib
from jaxlm.config import ConfigError
from jaxlm.run import checkpoint
from jaxlm.train import loop
from tests.helpers import tiny_config

WSD = {"optim.schedule": "wsd", "optim.decay_steps": 4, "optim.warmup_steps": 2,
       "train.log_every": 1}


def _run(config, workdir):
  return loop.run(loop.setup(config, str(workdir)))


def _losses(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  """A 12-step WSD run (stable to step 8) that keeps its step-6 checkpoint."""
  workdir = tmp_path_factory.mktemp("parent")
  config = tiny_config(**WSD, **{"train.steps": 12, "checkpoint.at_steps": (6,)})
  _run(config, workdir)
  return config, str(workdir)


def test_a_branch_equals_the_run_it_stands_for(parent, tmp_path):
  # Branching a 10-step WSD run off the parent at step 6 gives exactly the run
  # trained from scratch with that schedule: same losses, same final evaluation.
  config, parent_dir = parent
  assert checkpoint.saved_steps(parent_dir) == [6, 12]  # at_steps outlives checkpoint.keep
  fresh = config_lib.replace(config, **{"train.steps": 10, "checkpoint.at_steps": ()})
  want = _run(fresh, tmp_path / "fresh")
  branch = config_lib.replace(fresh, **{"init.from_workdir": parent_dir, "init.from_step": 6})
  got = _run(branch, tmp_path / "branch")
  assert got["final_val_loss"] == want["final_val_loss"]
  assert _losses(tmp_path / "branch") == _losses(tmp_path / "fresh")[6:]
  assert got["parent"] == {"workdir": parent_dir, "step": 6, "tokens": 6 * 8 * 32,
                           "flops": got["flops"] * 6 / 10}
  again = _run(branch, tmp_path / "branch")  # finished: a rerun resumes its own checkpoint
  assert again["final_val_loss"] == want["final_val_loss"]


@pytest.mark.parametrize("dotted,message", [
    ({"init.from_step": 5}, "no checkpoint at step 5.*checkpoint.at_steps"),
    ({"model.d_model": 64}, "model.d_model=32 but this run sets model.d_model=64"),
    ({"train.batch_size": 16}, "train.batch_size=8 but this run sets 16"),
    ({"optim.decay_steps": 7}, "at step 6 .*learning rate.*optim.decay_steps"),
])
def test_a_branch_that_cannot_continue_its_parent_is_refused(parent, tmp_path, dotted,
                                                             message):
  config, parent_dir = parent
  branch = config_lib.replace(config, **{"train.steps": 10, "init.from_workdir": parent_dir,
                                         "init.from_step": 6, **dotted})
  with pytest.raises(ConfigError, match=message):
    loop.setup(branch, str(tmp_path / "b"))
  with pytest.raises(ConfigError, match="init.from_step=12.*below train.steps=10"):
    config_lib.replace(branch, **{"init.from_step": 12})
