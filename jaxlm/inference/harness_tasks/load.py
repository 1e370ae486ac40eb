"""Loads the data of jaxlm's harness tasks: the .jsonl files beside this file (lm-eval calls
`splits` through the tasks' `custom_dataset: !function load.splits`)."""

import json
import pathlib

import datasets

HERE = pathlib.Path(__file__).resolve().parent


def splits(files: dict, **metadata) -> datasets.DatasetDict:
  """{split: Dataset} of files = {split: file name in this directory}."""
  out = {}
  for split, name in files.items():
    with open(HERE / name, encoding="utf-8") as f:
      out[split] = datasets.Dataset.from_list([json.loads(line) for line in f])
  return datasets.DatasetDict(out)
