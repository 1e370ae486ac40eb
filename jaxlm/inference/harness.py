"""Downstream evaluation with EleutherAI's LM Evaluation Harness (lm-eval) on jaxlm models.

Behind `python -m jaxlm.evaluate --workdir=DIR --tasks=a,b` and training's
`train.harness_tasks`. Needs the `harness` extra (`pip install 'jaxlm[harness]'`).

`JaxlmLM` answers the harness's three request types with jaxlm's own code:
`loglikelihood` and `loglikelihood_rolling` with the jitted forward pass of
jaxlm/inference/scoring.py (length buckets, few compilations), and
`generate_until` with the key/value-cache generation of
jaxlm/inference/generate.py, one jitted loop per batch that ends a row at its
end-of-text id or a one-token stop sequence. Tokens come from the run's tokenizer; the
end-of-text id stands in for an empty context, as in the harness's `hf` model,
whose truncation and stop rules these follow, so that the same weights score
the same (tests/test_harness.py checks it against `hf`).

Tasks are looked up in the task directories shipped with jaxlm
(jaxlm/inference/harness_tasks/: tasks built from the embedded corpus), then in
`include` directories of task YAMLs, then among the harness's built-in tasks
(whose datasets must be available locally or in the Hugging Face cache).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Sequence

import numpy as np
from lm_eval import evaluator
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models import utils as model_utils
from lm_eval.tasks import TaskManager

from jaxlm.config import Config
from jaxlm.inference import generate
from jaxlm.inference.scoring import Scorer
from jaxlm.run import files, loggers
from jaxlm.run.load import load_run

TASKS_DIR = pathlib.Path(__file__).resolve().parent / "harness_tasks"
RESULTS, SUMMARY = files.HARNESS_RESULTS, files.HARNESS_SUMMARY
# The metric keys of a task's results that are not metrics.
_NOT_METRICS = ("alias", "name", "sample_len", "sample_count")


class JaxlmLM(TemplateLM):
  """A jaxlm model as an lm-eval model: a run's params, config, tokenizer and mesh (see
  jaxlm.run.load.load_run); batch_size requests per forward pass or generation batch,
  max_gen_toks per request where a task does not say, and on_batch called after each batch
  (a training run's watchdog beats)."""

  def __init__(self, params, config: Config, tokenizer, mesh, batch_size: int = 16,
               max_gen_toks: int = 256, on_batch=None):
    super().__init__()
    self.scorer = Scorer(params, config.model, mesh, config.mesh.rules, batch_size, on_batch)
    self.params, self.config, self.tok, self.mesh = params, config, tokenizer, mesh
    self.max_gen_toks = max_gen_toks
    self.requests = 0  # answered so far, of all three kinds

  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self.config.model.max_seq_len

  @property
  def batch_size(self) -> int:
    return self.scorer.batch_size

  @property
  def tokenizer_name(self) -> str:
    return self.tok.name

  def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                 **kwargs) -> list[int]:
    return self.tok.encode(string).tolist()

  def tok_decode(self, tokens, **kwargs) -> str:
    return self.tok.decode(tokens)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    self.requests += len(requests)
    results = self.scorer.loglikelihood([(ctx, cont) for _, ctx, cont in requests],
                                        desc="loglikelihood requests")
    for (request, _, _), answer in zip(requests, results):
      if request is not None:
        self.cache_hook.add_partial("loglikelihood", request, answer)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """The log-likelihood of whole texts, scored in disjoint windows of max_length tokens."""
    self.requests += len(requests)
    windows, owner = [], []
    for i, (text,) in enumerate(req.args for req in requests):
      for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)):
        windows.append((ctx, cont))
        owner.append(i)
    totals = np.zeros(len(requests))
    for i, (logp, _) in zip(owner, self.scorer.loglikelihood(windows, "rolling requests")):
      totals[i] += logp
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, float(total))
    return [float(t) for t in totals]

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy (or sampled, where a task asks) continuations, cut at the first stop sequence."""
    self.requests += len(requests)
    out: list = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for i, req in enumerate(requests):  # one batch never mixes generation settings
      groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
    bar = loggers.progress(total=len(requests), desc="generate_until requests")
    for members in groups.values():
      kwargs = model_utils.normalize_gen_kwargs(dict(requests[members[0]].args[1]),
                                                self.max_gen_toks)
      until = model_utils.handle_stop_sequences(kwargs.pop("until", None), eos=None)
      max_gen = int(kwargs.pop("max_gen_toks"))
      if not 0 < max_gen < self.max_length:
        raise ValueError(f"a task asks for max_gen_toks={max_gen}; expected 1 to "
                         f"model.max_seq_len - 1 = {self.max_length - 1}")
      contexts = {i: self.tok_encode(requests[i].args[0])[-(self.max_length - max_gen):]
                  for i in members}
      members.sort(key=lambda i: -len(contexts[i]))
      for start in range(0, len(members), self.batch_size):
        chunk = members[start:start + self.batch_size]
        texts = self._generate([contexts[i] or [self.eot_token_id] for i in chunk],
                               until, max_gen, kwargs)
        for i, text in zip(chunk, texts):
          out[i] = model_utils.postprocess_generated_text(text, until, None)
          self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        bar.update(len(chunk))
        self.scorer.on_batch()
    bar.close()
    return out

  def _generate(self, prompts: list[list[int]], until: list[str], max_gen: int,
                kwargs: dict) -> list[str]:
    """Draws up to max_gen tokens per row in one jitted loop; a row ends at its end-of-text
    or at a stop sequence that is one token. A stop sequence inside a longer token (or
    of several) ends no row early: the text is cut at it afterwards, the same text."""
    stop_ids = [ids[0] for ids in map(self.tok_encode, until) if len(ids) == 1]
    rows = prompts + [prompts[0]] * (self.batch_size - len(prompts))  # one shape: one compile
    new = generate.generate(
        self.params, self.config.model, rows, max_gen,
        temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
        top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0),
        seed=int(kwargs.get("seed") or 0), eos_id=self.eot_token_id, mesh=self.mesh,
        rules=self.config.mesh.rules, vocab_limit=self.tok.vocab_size, stop_ids=stop_ids)
    return [self.tok_decode(row) for row in new[:len(prompts)]]


def task_manager(names: Sequence[str], include: Sequence[str] = ()) -> TaskManager:
  """A TaskManager that knows every task in names: jaxlm's, include's, else lm-eval's own.

  Raises:
    ValueError naming the tasks found nowhere, or an include path that is not a directory.
  """
  for path in include:
    if not os.path.isdir(path):
      raise ValueError(f"task directory {path!r} is not a directory; expected a directory "
                       "of lm-eval task YAML files")
  paths = [str(TASKS_DIR), *map(str, include)]
  local = TaskManager(include_path=paths, include_defaults=False)
  if set(local.match_tasks(list(names))) >= set(names):
    return local  # indexing lm-eval's own thousands of tasks takes seconds
  manager = TaskManager(include_path=paths)
  missing = sorted(set(names) - set(manager.match_tasks(list(names))))
  if missing:
    raise ValueError(f"harness task(s) {', '.join(missing)} not found; expected names of "
                     f"jaxlm's tasks ({', '.join(sorted(local.all_tasks))}), of tasks in "
                     "a --include directory, or of lm-eval's built-in tasks")
  return manager


def evaluate(lm: JaxlmLM, names: Sequence[str], *, num_fewshot: int | None = None,
             limit: float | None = None, include: Sequence[str] = (), seed: int = 0,
             manager: TaskManager | None = None) -> dict:
  """Runs harness tasks on lm; returns lm-eval's results dict, and under "jaxlm" the
  seconds taken, the examples and the requests answered."""
  manager = manager or task_manager(names, include)
  logging.getLogger("lm_eval.api.task").addFilter(_no_custom_dataset_note)  # added once
  started, answered = time.perf_counter(), getattr(lm, "requests", 0)
  results = evaluator.simple_evaluate(
      model=lm, tasks=list(names), num_fewshot=num_fewshot, limit=limit,
      task_manager=manager, log_samples=False, random_seed=seed, numpy_random_seed=seed,
      torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=1000)
  results["jaxlm"] = {"seconds": time.perf_counter() - started, "examples": sum(
      n["effective"] for n in results.get("n-samples", {}).values())}
  if hasattr(lm, "requests"):  # lm-eval's own models do not count theirs
    results["jaxlm"]["requests"] = lm.requests - answered
  return results


def _no_custom_dataset_note(record: logging.LogRecord) -> bool:
  """A log filter that drops lm-eval's note, printed for every task with a custom_dataset
  loader (jaxlm's own tasks), on passing --metadata to it: none of jaxlm's loaders takes any."""
  return "Custom kwargs can be passed" not in record.getMessage()


def metrics(results: dict) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} from lm-eval's results (its "acc,none" keys as "acc")."""
  out = {}
  for task, values in results["results"].items():
    out[task] = row = {}
    for key, value in values.items():
      metric, _, filt = key.partition(",")
      if metric not in _NOT_METRICS and isinstance(value, (int, float)):
        row[metric if filt in ("", "none") else f"{metric}_{filt}"] = float(value)
  return out


def run(workdir: str, names: Sequence[str], *, num_fewshot: int | None = None,
        limit: float | None = None, batch_size: int = 16, include: Sequence[str] = (),
        step: int | None = None) -> dict:
  """Scores a run's checkpoint on harness tasks; writes WORKDIR/harness_results.json (the
  harness's results) and WORKDIR/harness_summary.json (metrics per task). Returns the summary."""
  manager = task_manager(names, include)  # bad task names fail before a restore
  # task.kind lm is decoder-only (the config ties encoder layers to seq2seq), and it is
  # checked before any restore.
  loaded = load_run(workdir, step, task_kind="lm")
  lm = JaxlmLM(loaded.params, loaded.config, loaded.tokenizer, loaded.mesh, batch_size)
  results = evaluate(lm, names, num_fewshot=num_fewshot, limit=limit, manager=manager)
  summary = {"step": loaded.step, "tasks": metrics(results), "num_fewshot": num_fewshot,
             "limit": limit, **results["jaxlm"]}
  files.write_atomic(os.path.join(workdir, RESULTS),
                     json.dumps(results, indent=2, default=lm_utils.handle_non_serializable))
  files.write_atomic(os.path.join(workdir, SUMMARY), json.dumps(summary, indent=2))
  return summary


table = lm_utils.make_table  # lm-eval's own markdown table of results
