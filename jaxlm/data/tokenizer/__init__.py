"""Byte, sentencepiece and Hugging Face tokenizers behind one interface.

Each round-trips text, and each says how many UTF-8 bytes each id stands for
(`token_bytes`): that turns a loss per token into bits per byte, the one
number comparable across tokenizers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from typing import Protocol, Sequence

import numpy as np
import sentencepiece as spm

ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets"
KINDS = ("sentencepiece", "bytes", "hf")
# End-of-text tokens of common Hugging Face tokenizers, for those whose config names none.
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")


class Tokenizer(Protocol):
  """What the pipeline, training, evaluation and generation rely on."""

  name: str
  vocab_size: int
  eos_id: int  # The document separator; encode never produces it.
  fingerprint: str  # Equal for tokenizers that map text to the same ids (prepared corpora).

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`, with no eos appended."""

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Returns the text of `ids`, skipping eos and other control ids."""

  def token_bytes(self) -> np.ndarray:
    """Returns int32 (vocab_size,): the UTF-8 bytes each id decodes to, 0 for control ids."""


def _as_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
  """Checks ids at the boundary: a model whose vocab is padded can sample any id."""
  ids = np.asarray(ids, dtype=np.int64).reshape(-1)
  bad = ids[(ids < 0) | (ids >= vocab_size)]
  if bad.size:
    raise ValueError(f"token id {int(bad[0])} is out of range; expected 0 <= id < {vocab_size}")
  return ids


class ByteTokenizer:
  """Ids 0..255 are the UTF-8 bytes of the text; id 256 is eos."""

  name = "bytes"
  vocab_size = 257
  eos_id = 256
  fingerprint = "bytes"

  def encode(self, text: str) -> np.ndarray:
    """Returns the UTF-8 bytes of `text` as int32 ids."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Returns the text of `ids`; invalid UTF-8 (a sampled byte soup) becomes U+FFFD."""
    ids = _as_ids(ids, self.vocab_size)
    return ids[ids != self.eos_id].astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def token_bytes(self) -> np.ndarray:
    """Returns 1 for each byte id and 0 for eos."""
    return np.array([1] * 256 + [0], dtype=np.int32)


class SentencePieceTokenizer:
  """A sentencepiece model as trained by scripts/train_tokenizer.py.

  Exact round trips rely on how that script trains: identity normalization, no
  dummy prefix, whitespace kept, byte fallback. One limit is sentencepiece's:
  a literal U+2581 in the input decodes as a space.
  """

  def __init__(self, model_path: str):
    self._sp = spm.SentencePieceProcessor(model_file=str(model_path))
    self.name = pathlib.Path(model_path).stem
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    self.fingerprint = "sentencepiece:" + hashlib.blake2b(
        self._sp.serialized_model_proto(), digest_size=12).hexdigest()
    if not 0 <= self.eos_id < self.vocab_size:
      raise ValueError(f"sentencepiece model {model_path} has no eos id; retrain it with eos_id")
    self._token_bytes = self._count_bytes()
    self._keep = self._token_bytes > 0  # Ids that decode to text; the rest are control.

  def _count_bytes(self) -> np.ndarray:
    sp = self._sp
    counts = np.zeros(self.vocab_size, dtype=np.int32)
    for i in range(self.vocab_size):
      if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
        continue
      if sp.is_byte(i):  # <0xNN>
        counts[i] = 1
      else:  # "\u2581" is sentencepiece's stand-in for one space.
        counts[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return counts

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`, with no eos appended."""
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Returns the text of `ids`, skipping eos, unk and other control ids."""
    ids = _as_ids(ids, self.vocab_size)
    return self._sp.decode(ids[self._keep[ids]].tolist())

  def token_bytes(self) -> np.ndarray:
    """Returns int32 (vocab_size,): the UTF-8 bytes each id decodes to, 0 for control ids."""
    return self._token_bytes.copy()


def byte_to_unicode() -> dict[int, str]:
  """GPT-2's printable stand-in character of each byte (the ByteLevel alphabet)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
          *range(ord("\xae"), ord("\xff") + 1)]
  extra = iter(range(256, 512))
  return {b: chr(b if b in keep else next(extra)) for b in range(256)}


class HFTokenizer:
  """A Hugging Face tokenizer: a directory holding tokenizer.json (what save_pretrained
  writes), read with the `tokenizers` library.

  The end-of-text id is the config's eos_token (tokenizer_config.json), else the
  first of EOS_NAMES it has. Bytes per id: a byte-level token's bytes (GPT-2,
  Llama 3), 1 for a byte-fallback piece <0xNN>, a piece's UTF-8 with U+2581 as a
  space (sentencepiece-style), 0 for special tokens. For byte-level tokenizers
  and those without a dummy-prefix space, ids sum to the text's exact bytes.
  """

  def __init__(self, path: str):
    try:  # optional: only data.tokenizer=hf needs it (it comes with transformers)
      from tokenizers import Tokenizer as HFTokenizerModel
    except ImportError:
      raise ImportError("data.tokenizer=hf needs the tokenizers library; install it with "
                        "`pip install 'jaxlm[data]'` (or `pip install tokenizers`)") from None
    root = pathlib.Path(path)
    file = root / "tokenizer.json" if root.is_dir() else root
    if not file.is_file():
      raise FileNotFoundError(f"data.tokenizer_path={path!r} has no tokenizer.json; expected "
                              "a Hugging Face tokenizer directory (save_pretrained) or file")
    blob = file.read_bytes()
    try:
      self._tok = HFTokenizerModel.from_str(blob.decode("utf-8"))
    except Exception as e:  # tokenizers raises its own Exception type for a bad file
      raise ValueError(f"data.tokenizer_path={path!r}: {file} is not a tokenizer.json the "
                       f"tokenizers library reads ({e})") from None
    self.name = (root if root.is_dir() else root.parent).name
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.fingerprint = "hf:" + hashlib.blake2b(blob, digest_size=12).hexdigest()
    special = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    self.eos_id = self._find_eos(file.parent / "tokenizer_config.json", path)
    self._token_bytes = self._count_bytes(special)
    self._keep = self._token_bytes > 0

  def _find_eos(self, config_file: pathlib.Path, path: str) -> int:
    names = list(EOS_NAMES)
    if config_file.is_file():
      eos = json.loads(config_file.read_text()).get("eos_token")
      eos = eos.get("content") if isinstance(eos, dict) else eos
      names = [eos] if eos else names
    for name in names:
      if (i := self._tok.token_to_id(name)) is not None:
        return i
    raise ValueError(f"data.tokenizer_path={path!r} has no end-of-text token (looked for "
                     f"{', '.join(names)}); jaxlm separates documents with one")

  def _count_bytes(self, special: set[int]) -> np.ndarray:
    byte_of = {c: b for b, c in byte_to_unicode().items()}
    byte_level = "ByteLevel" in json.dumps(json.loads(self._tok.to_str()).get("decoder"))
    counts = np.zeros(self.vocab_size, dtype=np.int32)
    for i in range(self.vocab_size):
      piece = self._tok.id_to_token(i)
      if i in special or piece is None:
        continue
      if byte_level and all(c in byte_of for c in piece):
        counts[i] = len(piece)
      elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        counts[i] = 1
      else:
        counts[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return counts

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`, with no special tokens added."""
    # encode_batch_fast skips the character offsets: 1.7x faster on a long text.
    fast = getattr(self._tok, "encode_batch_fast", None)
    encoding = (fast([text], add_special_tokens=False)[0] if fast else
                self._tok.encode(text, add_special_tokens=False))
    return np.asarray(encoding.ids, dtype=np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Returns the text of `ids`, skipping special tokens."""
    ids = _as_ids(ids, self.vocab_size)
    return self._tok.decode(ids[self._keep[ids]].tolist(), skip_special_tokens=True)

  def token_bytes(self) -> np.ndarray:
    """Returns int32 (vocab_size,): the UTF-8 bytes each id decodes to, 0 for special ids."""
    return self._token_bytes.copy()


def save_hf(tok, out_dir: str, eos: str, model_max_length: int | None = None) -> None:
  """Writes a `tokenizers.Tokenizer` as a Hugging Face tokenizer directory: tokenizer.json
  and the tokenizer_config.json that AutoTokenizer and HFTokenizer read its eos from."""
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eos, "eos_token": eos,
            "clean_up_tokenization_spaces": False}
  if model_max_length:
    config["model_max_length"] = model_max_length
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)


def committed_vocab_sizes() -> list[int]:
  """The vocab sizes of the sentencepiece models committed under jaxlm/data/assets/."""
  return sorted(int(n) for path in ASSETS.glob("shakespeare_sp*.model")
                if (n := path.stem.removeprefix("shakespeare_sp")).isdigit())


_BYTES = ByteTokenizer()


def load_tokenizer(kind: str, path: str = "", vocab_size: int = 0) -> Tokenizer:
  """Returns the tokenizer that data.tokenizer (kind), data.tokenizer_path and
  model.vocab_size name; each model is loaded once. A sentencepiece path "" is the
  committed jaxlm/data/assets/shakespeare_sp{vocab_size}.model."""
  if kind == "bytes":
    return _BYTES
  if kind == "hf":
    if not path:
      raise ValueError("data.tokenizer=hf needs data.tokenizer_path: a Hugging Face tokenizer "
                       "directory (with tokenizer.json)")
    return _load_hf(str(pathlib.Path(path).resolve()))
  if kind != "sentencepiece":
    raise ValueError(f"data.tokenizer={kind!r} is not a tokenizer; expected one of {KINDS}")
  if not path:
    model = ASSETS / f"shakespeare_sp{vocab_size}.model"
    if not model.is_file():
      raise FileNotFoundError(
          f"data.tokenizer_path is empty and no model is committed for model.vocab_size="
          f"{vocab_size}; expected a vocab_size in {committed_vocab_sizes()} or a "
          "data.tokenizer_path (train one with `python scripts/train_tokenizer.py`)")
    path = str(model)
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(
        f"data.tokenizer_path={path!r} is not a file; expected a sentencepiece .model file")
  return _load_sentencepiece(str(pathlib.Path(path).resolve()))


_load_hf = functools.lru_cache(maxsize=16)(HFTokenizer)


@functools.lru_cache(maxsize=16)
def _load_sentencepiece(path: str) -> SentencePieceTokenizer:
  """Loads a model once per resolved path; the pipeline, eval and generate all ask."""
  try:
    return SentencePieceTokenizer(path)
  except (RuntimeError, OSError) as e:  # What sentencepiece raises for a file it can't parse.
    raise ValueError(
        f"data.tokenizer_path={path!r} is not a sentencepiece model ({e})") from None
