"""LM Evaluation Harness speed: jaxlm's model against lm-eval's own `hf` model, same weights.

A random GPT-2 (byte tokenizer, written by jaxlm's hf_tokenizer) is saved with
save_pretrained and imported with jaxlm.convert; both backends then answer the
same tasks of jaxlm's (loglikelihood: shakespeare_word, shakespeare_cloze;
generate_until: shakespeare_next_line) in this one process, one after the
other, with the same batch size. Prints requests per second per task and
backend (each task run twice per backend: the first run includes jaxlm's
compilations, the second is timed), and the largest difference of the scores;
writes JSON.

  python benchmarks/eval_harness.py [--d_model 256 --n_layers 4 --max_len 256]
      [--limit 200] [--batch_size 16] [--out FILE]

Needs torch, transformers, accelerate and lm-eval (pip install -e '.[test]').
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import report

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TASKS = ("shakespeare_word", "shakespeare_cloze", "shakespeare_next_line")


def build(tmp: str, d_model: int, n_layers: int, max_len: int):
  """A random GPT-2 saved as HF (with the byte tokenizer) and imported as a jaxlm run."""
  import torch
  import transformers

  from jaxlm.convert import hf as convert
  from jaxlm.convert.hf_tokenizer import write_byte_tokenizer
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=257, n_positions=max_len, n_embd=d_model,
                                   n_layer=n_layers, n_head=max(d_model // 64, 1),
                                   bos_token_id=256, eos_token_id=256)
  model = transformers.GPT2LMHeadModel(config)
  n_params = sum(p.numel() for p in model.parameters())
  model.save_pretrained(os.path.join(tmp, "hf"))
  write_byte_tokenizer(os.path.join(tmp, "hf"), max_len)
  convert.from_hf(os.path.join(tmp, "hf"), os.path.join(tmp, "run"))
  return n_params


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--n_layers", type=int, default=4)
  parser.add_argument("--max_len", type=int, default=256)
  parser.add_argument("--limit", type=int, default=200, help="examples per task")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--tasks", default=",".join(TASKS))
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "results", "eval_harness.json"))
  args = parser.parse_args()
  import torch
  from lm_eval.models.huggingface import HFLM

  from jaxlm.inference import harness
  from jaxlm.run.load import load_run
  tasks = args.tasks.split(",")
  with tempfile.TemporaryDirectory() as tmp:
    n_params = build(tmp, args.d_model, args.n_layers, args.max_len)
    r = load_run(os.path.join(tmp, "run"))
    backends = {
        "jaxlm": lambda: harness.JaxlmLM(r.params, r.config, r.tokenizer, r.mesh,
                                         args.batch_size),
        "hf": lambda: HFLM(pretrained=os.path.join(tmp, "hf"), batch_size=args.batch_size,
                           device="cpu", dtype="float32", max_length=args.max_len)}
    manager = harness.task_manager(tasks)
    results = {}
    for task in tasks:
      for name, make in backends.items():
        lm = make()
        # Twice: the first includes jaxlm's compilations (one per length bucket) and
        # warms both; the second is the steady state a long evaluation runs at.
        first = time.perf_counter()
        harness.evaluate(lm, [task], limit=args.limit, manager=manager)
        started = time.perf_counter()
        out = harness.evaluate(lm, [task], limit=args.limit, manager=manager)
        seconds = time.perf_counter() - started
        results[(task, name)] = {"seconds": seconds, "first_seconds": started - first,
                                 "metrics": harness.metrics(out)[task],
                                 "requests": out["jaxlm"].get("requests")}
        print(f"{task} {name}: {seconds:.2f} s {results[(task, name)]['metrics']}", flush=True)
  rows, records = [], []
  for task in tasks:
    ours, ref = results[(task, "jaxlm")], results[(task, "hf")]
    n = ours["requests"]  # lm-eval's hf model does not count; the same tasks, the same number
    diff = max(abs(ours["metrics"][k] - ref["metrics"][k]) for k in ref["metrics"])
    rows.append([task, f"{n:,}", f"{n / ref['seconds']:.1f}", f"{n / ours['seconds']:.1f}",
                 f"{ref['seconds'] / ours['seconds']:.2f}x",
                 f"{ref['first_seconds'] / ours['first_seconds']:.2f}x", f"{diff:.2g}"])
    records.append({"task": task, "requests": n, "hf_seconds": ref["seconds"],
                    "jaxlm_seconds": ours["seconds"], "speedup": ref["seconds"] / ours["seconds"],
                    "hf_first_seconds": ref["first_seconds"],
                    "jaxlm_first_seconds": ours["first_seconds"],
                    "hf_metrics": ref["metrics"], "jaxlm_metrics": ours["metrics"],
                    "max_metric_difference": diff})
  print(f"GPT-2 d_model {args.d_model}, {args.n_layers} layers, context {args.max_len}, "
        f"{n_params / 1e6:.2f}M params; batch {args.batch_size}; {args.limit} examples per "
        f"task; torch threads {torch.get_num_threads()}")
  print(report.table(["task", "requests", "hf req/s", "jaxlm req/s", "jaxlm / hf",
                      "jaxlm / hf, first run (compiling)", "max score diff"], rows))
  report.write(args.out, {"model": {"d_model": args.d_model, "n_layers": args.n_layers,
                                    "max_len": args.max_len, "params": n_params},
                          "batch_size": args.batch_size, "limit": args.limit, "rows": records})


if __name__ == "__main__":
  main()
