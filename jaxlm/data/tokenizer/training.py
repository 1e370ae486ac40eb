"""Training a tokenizer on a corpus: a sentencepiece BPE, or a byte-level BPE (Hugging Face).

Behind `python -m jaxlm.data.tokenizer train --corpus=SPEC --vocab_size=N --out=PATH`.

The sample is the corpus's training documents in order (the same split
`prepare` makes: validation documents, picked by a hash of their identity, are
never trained on) up to `sample_bytes`; the validation documents up to a tenth
of that measure the result. Both kinds round-trip any text exactly:
- sentencepiece: identity normalization, no dummy prefix, whitespace kept, byte
  fallback; unk 0, eos 1; one thread, so two runs write the same file. The
  output is a `.model` file for `data.tokenizer=sentencepiece`.
- bpe: GPT-2's byte-level BPE trained with the `tokenizers` library, with
  `<|endoftext|>` as its one special token. The output is a directory
  (tokenizer.json, tokenizer_config.json) for `data.tokenizer=hf`, which
  `transformers.AutoTokenizer` loads too.
"""

from __future__ import annotations

import io
import os
from typing import Iterator

import sentencepiece as spm

from jaxlm import config as config_lib
from jaxlm.data import corpus, prepared, sources
from jaxlm.data import tokenizer as tokenizer_lib

KINDS = ("sentencepiece", "bpe")
EOS = "<|endoftext|>"
# A document longer than this is cut into pieces for sentencepiece's trainer
# (it silently skips longer sentences).
MAX_SENTENCE_BYTES = 1 << 20

SENTENCEPIECE_OPTIONS = dict(
    model_type="bpe",
    # Exact round trips: no NFKC, spaces kept as they are (runs of them,
    # leading ones, indentation), no "\u2581" added at the start of a text.
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,  # Lets "\u2581\u2581" (verse indentation) be a piece.
    # Every character of the sample gets a piece; anything else (tabs, "é")
    # falls back to its UTF-8 bytes, so unk is never produced.
    character_coverage=1.0,
    byte_fallback=True,
    # eos separates documents; no bos, no pad (packing with segment ids).
    unk_id=0,
    eos_id=1,
    bos_id=-1,
    pad_id=-1,
    # Determinism: one thread, every sentence, in corpus order.
    num_threads=1,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    max_sentence_length=MAX_SENTENCE_BYTES,
    minloglevel=1,
)


def _split_documents(spec: str, options: prepared.Options) -> Iterator[tuple[bool, str]]:
  """(is validation, text) of each document of a corpus spec, in the corpus's order."""
  kind, _ = config_lib.parse_corpus(spec)
  if kind == "shakespeare":
    yield from ((w.name in corpus.VALIDATION_WORKS, w.text) for w in corpus.load_works("all"))
    return
  if kind == "prepared":
    raise ValueError(f"--corpus={spec!r} is already tokenized; expected the files: or hf: "
                     "corpus it was prepared from")
  source = prepared.Source.of(spec, options)
  for members in source.shards:
    for identity, text in prepared.documents(source.kind, members, options):
      yield sources.is_validation(identity, options.validation_fraction), text


def sample(spec: str, options: prepared.Options, sample_bytes: int) -> tuple[list, list]:
  """(training texts up to sample_bytes, validation texts up to a tenth of it)."""
  texts, sizes, budgets = ([], []), [0, 0], (sample_bytes, sample_bytes // 10)
  for is_valid, text in _split_documents(spec, options):
    if sizes[is_valid] < budgets[is_valid]:
      texts[is_valid].append(text)
      sizes[is_valid] += len(text.encode("utf-8"))
    if sizes[0] >= budgets[0] and sizes[1] >= budgets[1]:
      break
  if not texts[0]:
    raise ValueError(f"--corpus={spec!r} has no training documents to learn a tokenizer from")
  return texts


def _pieces(texts: list[str]) -> Iterator[str]:
  """Documents for sentencepiece's trainer, cut at lines below MAX_SENTENCE_BYTES each."""
  for text in texts:
    while len(text.encode("utf-8")) >= MAX_SENTENCE_BYTES:
      cut = text.rfind("\n", 0, MAX_SENTENCE_BYTES // 4) + 1 or MAX_SENTENCE_BYTES // 4
      yield text[:cut]
      text = text[cut:]
    if text:
      yield text


def train(kind: str, texts: list[str], vocab_size: int, out: str) -> str:
  """Trains a tokenizer of `kind` on texts; writes it to out (a .model file for
  sentencepiece, a directory for bpe) and returns its data.tokenizer value."""
  if kind not in KINDS:
    raise ValueError(f"--kind={kind!r} is not a tokenizer kind; expected one of "
                     f"{', '.join(KINDS)}")
  if kind == "sentencepiece":
    # Whole documents, not lines: newlines then are ordinary characters with their
    # true statistics, and BPE learns pieces such as ".\n" and "\n\n".
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=_pieces(texts), model_writer=model,
                                   vocab_size=vocab_size, **SENTENCEPIECE_OPTIONS)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "wb") as f:
      f.write(model.getvalue())
    os.replace(out + ".tmp", out)
    return "sentencepiece"
  try:  # optional: the data extra (and transformers) install it
    import tokenizers
  except ImportError:
    raise ImportError("--kind=bpe needs the tokenizers library; install it with "
                      "`pip install 'jaxlm[data]'`") from None
  byte_level = tokenizers.pre_tokenizers.ByteLevel
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = byte_level(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                           initial_alphabet=byte_level.alphabet(),
                                           show_progress=False)
  tok.train_from_iterator(texts, trainer)
  tokenizer_lib.save_hf(tok, out, EOS)
  return "hf"


def check(kind: str, out: str, texts: list[str]) -> float:
  """Checks exact round trips and byte counts on texts; returns their bytes per token."""
  tok = tokenizer_lib.load_tokenizer(kind, out)
  token_bytes = tok.token_bytes()
  n_bytes = n_tokens = 0
  for i, text in enumerate(texts):
    ids = tok.encode(text)
    if tok.decode(ids) != text:
      raise ValueError(f"{out} does not round-trip validation document {i} exactly")
    counted, n = int(token_bytes[ids].sum()), len(text.encode("utf-8"))
    if counted != n:
      raise ValueError(f"{out}: the ids of validation document {i} count {counted} bytes; "
                       f"it has {n}")
    n_bytes, n_tokens = n_bytes + n, n_tokens + len(ids)
  return n_bytes / max(n_tokens, 1)
