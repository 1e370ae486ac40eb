"""Tests for jaxlm.data.tokenizer: exact round trips and bytes per token."""

import pathlib

import numpy as np
import pytest
import sentencepiece as spm

from jaxlm.data import corpus
from jaxlm.data import tokenizer

VOCAB_SIZES = (512, 1024, 2048, 4096, 8192)
TRICKY = [
    "",
    "\n",
    "a\n\nb\n\n\n\nc",
    "  leading spaces and trailing  ",
    "multiple     spaces",
    "\ttabs\tand\t\ttabs\n\t",
    "non-ASCII: é—’ “quotes” naïve Ωμέγα 日本語 🎭",
    "\u00a0no-break\u00a0space and \u3000 ideographic",
    " \n \n",
    "ROMEO.\n  But, soft! what light through yonder window breaks?\n",
]


def _tokenizers():
  return [tokenizer.load_tokenizer("bytes")] + [
      tokenizer.load_tokenizer("sentencepiece", vocab_size=v) for v in VOCAB_SIZES]


@pytest.fixture(params=["bytes", 512, 8192], ids=str)
def tok(request):
  if request.param == "bytes":
    return tokenizer.load_tokenizer("bytes")
  return tokenizer.load_tokenizer("sentencepiece", vocab_size=request.param)


def test_committed_models_exist():
  assert tokenizer.committed_vocab_sizes() == list(VOCAB_SIZES)
  for v in VOCAB_SIZES:
    assert tokenizer.load_tokenizer("sentencepiece", vocab_size=v).vocab_size == v


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_round_trip(tok, text):
  ids = tok.encode(text)
  assert ids.dtype == np.int32
  assert tok.decode(ids) == text
  assert tok.decode(list(ids)) == text
  assert tok.token_bytes()[ids].sum() == len(text.encode("utf-8"))


@pytest.mark.parametrize("name", ["hamlet", "sonnets", "tempest", "rape_of_lucrece"])
def test_whole_works_round_trip(tok, name):
  (work,) = [w for w in corpus.load_works() if w.name == name]
  assert tok.decode(tok.encode(work.text)) == work.text


def test_token_bytes_count_every_byte_of_every_work():
  works = corpus.load_works()
  for tok in _tokenizers():
    token_bytes = tok.token_bytes()
    assert token_bytes.dtype == np.int32 and token_bytes.shape == (tok.vocab_size,)
    for w in works:
      n_bytes = token_bytes[tok.encode(w.text)].sum()
      assert n_bytes == len(w.text.encode("utf-8")), (tok.name, w.name)


def test_bigger_vocab_gives_more_bytes_per_token():
  text = "".join(w.text for w in corpus.load_works("validation"))
  n_bytes = len(text.encode("utf-8"))
  per_token = [n_bytes / len(tok.encode(text)) for tok in _tokenizers()]
  assert per_token[0] == 1.0
  assert per_token == sorted(per_token)


def test_eos_is_a_control_id_that_encode_never_produces(tok):
  assert 0 <= tok.eos_id < tok.vocab_size
  assert tok.token_bytes()[tok.eos_id] == 0
  text = "".join(w.text for w in corpus.load_works("validation"))
  assert tok.eos_id not in tok.encode(text)
  ids = np.concatenate([tok.encode("First."), [tok.eos_id], tok.encode("Second.")])
  assert tok.decode(ids) == "First.Second."


def test_decode_rejects_ids_out_of_range(tok):
  with pytest.raises(ValueError, match=f"out of range.*{tok.vocab_size}"):
    tok.decode([0, tok.vocab_size])


def test_byte_tokenizer_layout():
  tok = tokenizer.load_tokenizer("bytes")
  assert (tok.vocab_size, tok.eos_id) == (257, 256)
  assert tok.encode("A\n").tolist() == [65, 10]
  assert tok.decode([0xC3]) == "\ufffd"  # A lone lead byte, as sampling can produce.


def test_sentencepiece_control_and_byte_pieces():
  path = tokenizer.ASSETS / "shakespeare_sp512.model"
  sp = spm.SentencePieceProcessor(model_file=str(path))
  token_bytes = tokenizer.SentencePieceTokenizer(str(path)).token_bytes()
  assert token_bytes[sp.piece_to_id("<0xE2>")] == 1
  assert token_bytes[sp.piece_to_id("\u2581")] == 1  # One space.
  assert token_bytes[sp.piece_to_id("\n")] == 1
  assert token_bytes[sp.unk_id()] == 0


def test_loads_are_cached():
  default = tokenizer.load_tokenizer("sentencepiece", vocab_size=1024)
  path = str(tokenizer.ASSETS / "shakespeare_sp1024.model")
  assert tokenizer.load_tokenizer("sentencepiece", path) is default
  assert tokenizer.load_tokenizer("bytes") is tokenizer.load_tokenizer("bytes")


def test_bad_kind_names_the_key():
  with pytest.raises(ValueError, match=r"data\.tokenizer='chars'.*sentencepiece.*bytes"):
    tokenizer.load_tokenizer("chars")


def test_bad_vocab_size_lists_committed_sizes():
  expected = r"model\.vocab_size=1000.*\[512, 1024, 2048, 4096, 8192\].*data\.tokenizer_path"
  with pytest.raises(FileNotFoundError, match=expected):
    tokenizer.load_tokenizer("sentencepiece", vocab_size=1000)


def test_missing_path_names_the_key(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"data\.tokenizer_path=.*missing\.model"):
    tokenizer.load_tokenizer("sentencepiece", str(tmp_path / "missing.model"))


def test_non_model_file_names_the_key(tmp_path):
  path = tmp_path / "junk.model"
  path.write_bytes(b"this is not a sentencepiece model")
  expected = r"data\.tokenizer_path=.*junk\.model.*not a sentencepiece"
  with pytest.raises(ValueError, match=expected):
    tokenizer.load_tokenizer("sentencepiece", str(path))


def _hf_tokenizer(out, eos="<|endoftext|>", vocab_size=400):
  """A byte-level BPE (GPT-2's kind) trained with the tokenizers library on a corpus sample."""
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[eos] if eos else [],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([corpus.load_works("train")[0].text[:100_000]], trainer)
  out.mkdir()
  tok.save(str(out / "tokenizer.json"))
  return str(out)


def test_hugging_face_tokenizer_round_trips_and_counts_bytes(tmp_path):
  tok = tokenizer.load_tokenizer("hf", _hf_tokenizer(tmp_path / "bpe"))
  assert tok.vocab_size == 400 and tok.eos_id == 0 and tok.token_bytes()[tok.eos_id] == 0
  for text in TRICKY + [corpus.load_works("validation")[0].text[:20_000]]:
    ids = tok.encode(text)
    assert tok.eos_id not in ids and tok.decode(ids) == text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))  # bits per byte
  assert len(tok.encode("the king")) < len("the king")  # merges learned
  other = tokenizer.load_tokenizer("hf", _hf_tokenizer(tmp_path / "bpe2", vocab_size=300))
  assert other.fingerprint != tok.fingerprint


def test_hugging_face_tokenizer_errors_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match="needs data.tokenizer_path"):
    tokenizer.load_tokenizer("hf", "")
  with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
    tokenizer.load_tokenizer("hf", str(tmp_path))
  with pytest.raises(ValueError, match="no end-of-text token"):
    tokenizer.load_tokenizer("hf", _hf_tokenizer(tmp_path / "no_eos", eos=None))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match="is not a tokenizer.json"):
    tokenizer.load_tokenizer("hf", str(tmp_path / "bad"))


def test_a_run_trains_and_reports_bits_per_byte_with_a_hugging_face_tokenizer(tmp_path):
  from jaxlm.train import loop
  from tests.helpers import tiny_config
  path = _hf_tokenizer(tmp_path / "bpe")
  config = tiny_config(**{"data.tokenizer": "hf", "data.tokenizer_path": path,
                          "model.vocab_size": 512, "train.final_eval_batches": 2})
  summary = loop.run(loop.setup(config, str(tmp_path / "run")))
  # More bytes per token than bytes: bpb below the loss in bits per token.
  assert 0 < summary["final_val_bpb"] < summary["final_val_loss"] / np.log(2)


def test_training_reproduces_the_committed_sentencepiece_model(tmp_path):
  from jaxlm.data.tokenizer import training
  out = str(tmp_path / "sp512.model")
  training.train("sentencepiece", [w.text for w in corpus.load_works("train")], 512, out)
  assert open(out, "rb").read() == (tokenizer.ASSETS / "shakespeare_sp512.model").read_bytes()


def test_train_command_learns_a_byte_level_bpe_from_files(tmp_path):
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parent.parent
  works = corpus.load_works("all")
  for w in works[:12]:
    (tmp_path / f"{w.name}.txt").write_text(w.text[:30_000])
  out = tmp_path / "bpe"
  run = subprocess.run([sys.executable, "-m", "jaxlm.data.tokenizer", "train",
                        f"--corpus=files:{tmp_path}/*.txt", "--vocab_size=320", "--kind=bpe",
                        f"--out={out}", "--validation_fraction=0.2"],
                       capture_output=True, text=True, cwd=root)
  assert run.returncode == 0, run.stderr
  assert f"--set data.tokenizer=hf --set data.tokenizer_path={out}" in run.stdout
  assert "bytes per token on" in run.stdout  # measured on held-out documents
  tok = tokenizer.load_tokenizer("hf", str(out))
  assert tok.vocab_size == 320 and tok.decode(tok.encode(works[20].text)) == works[20].text
  bad = subprocess.run([sys.executable, "-m", "jaxlm.data.tokenizer", "train",
                        "--corpus=shakespeare", "--vocab_size=100", f"--out={tmp_path}/x"],
                       capture_output=True, text=True, cwd=root)
  assert bad.returncode == 2 and "--vocab_size=100 is too small" in bad.stderr
