"""Tests for jaxlm.data.tokenizer: exact round trips and bytes per token."""

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
