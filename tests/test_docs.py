"""Docs that are generated from code stay current."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_reference_is_current():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_config_docs.py"),
                        "--check"], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr


def test_config_reference_lists_every_key():
  from jaxlm import config as config_lib, config_io
  text = open(os.path.join(ROOT, "docs", "config.md")).read()
  for key in config_io.leaf_keys(config_lib.Config()):
    assert f"`{key}`" in text, key
