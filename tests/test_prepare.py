"""Own corpora: files read as documents, split by identity, prepared once, trained on."""

import dataclasses
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import xla_flags
from jaxlm import config as config_lib
from jaxlm.data import pipeline, prepared, sources
from jaxlm.data import tokenizer as tokenizer_lib
from jaxlm.train import loop
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTES = tokenizer_lib.load_tokenizer("bytes")


def _corpus(root) -> dict[str, str]:
  """A small mixed corpus under root: jsonl (plain, gz), text files (plain, xz, nested)."""
  texts = {}
  os.makedirs(root / "sub", exist_ok=True)
  records = [f"record {i}: " + "lorem ipsum dolor sit amet " * (i % 5 + 1) for i in range(40)]
  with open(root / "a.jsonl", "w") as f:
    for r in records[:20]:
      f.write(json.dumps({"text": r, "id": 1}) + "\n")
  with gzip.open(root / "b.jsonl.gz", "wt") as f:
    for r in records[20:]:
      f.write(json.dumps({"text": r}) + "\n")
  for i in range(12):
    text = f"def f{i}(x):\n  return x * {i}\n" * (i + 3)
    texts[f"sub/m{i}.py"] = text
    (root / "sub" / f"m{i}.py").write_text(text)
  with lzma.open(root / "notes.md.xz", "wt") as f:
    f.write("# Notes\n\nünïcode text survives.\n")
  return {"records": records, **texts}


def test_documents_are_read_by_kind_and_split_by_identity(tmp_path):
  made = _corpus(tmp_path / "corpus")
  root = tmp_path / "corpus"
  files = sources.expand(f"{root}/*.jsonl*,{root}/**/*.py,{root}/*.xz")
  keys = [k for _, k in files]
  assert keys == sorted(keys) and "corpus/sub/m3.py" in keys and "corpus/b.jsonl.gz" in keys
  docs = [d for path, key in files for d in sources.documents(path, key)]
  assert [t for i, t in docs if i.startswith("corpus/a.jsonl:")] == made["records"][:20]
  assert [t for i, t in docs if i.startswith("corpus/b.jsonl.gz:")] == made["records"][20:]
  assert dict(docs)["corpus/sub/m4.py"] == made["sub/m4.py"]
  assert "ünïcode" in dict(docs)["corpus/notes.md.xz"]
  # A ! glob leaves out what it matches (the stdlib without site-packages).
  (root / "top.py").write_text("x = 1\n")
  assert [k for _, k in sources.expand(f"{root}/**/*.py,!{root}/sub/**")] == ["corpus/top.py"]
  with pytest.raises(FileNotFoundError, match="leaves no file once the ! globs"):
    sources.expand(f"{root}/sub/*.py,!{root}/**")
  # Two directories of one name would give two files one key.
  (tmp_path / "other" / "corpus").mkdir(parents=True)
  (tmp_path / "other" / "corpus" / "a.jsonl").write_text('{"text": "x"}\n')
  with pytest.raises(ValueError, match=r"would both be known as corpus/a.jsonl"):
    sources.expand(f"{root}/*.jsonl,{tmp_path}/other/corpus/*.jsonl")
  # The split is a function of the identity alone: about the fraction, stable.
  held = [i for i, _ in docs if sources.is_validation(i, 0.25)]
  assert 0 < len(held) < len(docs) and held == [
      i for i, _ in docs if sources.is_validation(i, 0.25)]
  with pytest.raises(FileNotFoundError, match=r"files:.*nothing\*\.txt matches no file"):
    sources.expand(f"{tmp_path}/nothing*.txt")
  (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a string "
                     r"field 'text' \(data.text_field\)"):
    list(sources.documents(str(tmp_path / "bad.jsonl"), "bad.jsonl"))


def test_parquet_and_zstandard_files(tmp_path):
  pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
  zstandard = pytest.importorskip("zstandard")
  (tmp_path / "d").mkdir()
  pq.write_table(pa.table({"body": ["first row", None, "third row"], "n": [1, 2, 3]}),
                 tmp_path / "d" / "t.parquet")
  with open(tmp_path / "d" / "c.jsonl.zst", "wb") as f:
    f.write(zstandard.ZstdCompressor().compress(b'{"body": "zst doc"}\n'))
  docs = [d for path, key in sources.expand(f"{tmp_path}/d/*")
          for d in sources.documents(path, key, text_field="body")]
  assert docs == [("d/c.jsonl.zst:1", "zst doc"), ("d/t.parquet:1", "first row"),
                  ("d/t.parquet:3", "third row")]
  with pytest.raises(ValueError, match=r"t.parquet: no column 'text' \(data.text_field\)"):
    list(sources.documents(str(tmp_path / "d" / "t.parquet"), "t.parquet"))


def test_prepare_is_deterministic_resumable_and_reads_back(tmp_path):
  _corpus(tmp_path / "src")
  spec = f"files:{tmp_path}/src/**/*.py,{tmp_path}/src/*.jsonl*"
  tok = prepared.TokenizerSpec("bytes")
  options = prepared.Options(validation_fraction=0.2)
  one = prepared.prepare(spec, str(tmp_path / "one"), tok, options, shard_bytes=400)
  two = prepared.prepare(spec, str(tmp_path / "two"), tok, options, workers=2, shard_bytes=400)
  assert len(one["shards"]) > 3 and one["splits"] == two["splits"]
  for split in prepared.SPLITS:
    for name in sorted(os.listdir(tmp_path / "one" / split)):
      assert (tmp_path / "one" / split / name).read_bytes() == \
          (tmp_path / "two" / split / name).read_bytes(), name
  # Counts: every document once, eos after each, UTF-8 bytes of the text.
  files = sources.expand(spec[len("files:"):])
  docs = [d for path, key in files for d in sources.documents(path, key)]
  assert sum(one["splits"][s]["documents"] for s in prepared.SPLITS) == len(docs)
  assert sum(one["splits"][s]["bytes"] for s in prepared.SPLITS) == \
      sum(len(t.encode()) for _, t in docs)
  # The stream is the documents of the split in order, each followed by eos.
  store = prepared.TokenStore(str(tmp_path / "one"), "train", BYTES)
  want = [np.append(BYTES.encode(t), BYTES.eos_id) for i, t in docs
          if not sources.is_validation(i, 0.2)]
  tokens, doc_ids = store.window(0, len(store))
  np.testing.assert_array_equal(tokens, np.concatenate(want))
  np.testing.assert_array_equal(doc_ids, np.repeat(np.arange(1, len(want) + 1),
                                                   [len(w) for w in want]))
  middle, _ = store.window(37, 500)  # across shard boundaries
  np.testing.assert_array_equal(middle, np.concatenate(want)[37:537])
  # Killed half-way: the finished shards stay, the rest is redone, same bytes.
  os.remove(tmp_path / "one" / "manifest.json")
  os.remove(tmp_path / "one" / "shards" / "00001.json")
  os.remove(tmp_path / "one" / "train" / "00001.tokens.npy")
  again = prepared.prepare(spec, str(tmp_path / "one"), tok, options, shard_bytes=400)
  assert again == one
  # Another tokenizer cannot read it; another corpus is not written into it.
  with pytest.raises(ValueError, match="tokenizer"):
    prepared.TokenStore(str(tmp_path / "one"), "train",
                        tokenizer_lib.load_tokenizer("sentencepiece", vocab_size=2048))
  with pytest.raises(ValueError, match="holds a prepared corpus of other sources"):
    prepared.prepare(f"files:{tmp_path}/src/*.jsonl", str(tmp_path / "one"), tok, options)


def _tree(root) -> dict[str, bytes]:
  """Every file under root (relative path -> bytes)."""
  return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
          for d, _, names in os.walk(root) for n in names}


def test_tasks_then_merge_write_the_same_bytes_as_one_process(tmp_path):
  _corpus(tmp_path / "src")
  spec = f"files:{tmp_path}/src/**/*.py,{tmp_path}/src/*.jsonl*"
  tok, options = prepared.TokenizerSpec("bytes"), prepared.Options(validation_fraction=0.2)
  one = prepared.prepare(spec, str(tmp_path / "one"), tok, options, shard_bytes=400)
  n = len(one["shards"])
  out = str(tmp_path / "tasks")
  # Three tasks, the last (and one more, past the shards) first: nothing depends on order.
  for task in (2, 0):
    assert prepared.prepare(spec, out, tok, options, shard_bytes=400, num_tasks=3,
                            task_id=task) is None
  assert sorted(os.listdir(os.path.join(out, "shards"))) == sorted(
      ["fingerprint.json"] + [f"{i:05d}.json" for i in range(n) if i % 3 != 1])
  with pytest.raises(ValueError, match=f"{len(range(1, n, 3))} of {n} shards are not "
                     r"prepared yet \(00001, 00004"):
    prepared.merge(spec, out, tok, options, shard_bytes=400)
  assert not os.path.exists(os.path.join(out, "manifest.json"))
  assert prepared.prepare(spec, out, tok, options, shard_bytes=400, num_tasks=3,
                          task_id=1, workers=2) is None
  assert prepared.merge(spec, out, tok, options, shard_bytes=400) == one
  assert _tree(out) == _tree(tmp_path / "one")
  # Bad input: a task number out of range, a merge where no task ran, another corpus.
  with pytest.raises(ValueError, match="--num_tasks=3 --task_id=3 is invalid"):
    prepared.prepare(spec, out, tok, options, num_tasks=3, task_id=3)
  with pytest.raises(ValueError, match="holds no prepared shards of this corpus"):
    prepared.merge(spec, str(tmp_path / "none"), tok, options, shard_bytes=400)
  os.remove(os.path.join(out, "manifest.json"))
  with pytest.raises(ValueError, match="holds shards of another preparation"):
    prepared.merge(spec, out, tok, prepared.Options(validation_fraction=0.3), shard_bytes=400)


def test_hugging_face_datasets_saved_or_cached(tmp_path):
  datasets = pytest.importorskip("datasets")
  rows = [f"row {i} " + "abc " * (i % 7) for i in range(50)]
  datasets.DatasetDict({
      "train": datasets.Dataset.from_dict({"text": rows, "n": list(range(50))}),
      "test": datasets.Dataset.from_dict({"text": ["held"], "n": [0]})}).save_to_disk(
          str(tmp_path / "ds"))
  options = prepared.Options(validation_fraction=0.2)
  manifest = prepared.prepare(f"hf:{tmp_path}/ds", str(tmp_path / "p"),
                              prepared.TokenizerSpec("bytes"), options, rows_per_shard=16,
                              workers=2)
  assert len(manifest["shards"]) == 4 and manifest["sources"][0]["rows"] == 50
  assert sum(manifest["splits"][s]["documents"] for s in prepared.SPLITS) == 50
  train = [r for i, r in enumerate(rows, start=1) if not sources.is_validation(f"ds:{i}", 0.2)]
  tokens, _ = prepared.TokenStore(str(tmp_path / "p"), "train", BYTES).window(0, 10 ** 6)
  np.testing.assert_array_equal(
      tokens, np.concatenate([np.append(BYTES.encode(r), BYTES.eos_id) for r in train]))
  # A run's pipeline prepares it into data.cache_dir and reads the same stream.
  data = config_lib.DataConfig(corpus=f"hf:{tmp_path}/ds", tokenizer="bytes",
                               validation_fraction=0.2, cache_dir=str(tmp_path / "cache"))
  stream = pipeline.token_stream(data, "train", BYTES)
  np.testing.assert_array_equal(stream.window(0, len(stream))[0], tokens)
  test = prepared.Source.of(f"hf:{tmp_path}/ds", prepared.Options(hf_split="test"))
  assert test.listing[0]["rows"] == 1
  with pytest.raises(ValueError, match=r"has splits \['test', 'train'\]; data.hf_split="
                     r"'dev' is not one"):
    prepared.Source.of(f"hf:{tmp_path}/ds", prepared.Options(hf_split="dev"))
  with pytest.raises(ValueError, match=r"data.corpus=hf:.*no_such_dataset.* does not load"):
    prepared.Source.of(f"hf:{tmp_path}/no_such_dataset", options)


def test_config_names_the_corpus_forms():
  assert config_lib.DataConfig(corpus="files:a/*.txt").corpus == "files:a/*.txt"
  with pytest.raises(config_lib.ConfigError, match=r"data.corpus='wiki' is invalid: "
                     r"expected shakespeare, files:GLOB\[,GLOB...\], hf:NAME_OR_DIR or "
                     r"prepared:DIR"):
    config_lib.DataConfig(corpus="wiki")
  with pytest.raises(config_lib.ConfigError, match="data.validation_fraction"):
    config_lib.DataConfig(validation_fraction=0.0)
  with pytest.raises(config_lib.ConfigError, match=r"data.corpus='prepared:gs://b/c' is "
                     "invalid: expected local paths .*gcsfuse"):
    config_lib.DataConfig(corpus="prepared:gs://b/c")


def test_train_on_files_prepares_once_and_on_prepared_dir(tmp_path):
  _corpus(tmp_path / "src")
  env = dict(os.environ, XLA_FLAGS=xla_flags(1), PYTHONPATH=ROOT)
  tiny = ["--experiment=shakespeare_char", "--set=model.d_model=32", "--set=model.n_layers=1",
          "--set=model.n_heads=2", "--set=data.seq_len=32", "--set=model.max_seq_len=32",
          "--set=train.batch_size=4", "--set=train.steps=3", "--set=train.log_every=1",
          "--set=train.eval_every=0", "--set=train.sample_tokens=0", "--set=mesh.data=1",
          "--set=train.final_eval_batches=4",
          "--set=data.validation_fraction=0.2", f"--set=data.cache_dir={tmp_path}/cache"]
  corpus = f"--set=data.corpus=files:{tmp_path}/src/**/*.py,{tmp_path}/src/*.jsonl*"

  def main(*args):
    return subprocess.run([sys.executable, "-m", "jaxlm.main", *tiny, *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)

  first = main(corpus, f"--workdir={tmp_path}/r1")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "preparing data.corpus=files:" in first.stdout and "step 3/3" in first.stdout
  # The next run (here, its pipeline) reuses the prepared cache.
  cached, = os.listdir(tmp_path / "cache")
  stamp = os.path.getmtime(tmp_path / "cache" / cached / "manifest.json")
  data = config_lib.DataConfig(corpus=corpus.split("=", 2)[2], tokenizer="bytes",
                               validation_fraction=0.2, cache_dir=str(tmp_path / "cache"))
  stream = pipeline.token_stream(data, "train", BYTES)
  assert os.listdir(tmp_path / "cache") == [cached] and len(stream) > 0
  assert os.path.getmtime(tmp_path / "cache" / cached / "manifest.json") == stamp
  losses = [[json.loads(l)["loss"] for l in open(tmp_path / "r1" / "metrics.jsonl")
             if "loss" in json.loads(l)]]
  # The prepare command line writes the same shards; a run on them trains the same.
  cmd = subprocess.run([sys.executable, "-m", "jaxlm.data.prepare",
                        f"--corpus={corpus.split('=', 2)[2]}", f"--out={tmp_path}/p",
                        "--validation_fraction=0.2", "--workers=2"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
  assert cmd.returncode == 0, cmd.stderr[-3000:]
  assert "train with --set data.corpus=prepared:" in cmd.stdout
  third = main(f"--set=data.corpus=prepared:{tmp_path}/p", f"--workdir={tmp_path}/r3")
  assert third.returncode == 0, third.stderr[-3000:]
  assert [json.loads(l)["loss"] for l in open(tmp_path / "r3" / "metrics.jsonl")
          if "loss" in json.loads(l)] == losses[0]
  # Two processes read their halves of each batch from the same shards: the same losses.
  two = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes", "2",
       "--cpu_devices_per_process", "1", "--",
       *[a for a in tiny if a != "--set=mesh.data=1"], "--set=mesh.data=2",
       "--set=checkpoint.every=1", "--set=checkpoint.keep=3",
       f"--set=data.corpus=prepared:{tmp_path}/p",
       f"--workdir={tmp_path}/r5"],
      env=dict(env, XLA_FLAGS=xla_flags()), cwd=ROOT, capture_output=True, text=True,
      timeout=600)
  assert two.returncode == 0, two.stderr[-3000:]
  two_losses = [json.loads(l)["loss"] for l in open(tmp_path / "r5" / "metrics.jsonl")
                if "loss" in json.loads(l)]
  assert len(two_losses) == len(losses[0]) == 3
  for x, y in zip(two_losses, losses[0]):
    assert abs(x - y) <= 1e-4 * abs(y), (two_losses, losses[0])
  # summary.json: 3 steps of 4 windows over the training split's windows, by source.
  spec = f"prepared:{tmp_path}/p"
  windows = pipeline.windows_per_epoch(dataclasses.replace(data, corpus=spec, seq_len=32), BYTES)
  assert json.load(open(tmp_path / "r5" / "summary.json"))["epochs"] == {spec: 12 / windows}
  # Resumed on one process from the two-process run's checkpoint 1: the same losses after.
  for step in ("2", "3"):
    shutil.rmtree(tmp_path / "r5" / "checkpoints" / step)
  os.remove(tmp_path / "r5" / "summary.json")
  resumed = main("--set=checkpoint.every=1", "--set=checkpoint.keep=3", f"--set=data.corpus={spec}",
                 f"--workdir={tmp_path}/r5")
  assert resumed.returncode == 0 and "resumed from step 1" in resumed.stdout, resumed.stderr
  after = [json.loads(l)["loss"] for l in open(tmp_path / "r5" / "metrics.jsonl")
           if "loss" in json.loads(l)]
  assert len(after) == 3 and after[0] == two_losses[0]
  for x, y in zip(after, losses[0]):
    assert abs(x - y) <= 1e-4 * abs(y), (after, losses[0])
  # Refused by the run's setup, before its workdir is written (the command line prints
  # such errors as one line: tests/test_main.py).
  with pytest.raises(FileNotFoundError,
                     match="^data.corpus=prepared:/nonexistent has no manifest.json"):
    loop.setup(tiny_config(**{"data.corpus": "prepared:/nonexistent"}), str(tmp_path / "r4"))
  assert not (tmp_path / "r4").exists()
