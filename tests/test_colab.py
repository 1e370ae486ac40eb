"""Executes launch/colab.ipynb end to end on CPU with nbclient, shrunk by its parameters cell."""

import os
import sys

import pytest
from conftest import xla_flags

nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install -e '.[test]')")
nbformat = pytest.importorskip("nbformat", reason="needs nbformat (pip install -e '.[test]')")
pytest.importorskip("ipykernel", reason="needs ipykernel (pip install -e '.[test]')")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "launch", "colab.ipynb")


def _outputs_text(cell) -> str:
  parts = []
  for out in cell.get("outputs", []):
    parts.append(out.get("text", ""))
    parts.append(out.get("data", {}).get("text/plain", ""))
  return "".join(parts)


def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  [params] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  workdir = tmp_path / "run"
  # Papermill-style injection without papermill: the cell is replaced, not appended to.
  params.source = f"REPO_URL = ''\nSTEPS = 4\nWORKDIR = {str(workdir)!r}\nSMOKE = True\n" \
                  "EXTRA_SET = []\nRUN_SWEEP = False\n"
  # The kernel, and the training subprocesses it starts, must use this interpreter and
  # find this checkout (jaxlm may not be pip-installed), on one CPU device, no GPU.
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  # One device (conftest's 8 fake ones are not needed), compiled fast as in every test.
  monkeypatch.setenv("XLA_FLAGS", xla_flags())
  # "python3" is ipykernel's own spec, whose "python" jupyter_client runs as sys.executable.
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  client.execute()
  text = "\n".join(_outputs_text(c) for c in nb.cells if c.cell_type == "code")
  assert f"python {sys.executable}" in text  # the kernel is this interpreter (the venv's)
  assert "runtime: cpu" in text
  assert "last train loss" in text
  assert "ROMEO." in text
  assert "scaling sweep skipped" in text
  assert (workdir / "metrics.jsonl").exists()
  assert (workdir / "loss.png").stat().st_size > 0
