"""Builds the data of jaxlm's LM Evaluation Harness tasks from the embedded corpus.

  python scripts/build_harness_tasks.py [--out jaxlm/inference/harness_tasks]

Writes, deterministically (a fixed seed; tests/test_harness_tasks.py rebuilds
and compares):
- shakespeare_cloze.jsonl: 400 questions from the held-out works (100 each):
  three consecutive lines of a speech, then four candidate next lines: the true
  one, and three lines of similar length (0.8-1.25 times) drawn from the other
  held-out works. A model that has learned how verse runs on picks the true one.
  (Distractors from the training works would be lines a model has memorized:
  tried first, a byte-level model then scored below chance.)
- shakespeare_word.jsonl: 400 questions from the held-out works (100 each): a
  passage up to the last word of a line, then four candidate lower-case words:
  the true one and three of the same length from the other held-out works. The
  line cloze asks for more context than small models keep; this one tracks
  how well a small model has learned words in context.
- shakespeare_genre_{test,train}.jsonl: passages of four consecutive lines and
  their First Folio genre (comedy, tragedy, history, poem); the test split from
  the held-out works (100 each), the train split (the few-shot examples) from
  the training works (100 per genre).
The held-out works are those of the corpus's validation split, never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlm.data import corpus  # noqa: E402

OUT = os.path.join("jaxlm", "inference", "harness_tasks")
SEED = 20261206
PER_WORK = 100
CONTEXT_LINES, PASSAGE_LINES = 3, 4


def blocks(text: str) -> list[list[str]]:
  """Runs of consecutive non-empty lines (a speech, a stanza), stage directions dropped."""
  out, run = [], []
  for line in text.split("\n"):
    if line.strip() and not line.lstrip().startswith("["):
      run.append(line)
    else:
      if run:
        out.append(run)
      run = []
  return out + ([run] if run else [])


def is_line(line: str, low: int = 20, high: int = 60) -> bool:
  """A line of verse or prose, not a speaker's name, a heading or an indented line."""
  return (low <= len(line) <= high and line == line.strip() and not line.isupper()
          and not line.startswith(("ACT", "Scene", "SCENE")))


def cloze(rng, held_out) -> list[dict]:
  rows = []
  for w in held_out:
    pool = [line for other in held_out if other.name != w.name
            for b in blocks(other.text) for line in b if is_line(line)]
    pool_len = np.array([len(line) for line in pool])
    spots = [(b, i) for b in blocks(w.text) for i in range(CONTEXT_LINES, len(b))
             if is_line(b[i]) and all(is_line(x, 10, 80) for x in b[i - CONTEXT_LINES:i])]
    for k in rng.choice(len(spots), PER_WORK, replace=False):
      b, i = spots[k]
      near = np.flatnonzero((pool_len >= 0.8 * len(b[i])) & (pool_len <= 1.25 * len(b[i])))
      choices = [b[i]] + [pool[j] for j in rng.choice(near, 3, replace=False)]
      order = rng.permutation(4)
      rows.append({"work": w.name, "context": "\n".join(b[i - CONTEXT_LINES:i]) + "\n",
                   "choices": [choices[j] for j in order],
                   "answer": int(np.flatnonzero(order == 0)[0])})
  return rows


def words(rng, held_out) -> list[dict]:
  rows = []
  for w in held_out:
    pool: dict[int, list[str]] = {}
    for other in held_out:
      if other.name != w.name:
        for token in re.findall(r"\b[a-z]{4,}\b", other.text):
          pool.setdefault(len(token), []).append(token)
    spots = []
    for b in blocks(w.text):
      for i in range(1, len(b)):
        m = re.search(r" ([a-z]{4,})[,.;:!?]?$", b[i])
        if m and is_line(b[i], 10, 80):
          spots.append(("\n".join(b[max(i - 2, 0):i]) + "\n" + b[i][:m.start()], m.group(1)))
    for k in rng.choice(len(spots), PER_WORK, replace=False):
      context, word = spots[k]
      same = [x for x in pool[len(word)] if x != word]
      choices = [word] + list(rng.choice(sorted(set(same)), 3, replace=False))
      order = rng.permutation(4)
      rows.append({"work": w.name, "context": context,
                   "choices": [" " + choices[j] for j in order],
                   "answer": int(np.flatnonzero(order == 0)[0])})
  return rows


def passages(rng, works, n: int) -> list[dict]:
  spots = [(w, b, i) for w in works for b in blocks(w.text)
           for i in range(len(b) - PASSAGE_LINES + 1)
           if all(is_line(x, 15, 80) for x in b[i:i + PASSAGE_LINES])]
  return [{"work": spots[k][0].name, "passage": "\n".join(
              spots[k][1][spots[k][2]:spots[k][2] + PASSAGE_LINES]),
           "genre": corpus.GENRES.index(spots[k][0].genre)}
          for k in rng.choice(len(spots), n, replace=False)]


def build(out: str) -> list[str]:
  """Writes the task data into out; returns the paths written."""
  rng = np.random.RandomState(SEED)
  held_out, train = corpus.load_works("validation"), corpus.load_works("train")
  data = {"shakespeare_cloze.jsonl": cloze(rng, held_out),
          "shakespeare_word.jsonl": words(rng, held_out),
          "shakespeare_genre_test.jsonl": [r for w in held_out
                                           for r in passages(rng, [w], PER_WORK)],
          "shakespeare_genre_train.jsonl": [
              r for g in corpus.GENRES
              for r in passages(rng, [w for w in train if w.genre == g], PER_WORK)]}
  paths = []
  for name, rows in data.items():
    paths.append(os.path.join(out, name))
    with open(paths[-1], "w") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  return paths


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=OUT, help="directory to write the .jsonl files into")
  for path in build(parser.parse_args().out):
    print(f"wrote {path}")
