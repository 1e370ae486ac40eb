"""The LM Evaluation Harness scores an imported model the same through jaxlm as through `hf`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (pip install -e '.[test]')")
transformers = pytest.importorskip("transformers",
                                   reason="needs transformers (pip install -e '.[test]')")
pytest.importorskip("lm_eval", reason="needs lm-eval (pip install -e '.[test]')")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from jaxlm.convert import hf as convert  # noqa: E402
from jaxlm.convert.hf_tokenizer import write_byte_tokenizer  # noqa: E402
from jaxlm.inference import harness  # noqa: E402
from jaxlm.inference import scoring  # noqa: E402
from jaxlm.inference.scoring import Scorer, buckets  # noqa: E402
from jaxlm.config import ConfigError  # noqa: E402
from jaxlm.run.load import load_run  # noqa: E402
from jaxlm.train import loop  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LEN = 32  # short, so that long requests are truncated and texts span several windows
TOL = 1e-4
WORDS = "the king queen fair love night sweet death lord good heart".split()


def _text(rng, n_words):
  return " ".join(rng.choice(WORDS, n_words))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """A random GPT-2 with the byte tokenizer, as lm-eval's hf model and as a jaxlm run."""
  tmp = tmp_path_factory.mktemp("harness")
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=257, n_positions=MAX_LEN, n_embd=32, n_layer=2,
                                   n_head=4, bos_token_id=256, eos_token_id=256)
  model = transformers.GPT2LMHeadModel(config)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(0.2 * torch.randn_like(p) if p.ndim > 1 else p + 0.05 * torch.randn_like(p))
  model.save_pretrained(tmp / "hf")
  write_byte_tokenizer(str(tmp / "hf"), MAX_LEN)
  convert.from_hf(str(tmp / "hf"), str(tmp / "run"))
  hf = HFLM(pretrained=str(tmp / "hf"), batch_size=4, device="cpu", dtype="float32",
            max_length=MAX_LEN)
  r = load_run(str(tmp / "run"))
  ours = harness.JaxlmLM(r.params, r.config, r.tokenizer, r.mesh, batch_size=4)
  return tmp, hf, ours


def _requests(kind, args):
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihoods_match_hf(models):
  _, hf, ours = models
  rng = np.random.RandomState(0)
  args = [(_text(rng, rng.randint(1, 12)), " " + _text(rng, rng.randint(1, 3)))
          for _ in range(10)]
  args += [("", "king"), ("a", "b"), ("long " * 20, " tail")]  # empty, one-byte, truncated
  want = hf.loglikelihood(_requests("loglikelihood", args))
  got = ours.loglikelihood(_requests("loglikelihood", args))
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], atol=TOL, rtol=0)
  assert [g[1] for g in got] == [w[1] for w in want]
  texts = [(_text(rng, n),) for n in (1, 6, 30)]  # the last spans several windows
  want = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
  got = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_greedy_generations_match_hf(models):
  _, hf, ours = models
  rng = np.random.RandomState(1)
  args = [(_text(rng, rng.randint(1, 5)), {"until": [stop], "max_gen_toks": 12,
                                            "do_sample": False})
          for stop in ("e", "\n", "o", "xyz", "t")]
  want = hf.generate_until(_requests("generate_until", args))
  assert len(set(want)) > 1  # the stop sequences cut them differently
  assert ours.generate_until(_requests("generate_until", args)) == want


def _write_tasks(tmp, hf):
  """A multiple-choice, a generation and a rolling task over small local datasets."""
  rng = np.random.RandomState(2)
  tasks = tmp / "tasks"
  tasks.mkdir(exist_ok=True)
  choice = [{"q": _text(rng, 4), "choices": [" " + _text(rng, k) for k in (1, 2, 1)],
             "answer": int(rng.randint(3))} for _ in range(12)]
  prompts = [_text(rng, 3) for _ in range(8)]
  greedy = hf.generate_until(_requests("generate_until", [
      (p, {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}) for p in prompts]))
  # Half the answers are what a model with these weights writes: exact match is 0.5.
  gen = [{"prompt": p, "answer": g if i % 2 else g + "!"}
         for i, (p, g) in enumerate(zip(prompts, greedy))]
  rolling = [{"text": _text(rng, n)} for n in (3, 20, 9)]
  specs = {
      "tiny_choice": (choice, "output_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
                      "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
                      "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"),
      "tiny_gen": (gen, "output_type: generate_until\ndoc_to_text: '{{prompt}}'\n"
                   "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: [\"\\n\"]\n"
                   "  max_gen_toks: 6\n  do_sample: false\n"
                   "metric_list:\n  - metric: exact_match\n"),
      "tiny_rolling": (rolling, "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
                       "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: bits_per_byte\n"
                       "  - metric: word_perplexity\n"),
  }
  for name, (rows, body) in specs.items():
    data = tasks / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"test_split: test\n{body}")
  return str(tasks), list(specs)


def test_task_scores_match_hf_and_the_command_line_writes_them(models):
  tmp, hf, ours = models
  include, names = _write_tasks(tmp, hf)
  manager = harness.task_manager(names, [include])
  want = harness.metrics(harness.evaluate(hf, names, manager=manager))
  got = harness.metrics(harness.evaluate(ours, names, manager=manager))
  assert got.keys() == want.keys() == set(names)
  for task in names:
    for metric, value in want[task].items():
      assert got[task][metric] == pytest.approx(value, rel=1e-4, abs=1e-4), (task, metric)
  assert got["tiny_gen"]["exact_match"] == 0.5
  # The command line: the same scores, the harness's results and a summary in the workdir.
  out = subprocess.run(
      [sys.executable, "-m", "jaxlm.evaluate", f"--workdir={tmp / 'run'}",
       f"--tasks={','.join(names)}", f"--include={include}", "--batch_size=4"],
      capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  summary = json.loads((tmp / "run" / harness.SUMMARY).read_text())
  assert summary["step"] == 0 and summary["requests"] > 0
  assert summary["tasks"]["tiny_choice"]["acc"] == pytest.approx(want["tiny_choice"]["acc"])
  results = json.loads((tmp / "run" / harness.RESULTS).read_text())
  assert set(results["results"]) == set(names)
  assert "tiny_choice" in out.stdout and "acc" in out.stdout  # the harness's table


def test_bad_input_is_one_line(models, tmp_path):
  tmp, _, _ = models
  with pytest.raises(ValueError, match="no_such_task not found; expected names of jaxlm's"):
    harness.task_manager(["shakespeare_word", "no_such_task"])  # looked up in lm-eval's too
  cases = [([f"--workdir={tmp / 'run'}", "--tasks=tiny_choice", f"--include={tmp_path}/x"],
            "is not a directory"),
           ([f"--workdir={tmp_path}", "--tasks=shakespeare_cloze"], "has no config.json"),
           ([f"--workdir={tmp / 'run'}", "--tasks=shakespeare_cloze", "--limit=0"],
            "--limit=0.0 is invalid")]
  for args, message in cases:
    out = subprocess.run([sys.executable, "-m", "jaxlm.evaluate", *args], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_scorer_batches_by_length_bucket_and_pads_without_leaking(models):
  _, _, ours = models
  assert buckets(MAX_LEN) == [4, 8, 12, 16, 20, 24, 28, 32]
  assert buckets(1024)[:5] == [8, 16, 32, 64, 128] and buckets(1024)[-1] == 1024
  scorer = Scorer(ours.params, ours.config.model, ours.mesh, ours.config.mesh.rules, 5)
  assert scorer.batch_size % len(ours.mesh.devices.flat) == 0  # rows split over the mesh
  rng = np.random.RandomState(3)
  pairs = [(rng.randint(0, 256, n).tolist(), rng.randint(0, 256, 2).tolist())
           for n in rng.randint(1, 45, 20)]
  lengths = sorted((min(len(c) + 1, MAX_LEN) for c, _ in pairs), reverse=True)
  B = scorer.batch_size
  shapes = {min(b for b in buckets(MAX_LEN) if b >= lengths[i])
            for i in range(0, len(lengths), B)}
  before = scoring._score._cache_size()
  together = scorer.loglikelihood(pairs)
  assert scoring._score._cache_size() - before <= len(shapes)  # one compilation per bucket
  alone = [scorer.loglikelihood([p])[0] for p in pairs[:4]]
  np.testing.assert_allclose([t[0] for t in together[:4]], [a[0] for a in alone], atol=1e-5)
  assert [t[1] for t in together[:4]] == [a[1] for a in alone]


def test_training_scores_harness_tasks_into_metrics_and_summary(tmp_path, capsys):
  config = tiny_config(**{"train.steps": 4, "train.harness_tasks": "shakespeare_word",
                          "train.harness_every": 1, "train.harness_limit": 4,
                          "train.final_eval_batches": 1})
  r = loop.setup(config, str(tmp_path / "run"))
  score, calls = r.harness, []

  def fails_at_the_end(params, beat):  # a task that fails mid-run is a warning
    calls.append(len(calls))
    if len(calls) == 4:
      raise ValueError("a task asks for max_gen_toks=999")
    return score(params, beat)

  r.harness = fails_at_the_end
  summary = loop.run(r)
  assert "warning: harness tasks at step 4 failed: ValueError: a task asks for max_gen_toks" \
      in capsys.readouterr().out
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
  scored = [r for r in records if "harness/shakespeare_word/acc" in r]
  assert len(calls) == 4 and [r["step"] for r in scored] == [1, 2, 3]
  assert all(0 <= r["harness/shakespeare_word/acc"] <= 1 for r in scored)
  # Training went on; the summary holds the last scores that were made (each replacing
  # the one before).
  assert summary["steps"] == 4 and summary["harness"]["step"] == 3
  assert summary["harness"]["tasks"]["shakespeare_word"]["acc"] == \
      scored[-1]["harness/shakespeare_word/acc"]
  on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert on_disk["harness"] == summary["harness"]
  # Where every score fails, the summary has no harness scores.
  r = loop.setup(tiny_config(**{"train.steps": 1, "train.harness_tasks": "shakespeare_word",
                                "train.final_eval_batches": 1}), str(tmp_path / "failing"))

  def fails(params, beat):
    calls.append("failed")
    raise ValueError("a task asks for max_gen_toks=999")

  r.harness, calls = fails, []
  summary = loop.run(r)
  assert calls == ["failed"] and summary["steps"] == 1 and "harness" not in summary
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["4"]
  # Lookup errors are config errors (a task found nowhere: test_bad_input_is_one_line).
  for bad, message in [({"train.harness_tasks": "shakespeare_word",
                         "train.harness_include": str(tmp_path / "none")},
                        "train.harness_include: task directory .* is not a directory"),
                       ({"train.harness_tasks": "shakespeare_word", "task.kind": "classify",
                         "task.pooling": "mean"}, "scores language models")]:
    with pytest.raises(ConfigError, match=message):
      loop.setup(tiny_config(**bad), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()  # refused before the workdir is written


def test_the_shipped_task_data_is_what_the_builder_makes(tmp_path):
  out = subprocess.run([sys.executable, "scripts/build_harness_tasks.py", f"--out={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  built = sorted(p.name for p in tmp_path.iterdir())
  assert built == sorted(p.name for p in harness.TASKS_DIR.glob("*.jsonl"))
  for name in built:
    assert (tmp_path / name).read_bytes() == (harness.TASKS_DIR / name).read_bytes(), name
  rows = [json.loads(line) for line in (tmp_path / "shakespeare_word.jsonl").open()]
  assert len(rows) == 400 and {r["work"] for r in rows} == {"hamlet", "henry_v",
                                                             "rape_of_lucrece", "twelfth_night"}
  assert all(len({len(c) for c in r["choices"]}) == 1 for r in rows)  # no length cue


def test_imported_run_keeps_its_tokenizer_both_ways(models):
  tmp, _, ours = models
  assert ours.config.data.tokenizer == "hf"  # from_hf copied tokenizer.json into the run
  assert ours.tok.encode("ab\n").tolist() == [97, 98, 10] and ours.eot_token_id == 256
  convert.to_hf(str(tmp / "run"), str(tmp / "back"))
  assert (tmp / "back" / "tokenizer.json").read_bytes() == \
      (tmp / "hf" / "tokenizer.json").read_bytes()
  assert json.loads((tmp / "back" / "config.json").read_text())["eos_token_id"] == 256
