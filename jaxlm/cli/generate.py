"""Command line of text generation from a trained run (`python -m jaxlm.generate`).

  python -m jaxlm.generate --workdir=DIR --prompt="ROMEO." [--max_new_tokens=200]
      [--temperature=1.0] [--top_k=0] [--top_p=1.0] [--seed=0] [--num_samples=1]
  python -m jaxlm.generate --workdir=DIR --prompt_file=prompts.txt   # one prompt a line

One prompt streams its text as the tokens are drawn; several (or
--num_samples > 1) are generated as a batch and printed in turn. An
encoder-decoder run takes each prompt as a source (see also
`python -m jaxlm.seq2seq_generate`). The loop is jaxlm/inference/generate.py.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

import numpy as np
from absl import app, flags

from jaxlm import cli
from jaxlm.inference.generate import generate, stream
from jaxlm.inference.sampling import Sampling
from jaxlm.run.load import load_run

flags.DEFINE_string("workdir", None, "Directory of a trained run (config.json, checkpoints/).")
flags.DEFINE_string("prompt", None, "Text to continue.")
flags.DEFINE_string("prompt_file", None, "Text file of prompts, one a line (a batch).")
flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 is greedy.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 disables.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1]; 1 disables.")
flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same text.")
flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
F = flags.FLAGS


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str]:
  """The prompt texts of --prompt or --prompt_file (one a line; blank lines skipped)."""
  if (prompt is None) == (prompt_file is None):
    raise ValueError("expected exactly one of --prompt and --prompt_file")
  if prompt is not None:
    if not prompt:
      raise ValueError("--prompt is empty; expected some text to continue")
    return [prompt]
  if not os.path.isfile(prompt_file):
    raise FileNotFoundError(f"--prompt_file={prompt_file} is not a file; expected a text file "
                            "with one prompt a line")
  with open(prompt_file, encoding="utf-8") as f:
    prompts = [line.rstrip("\n") for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"--prompt_file={prompt_file} has no prompts; expected one a line")
  return prompts


def print_stream(tokens: Iterator[np.ndarray], tok, out=sys.stdout) -> list[int]:
  """Writes row 0's text to `out` as its tokens arrive; returns the ids."""
  ids: list[int] = []
  shown = ""
  for tok_B in tokens:
    if tok_B[0] < 0:
      break
    ids.append(int(tok_B[0]))
    # Hold back a trailing U+FFFD: it may be the first bytes of a character still to come.
    text = tok.decode(ids).rstrip("\ufffd")
    if text.startswith(shown):
      out.write(text[len(shown):])
      out.flush()
      shown = text
  out.write(tok.decode(ids)[len(shown):] + "\n")
  out.flush()
  return ids


def main(argv):
  cli.start(argv)
  with cli.failing(ValueError, FileNotFoundError):
    if not F.workdir:
      raise ValueError("--workdir is required: the directory of a trained run")
    if F.num_samples < 1:
      raise ValueError(f"--num_samples={F.num_samples} is invalid: expected an integer >= 1")
    if F.max_new_tokens < 1:
      raise ValueError(f"--max_new_tokens={F.max_new_tokens} is invalid: expected an integer "
                       ">= 1")
    Sampling(F.temperature, F.top_k, F.top_p)  # checks the flags before the slow load
    texts = read_prompts(F.prompt, F.prompt_file)
    config, tok, mesh, params, _ = load_run(F.workdir)
  prompts = [tok.encode(t) for t in texts for _ in range(F.num_samples)]
  kw = dict(temperature=F.temperature, top_k=F.top_k, top_p=F.top_p, seed=F.seed,
            eos_id=tok.eos_id, mesh=mesh, rules=config.mesh.rules, vocab_limit=tok.vocab_size)
  # A language model continues its prompt; an encoder-decoder writes a new text from it.
  continues = not config.model.encoder_layers
  with cli.failing(ValueError):
    if len(prompts) == 1:
      tokens = stream(params, config.model, prompts, F.max_new_tokens, **kw)
      sys.stdout.write(texts[0] if continues else "")
      print_stream(tokens, tok)
      return
    outs = generate(params, config.model, prompts, F.max_new_tokens, **kw)
  for i, ids in enumerate(outs):
    p, s = divmod(i, F.num_samples)
    shown = texts[p] if continues else ""
    print(f"=== prompt {p + 1}, sample {s + 1} ===\n{shown}{tok.decode(ids)}", flush=True)


def entry():
  app.run(main)

