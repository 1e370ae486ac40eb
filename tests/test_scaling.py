import csv
import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlm import config as config_lib, config_io, registry
from jaxlm.config import ModelConfig
from jaxlm.models import transformer
from jaxlm.cli.scaling import main as cli
from jaxlm.scaling import collect, fit, flops, sweeps, transfer
from jaxlm.train import optim
from tests.helpers import tiny_model
from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUE = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "positions": "learned"},
                                {"mlp": "gelu", "use_bias": True, "n_kv_heads": 2}])
def test_params_equal_the_initialized_model(kw):
  model = tiny_model(**kw)
  tree = transformer.init(model, jax.random.key(0))
  total = sum(x.size for x in jax.tree.leaves(tree))
  embedding = sum(tree[k].size for k in ("embed", "pos_embed", "unembed") if k in tree)
  assert flops.params(model) == {"total": total, "non_embedding": total - embedding}


def test_six_nd_and_exact_conventions():
  # A 7B-class shape (Chinchilla table A4 compares 6ND and the exact count there).
  big = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, max_seq_len=2048,
                    tie_embeddings=False)
  n = flops.params(big)["total"]
  six = flops.training_flops(big, 2048, 1e9, "6ND")
  assert six == {"flops": 6.0 * n * 1e9, "convention": "6ND", "params": n,
                 "non_embedding_params": flops.params(big)["non_embedding"]}
  exact = flops.training_flops(big, 2048, 1e9, "exact")
  assert exact["convention"] == "exact"
  assert abs(exact["flops"] / six["flops"] - 1) < 0.10  # table A4: within ~10%
  narrow = tiny_model(d_model=32, n_layers=2, n_heads=2, max_seq_len=4096)
  ratio = (flops.training_flops(narrow, 4096, 1e6)["flops"]
           / flops.training_flops(narrow, 4096, 1e6, "6ND")["flops"])
  assert ratio > 5  # attention's T² terms dominate a narrow model with a long context
  with pytest.raises(ValueError, match="expected one of 6ND, exact"):
    flops.training_flops(big, 1024, 1.0, "kaplan")


def test_every_sweep_builds_and_its_overrides_apply():
  names = registry.names("sweep")
  assert {"shakespeare_isoflop", "shakespeare_isoflop_tiny", "shakespeare_grid"} <= set(names)
  for name in names:
    spec = registry.sweep(name)
    runs = sweeps.expand(spec)
    assert runs and len({r.name for r in runs}) == len(runs)
    base = registry.experiment(spec.base)
    for run in runs:
      assert all(c.isalnum() or c in "-._" for c in run.name)
      config = config_io.apply_overrides(base, list(run.overrides))
      assert config.train.steps >= 1


def test_isoflop_spec_shapes_and_budgets():
  spec = registry.sweep("shakespeare_isoflop")
  runs = sweeps.expand(spec)
  # 3 budgets a decade apart x 6 distinct sizes: a shape that repeats within a
  # budget gives way to the next closest one, never to a missing point.
  assert len(runs) == 18 and len({r.name.split("-N")[0] for r in runs}) == 3
  per_budget = {}
  for run in runs:
    c = sweeps.run_config(spec, run)
    n = flops.params(c.model)["total"]
    budget = float(run.name.split("-")[1][1:])
    tokens = c.train.steps * c.train.batch_size * c.data.seq_len
    assert abs(6 * n * tokens / budget - 1) < 0.1 or c.train.steps < 20  # step rounding
    assert c.model.head_dim == 8 and c.data.seq_len == 64 and c.train.batch_size == 64
    assert c.data.tokenizer == "bytes"
    assert c.optim.lr * c.model.d_model == pytest.approx(4e-3 * 64, rel=1e-3)  # lr ∝ 1/width
    per_budget.setdefault(budget, set()).add((c.model.d_model, c.model.n_layers))
  assert sorted(per_budget) == [3e11, 1e12, 3e12]
  assert all(len(shapes) == 6 for shapes in per_budget.values())
  shape = sweeps.shape_for(1e6, registry.experiment("shakespeare").model)
  assert abs(np.log(shape.non_embedding_params / 1e6)) < 0.15
  assert sweeps.sci(120000) == "1.2e5" and sweeps.sci(3e-3) == "3e-3"


def test_isoflop_seeds_reuse_seed_zero_runs():
  one = sweeps.expand(registry.sweep("shakespeare_isoflop"))
  two = sweeps.expand(registry.sweep("shakespeare_isoflop_seeds"))
  assert len(two) == 2 * len(one) and set(one) <= set(two)  # seed 0: same names, overrides
  extra = [r for r in two if r not in one]
  assert all(r.name.endswith("-s1") and r.overrides[-1] == "seed=1" for r in extra)
  assert {r.name[:-3] for r in extra} == {r.name for r in one}
  with pytest.raises(ValueError, match="seeds"):
    dataclasses.replace(registry.sweep("shakespeare_isoflop"), seeds=(1, 1)).runs()


def test_shape_for_passes_over_excluded_shapes_and_lr_at_width_is_checked():
  base = registry.experiment("shakespeare_char").model
  first = sweeps.shape_for(2e4, base, 16.0, 8)
  second = sweeps.shape_for(2e4, base, 16.0, 8, exclude={first})
  third = sweeps.shape_for(2e4, base, 16.0, 8, exclude={first, second})
  assert len({first, second, third}) == 3
  assert all(abs(np.log(s.non_embedding_params / 2e4)) < 1 for s in (first, second, third))
  spec = sweeps.IsoFlopSpec(base="shakespeare_char", budgets=(1e11,), n_ranges=((1e4, 2e4),),
                            sizes=2, head_dim=8, lr_at_width=(0.0, 64))
  with pytest.raises(ValueError, match="lr_at_width"):
    spec.runs()
  with pytest.raises(ValueError, match="lr_at_width"):
    dataclasses.replace(spec, lr_at_width=(4e-3,)).runs()


def _synthetic(seed=0, noise=0.01):
  rng = np.random.default_rng(seed)
  n, d, c = [], [], []
  for budget in (1e18, 1e19, 1e20, 1e21):
    for size in np.geomspace(np.sqrt(budget / 120) / 8, np.sqrt(budget / 120) * 8, 7):
      n.append(size), d.append(budget / (6 * size)), c.append(budget)
  n, d = np.array(n), np.array(d)
  t = TRUE
  loss = (t["E"] + t["A"] / n ** t["alpha"] + t["B"] / d ** t["beta"])
  loss = loss * np.exp(rng.normal(0, noise, len(n)))
  return {"params": n, "tokens": d, "loss": loss, "flops": np.array(c),
          "flops_convention": "6ND"}


def test_fit_recovers_a_known_law():
  result = fit.fit(_synthetic(), n_boot=20)
  p, iso = result["parametric"], result["isoflop"]
  assert p["converged"] and result["flops_convention"] == "6ND"
  assert abs(p["alpha"] - 0.34) < 0.05 and abs(p["beta"] - 0.28) < 0.05
  assert abs(p["E"] - 1.7) < 0.15
  a_true = 0.28 / (0.34 + 0.28)
  assert abs(p["a"] - a_true) < 0.03 and abs(p["b"] - (1 - a_true)) < 0.03
  assert abs(iso["a"] - a_true) < 0.04 and abs(iso["a"] + iso["b"] - 1) < 0.05
  assert all("n_opt" in b for b in iso["budgets"]) and len(iso["budgets"]) == 4
  for key in ("alpha", "beta", "E", "a"):
    lo, hi = p["ci"][key]
    assert lo < hi
  assert json.loads(json.dumps(result))  # plain JSON


def _write(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def test_csv_errors_name_the_column_and_row(tmp_path, capsys):
  path = str(tmp_path / "runs.csv")
  _write(path, ["name", "params", "loss"], [["r1", 1e6, 3.0]])
  with pytest.raises(ValueError, match="column 'tokens' is missing"):
    collect.read_runs(path)
  _write(path, ["name", "params", "tokens", "loss"], [["r1", 1e6, 1e8, 3.0],
                                                      ["r2", 1e6, 0, 3.0]])
  with pytest.raises(ValueError, match=r"row 2 \('r2'\) has tokens=0"):
    collect.read_runs(path)
  with pytest.raises(SystemExit) as e:
    cli(["fit", "--runs", path, "--out", str(tmp_path / "fit.json")])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "row 2" in err and "\n" not in err


def test_fit_predict_and_plots_from_csv(tmp_path, capsys):
  data = _synthetic(seed=1)
  path = str(tmp_path / "runs.csv")
  _write(path, ["params", "tokens", "loss", "note"],
         [[repr(float(n)), repr(float(d)), repr(float(l)), "x"] for n, d, l in
          zip(data["params"], data["tokens"], data["loss"])])
  assert collect.read_runs(path)["flops_convention"] == "6ND"
  out, plot_dir = str(tmp_path / "fit.json"), str(tmp_path / "plots")
  cli(["fit", "--runs", path, "--out", out, "--plots", plot_dir, "--n_boot", "10"])
  result = json.load(open(out))
  assert set(result) >= {"parametric", "isoflop", "flops_convention"}
  assert set(result["parametric"]) >= {"E", "A", "B", "alpha", "beta", "a", "b", "objective",
                                       "n_runs", "ci"}
  for name in ("isoflop.png", "frontier.png", "optimal.png"):
    with open(os.path.join(plot_dir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  capsys.readouterr()
  cli(["predict", "--fit", out, "--flops", "1e21"])
  text = capsys.readouterr().out
  assert "N_opt" in text and "D_opt" in text and "loss" in text and "[" in text
  pred = fit.predict(result, 1e21)["parametric"]
  lo, hi = pred["ci"]["loss"]
  assert lo <= pred["loss"] <= hi and 1.7 < pred["loss"] < 3


def test_isoflop_rejects_a_downward_parabola():
  n = np.array([1e6, 2e6, 4e6])
  out = fit.fit_isoflop(n, 1e18 / (6 * n), np.array([3.0, 3.5, 3.0]), np.full(3, 1e18),
                        np.zeros(3, int))
  assert out["budgets"][0]["rejected"] == "parabola opens downward" and out["a"] is None


def test_tiny_sweep_end_to_end(tmp_path):
  sweep_dir = str(tmp_path / "sweep")
  launcher = [sys.executable, os.path.join(ROOT, "launch", "sweep_local.py"),
              "--sweep=shakespeare_isoflop_tiny", f"--dir={sweep_dir}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}  # one device per run
  dry = subprocess.run(launcher + ["--dry_run"], capture_output=True, text=True, check=True)
  assert dry.stdout.count("-m jaxlm.main") == 6 and "--set=model.d_model=" in dry.stdout
  # One budget's 3 runs (2 at once) keep the test short; the other 3 must show as pending.
  done = subprocess.run(launcher + ["--parallel=2", "--only=C3e8"], capture_output=True,
                        text=True, env=env)
  assert done.returncode == 0, done.stdout + done.stderr
  out = str(tmp_path / "runs.csv")
  cli(["collect", "--sweep", sweep_dir, "--out", out])
  rows = list(csv.DictReader(open(out)))
  assert len(rows) == 6 and [r["status"] for r in rows].count("pending") == 3
  ok = [r for r in rows if r["status"] == "ok"]
  assert len(ok) == 3 and all(r["name"].startswith("isoflop-C3e8-") for r in ok)
  assert all(float(r["loss"]) > 0 and float(r["flops"]) > 0 and float(r["bpb"]) > 0
             and float(r["wall_seconds"]) > 0 for r in ok)
  assert {r["flops_convention"] for r in ok} == {"6ND"}
  exact = {r["name"]: r.get("flops") for r in collect.collect(sweep_dir, "exact")}
  assert all(exact[r["name"]] > float(r["flops"]) for r in ok)  # embeddings, attention
  again = subprocess.run(launcher + ["--only=C3e8"], capture_output=True, text=True, check=True)
  assert "3 of 3 runs done; running 0" in again.stdout
  # An interrupted run (config written, no summary) and a failed one are listed too.
  os.remove(os.path.join(sweep_dir, ok[0]["name"], "summary.json"))
  os.remove(os.path.join(sweep_dir, ok[0]["name"], "status.json"))
  with open(os.path.join(sweep_dir, ok[1]["name"], "status.json"), "w") as f:
    json.dump({"status": "failed", "returncode": 1}, f)
  os.remove(os.path.join(sweep_dir, ok[1]["name"], "summary.json"))
  statuses = sorted(r["status"] for r in collect.collect(sweep_dir))
  assert statuses == ["failed", "incomplete", "ok", "pending", "pending", "pending"]


def test_wsd_spec_branches_continue_their_stable_runs():
  # Every branch's schedule equals its stable run's up to the branch point, which that
  # run keeps; the study costs two thirds of the IsoFLOP study it stands for.
  spec = registry.sweep("shakespeare_wsd")
  runs = {r.name: r for r in sweeps.expand(spec)}
  stable = [r for r in runs.values() if r.role == "stable"]
  branches = [r for r in runs.values() if r.role == "branch"]
  assert len(stable) == 7 and len(branches) == 15
  spent = 0.0
  for r in stable:
    c = sweeps.run_config(spec, r)
    spent += 6 * flops.params(c.model)["total"] * c.train.steps * 64 * 64
  for r in branches:
    c, parent = sweeps.run_config(spec, r), sweeps.run_config(spec, runs[r.after])
    assert r.at_step in parent.checkpoint.at_steps and r.at_step <= parent.train.steps
    assert c.optim.schedule == "wsd" and c.optim.decay_steps == c.train.steps - r.at_step
    assert abs(c.optim.decay_steps / c.train.steps - 0.2) < 0.05
    mine = optim.schedule(c.optim, c.train.steps)
    theirs = optim.schedule(parent.optim, parent.train.steps)
    for step in range(0, r.at_step, max(1, r.at_step // 50)):
      assert float(mine(step)) == float(theirs(step)), (r.name, step)
    budget = float(r.name.split("-")[1][1:])
    tokens = c.train.steps * c.train.batch_size * c.data.seq_len
    assert abs(6 * flops.params(c.model)["total"] * tokens / budget - 1) < 0.1
    spent += 6 * flops.params(c.model)["total"] * c.optim.decay_steps * 64 * 64
  assert 0.6 < spent / sum(float(r.name.split("-")[1][1:]) for r in sweeps.expand(
      registry.sweep("shakespeare_isoflop"))) < 0.75


def test_wsd_sweep_end_to_end(tmp_path):
  # --only a budget runs its cooldowns and the stable runs they branch from; collect
  # lists the stable runs as such and fit reads only the cooled-down points.
  sweep_dir = str(tmp_path / "wsd")
  launcher = [sys.executable, os.path.join(ROOT, "launch", "sweep_local.py"),
              "--sweep=shakespeare_wsd_tiny", f"--dir={sweep_dir}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags()}
  dry = subprocess.run(launcher + ["--dry_run", "--only=C2e8"], capture_output=True,
                       text=True, check=True)
  assert dry.stdout.count("-m jaxlm.main") == 4
  assert f"--set=init.from_workdir={sweep_dir}/wsd-N3.9e3-stable" in dry.stdout
  done = subprocess.run(launcher + ["--parallel=2", "--only=C2e8"], capture_output=True,
                        text=True, env=env)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "done: 4 ok" in done.stdout
  out = str(tmp_path / "runs.csv")
  cli(["collect", "--sweep", sweep_dir, "--out", out])
  rows = {r["name"]: r for r in csv.DictReader(open(out))}
  assert {n: r["status"] for n, r in rows.items() if r["status"] != "pending"} == {
      "wsd-N3.9e3-stable": "ok", "wsd-N8.3e3-stable": "ok", "wsd-C2e8-N3.9e3": "ok",
      "wsd-C2e8-N8.3e3": "ok"}
  branch = rows["wsd-C2e8-N8.3e3"]
  assert branch["role"] == "branch" and rows["wsd-N8.3e3-stable"]["role"] == "stable"
  # A branch's flops count its whole path; spent_flops only the cooldown it trained.
  assert math.isclose(float(branch["spent_flops"]), float(branch["flops"]) * 3 / 16)
  with open(os.path.join(sweep_dir, "wsd-C2e8-N8.3e3", "summary.json")) as f:
    assert json.load(f)["parent"]["step"] == 13
  assert collect.read_runs(out)["names"] == ["wsd-C2e8-N3.9e3", "wsd-C2e8-N8.3e3"]


def test_collect_tells_a_live_running_point_from_a_killed_one(tmp_path):
  import socket
  here = socket.gethostname()
  sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
  live = subprocess.Popen([*sleep, f"--workdir={tmp_path / 'live'}"])
  other = subprocess.Popen([*sleep, f"--workdir={tmp_path / 'elsewhere-run'}"])  # pid reused
  dead = subprocess.Popen([sys.executable, "-c", "pass", f"--workdir={tmp_path / 'dead'}"])
  dead.wait()
  try:
    cases = {"live": {"host": here, "pid": live.pid}, "dead": {"host": here, "pid": dead.pid},
             "reused": {"host": here, "pid": other.pid},
             "elsewhere": {"host": here + "-other-node", "pid": 1}, "old-launcher": {}}
    for name, where in cases.items():
      os.makedirs(tmp_path / name)
      with open(tmp_path / name / "status.json", "w") as f:
        json.dump({"status": "running", **where}, f)
    status = {r["name"]: r["status"] for r in collect.collect(str(tmp_path))}
  finally:
    live.kill()
    other.kill()
  assert status == {"live": "running", "dead": "interrupted", "reused": "interrupted",
                    "elsewhere": "running", "old-launcher": "interrupted"}


def test_collect_asks_squeue_about_a_slurm_point_on_another_node(tmp_path, monkeypatch):
  # A fake squeue: job 7_1 is running, 7_2 has left the queue, 8 SLURM has
  # forgotten (an error), and job 9's squeue cannot reach the controller.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "squeue").write_text(
      "#!/bin/sh\n"
      'case "$*" in\n'
      '  *"7_1"*) echo RUNNING;;\n'
      '  *"7_2"*) ;;\n'
      '  *" 8 "*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;;\n'
      '  *) echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1;;\n'
      "esac\n")
  (bin_dir / "squeue").chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  import socket
  node = socket.gethostname() + "-other-node"
  sweep_dir = tmp_path / "sweep"
  jobs = {"queued": "7_1", "left": "7_2", "forgotten": "8", "unreachable": "9", "no-job": None}
  for name, job in jobs.items():
    os.makedirs(sweep_dir / name)
    status = {"status": "running", "host": node, "pid": 12345}
    if job:
      status["slurm_job"] = job
    with open(sweep_dir / name / "status.json", "w") as f:
      json.dump(status, f)
  status = {r["name"]: r["status"] for r in collect.collect(str(sweep_dir))}
  assert status == {"queued": "running", "left": "interrupted", "forgotten": "interrupted",
                    "unreachable": "running", "no-job": "running"}


def test_sweep_run_records_the_slurm_job(monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(ROOT, "launch"))
  import sweep_run
  for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID"):
    monkeypatch.delenv(key, raising=False)
  assert sweep_run.slurm_job() == {}
  monkeypatch.setenv("SLURM_JOB_ID", "41")
  assert sweep_run.slurm_job() == {"slurm_job": "41"}
  monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
  monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
  assert sweep_run.slurm_job() == {"slurm_job": "40_3"}


def test_lr_transfer_spec_varies_only_width_lr_and_parameterization():
  spec = registry.sweep("shakespeare_mutransfer")
  runs = sweeps.expand(spec)
  # μP at its base width (64) is standard's runs, bit for bit: not run twice.
  assert len(runs) == 3 * 8 + 2 * 8
  assert not [r for r in runs if r.name.startswith("mutransfer-mup-d64-")]
  configs = {r.name: sweeps.run_config(spec, r) for r in runs}
  mup = configs["mutransfer-mup-d128-lr3.2e-2"]
  assert (mup.model.d_model, mup.model.n_heads, mup.model.head_dim) == (128, 16, 8)
  assert mup.model.parameterization == "mup" and mup.model.mup_base_width == 64
  assert mup.optim.lr == 3.2e-2 and mup.model.n_layers == 2 and mup.train.steps == 150
  standard = configs["mutransfer-standard-d128-lr3.2e-2"]
  assert config_lib.replace(standard, **{"model.parameterization": "mup",
                                         "model.mup_base_width": 64}) == mup
  alone = sweeps.LrTransferSpec(base="shakespeare_char", widths=(8, 16), lrs=(1e-3,),
                                parameterizations=("mup",), head_dim=8)
  assert [r.name for r in alone.runs()] == ["mutransfer-mup-d8-lr1e-3",
                                            "mutransfer-mup-d16-lr1e-3"]
  with pytest.raises(ValueError, match="multiples of head_dim=8"):
    sweeps.LrTransferSpec(base="shakespeare_char", widths=(12,), lrs=(1e-3,), head_dim=8).runs()
  seeded = sweeps.LrTransferSpec(base="shakespeare_char", widths=(8,), lrs=(1e-3,),
                                 parameterizations=("mup",), head_dim=8, seeds=(0, 3))
  runs = seeded.runs()
  assert [r.name for r in runs] == ["mutransfer-mup-d8-lr1e-3", "mutransfer-mup-d8-lr1e-3-s3"]
  assert [sweeps.run_config(seeded, r).seed for r in runs] == [0, 3]
  with pytest.raises(ValueError, match="seeds"):
    sweeps.LrTransferSpec(base="shakespeare_char", widths=(8,), lrs=(1e-3,), head_dim=8,
                          seeds=(1, 1)).runs()


def test_transfer_finds_best_lr_per_width(tmp_path, capsys):
  # Parabola in log2(lr) with its vertex at lr = 2^-6: found between grid points.
  b = transfer.best_lr([2.0 ** -8, 2.0 ** -7, 2.0 ** -5, 2.0 ** -4],
                       [3 + (x + 6) ** 2 for x in (-8, -7, -5, -4)])
  assert b["lr"] in (2.0 ** -7, 2.0 ** -5) and b["lr_fit"] == pytest.approx(2.0 ** -6)
  assert transfer.best_lr([1e-3, 1e-2], [2.0, None])["lr_fit"] is None  # at the edge
  # A CSV as collect writes it: the standard optimum halves per width doubling, μP's
  # stays; μP's base width (32) is standard's runs.
  path = str(tmp_path / "runs.csv")
  rows = []
  for p in ("standard", "mup"):
    for w in (32, 64, 128) if p == "standard" else (64, 128):
      shift = math.log2(w / 32) if p == "standard" else 0.0
      for k in range(-9, -3):
        rows.append({"name": f"{p}-{w}-{k}", "status": "ok", "parameterization": p,
                     "d_model": w, "lr": 2.0 ** k, "loss": 2 + 0.1 * (k + 6 + shift) ** 2,
                     "mup_base_width": 32 if p == "mup" else None})
  rows.append({"name": "failed", "status": "failed", "parameterization": "mup", "d_model": 64,
               "lr": 2.0 ** -3, "mup_base_width": 32})
  rows.append({"name": "cut-off", "status": "interrupted", "parameterization": "mup",
               "d_model": 128, "lr": 2.0 ** -3, "mup_base_width": 32})  # not a result
  # A second seed of μP at width 128: its losses average with seed 0's, which
  # moves that width's best lr by one octave; one failed seed fails its point.
  for k in range(-9, -3):
    rows.append({"name": f"mup-128-{k}-s1", "status": "ok" if k != -9 else "failed",
                 "parameterization": "mup", "d_model": 128, "lr": 2.0 ** k,
                 "loss": 2 + 0.1 * (k + 6) ** 2 - (0.25 if k == -5 else 0), "seed": 1,
                 "mup_base_width": 32})
  collect.write_csv(rows, path)
  cli(["transfer", "--runs", path, "--out", str(tmp_path / "t.json"),
       "--plot", str(tmp_path / "t.png")])
  out = capsys.readouterr().out
  result = json.load(open(tmp_path / "t.json"))
  mup = result["mup"]
  assert mup["seeds"] == [0, 1] and result["standard"]["seeds"] == [0]
  assert mup["loss"]["128"][repr(2.0 ** -9)] is None  # seed 1 failed there
  assert mup["loss"]["128"][repr(2.0 ** -5)] == pytest.approx(2.1 - 0.125)
  assert mup["best"]["128"]["lr"] == 2.0 ** -5 and mup["best_per_seed"]["128"] == [2.0 ** -6,
                                                                                    2.0 ** -5]
  assert mup["best"]["64"]["lr_fit"] == pytest.approx(2.0 ** -6)
  assert result["standard"]["drift_octaves"] == pytest.approx(-2.0, abs=1e-6)
  assert result["standard"]["best"]["128"]["lr"] == 2.0 ** -8
  assert result["mup"]["widths"] == [32, 64, 128] and result["mup"]["shared_widths"] == [32]
  assert "| 0.125 | — | failed | — |" in out and "**2.000**" in out
  assert os.path.getsize(tmp_path / "t.png") > 10_000
