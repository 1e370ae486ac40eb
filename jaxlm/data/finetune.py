"""Fine-tuning examples built from the embedded corpus: genre passages and speeches.

Genre classification: a passage of a work, labelled by the work's First Folio
genre (comedy, tragedy, history; the poems as a fourth class). Training uses
the corpus's train works and testing its validation works (one of each genre),
so every test passage comes from a work the classifier, and the language model
pretrained on the train split, never saw.

Speaker naming (SFT): a speech of a play, followed by the play's title, and
answered with the speaker's name as the text gives it ("Ham", "ROMEO"). Plays
have their own casts, so test speeches are one in ten of each play's speeches
(chosen by a hash of the play and the speech's index), not whole plays.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import zlib

import numpy as np

from jaxlm.data import corpus as corpus_lib

GENRES = corpus_lib.GENRES
SPLITS = ("train", "validation")
# A speaker heading: "Ham." / "KING HENRY." / "LYSANDER" (a line of capitals).
_SPEAKER = re.compile(r"^(?:([A-Z][A-Za-z' .&-]{0,40})\.|([A-Z][A-Z' .&-]{1,40}))$")
SFT_TEST_EVERY = 10  # one speech in ten is held out for testing


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not a fine-tuning split; expected one of {SPLITS}")


@functools.lru_cache(maxsize=8)
def genre_passages(split: str, tok, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens (P, seq_len) int32, lengths (P,), labels (P,)) of the works of `split`.

  Each work is cut into consecutive passages of seq_len tokens; a last piece
  shorter than a quarter of seq_len is dropped, a longer one padded with 0.
  """
  _check_split(split)
  rows, lengths, labels = [], [], []
  for work in corpus_lib.load_works(split):
    ids = tok.encode(work.text).astype(np.int32)
    for start in range(0, len(ids), seq_len):
      piece = ids[start:start + seq_len]
      if len(piece) < max(seq_len // 4, 1):
        continue
      rows.append(np.pad(piece, (0, seq_len - len(piece))))
      lengths.append(len(piece))
      labels.append(GENRES.index(work.genre))
  return (np.stack(rows), np.asarray(lengths, np.int32), np.asarray(labels, np.int32))


@dataclasses.dataclass(frozen=True)
class Speech:
  work: str    # the work's file stem
  title: str   # the play's title line
  speaker: str
  text: str


def speeches(work: corpus_lib.Work) -> list[Speech]:
  """The speeches of a play: blank-line separated blocks under a speaker heading."""
  out = []
  for block in work.text.split("\n\n"):
    lines = block.strip("\n").split("\n")
    if len(lines) < 2 or lines[1].startswith("["):
      continue
    m = _SPEAKER.match(lines[0].strip())
    if m:
      out.append(Speech(work.name, work.title, (m.group(1) or m.group(2)).strip(),
                        "\n".join(lines[1:])))
  return out


def _held_out(speech: Speech, index: int) -> bool:
  return zlib.crc32(f"{speech.work}:{index}".encode()) % SFT_TEST_EVERY == 0


@functools.lru_cache(maxsize=4)
def speaker_examples(split: str) -> tuple[tuple[str, str], ...]:
  """(prompt, response) pairs of `split` ("train" or "validation", the held-out tenth).

  The prompt is the speech, the play's title and "SPEAKER:"; the response is
  " " and the speaker's name. Speeches of every play in the corpus are used
  (the genre split does not apply: the cast is what is learned).
  """
  _check_split(split)
  pairs = []
  for work in corpus_lib.load_works("all"):
    for i, s in enumerate(speeches(work)):
      if _held_out(s, i) == (split == "validation"):
        pairs.append((prompt_for(s.title, s.text), " " + s.speaker))
  if not pairs:
    raise ValueError("the corpus holds no speeches with speaker headings")
  return tuple(pairs)


def prompt_for(title: str, speech: str) -> str:
  """The SFT prompt of a speech (also what a user types to ask the tuned model).

  The title comes last so that a prompt cut from the left to fit the window
  keeps it and the end of the speech.
  """
  return f"{speech}\n({title})\nSPEAKER:"


def majority_baseline() -> float:
  """Exact-match accuracy on the held-out speeches of always naming the play's most
  frequent speaker in the training speeches: what a model ignoring the speech scores."""
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  def play(prompt):
    return prompt.rsplit("\n", 2)[-2]

  for prompt, response in speaker_examples("train"):
    counts[play(prompt)][response] += 1
  test = speaker_examples("validation")
  hits = sum(counts[play(p)].most_common(1)[0][0] == r for p, r in test if counts[play(p)])
  return hits / len(test)


# Punctuation restoration (seq2seq): a line of verse or prose, lowercased and
# stripped of punctuation, is restored to the line as printed. Apostrophes stay:
# they spell elisions ("liv'd", "'tis"), not the sentence's punctuation.
_DASHES = re.compile(r"[-\u2010-\u2015]+")
_HEADING = re.compile(r"^(?:ACT|SCENE|Act|Scene)\b")


def unpunctuate(line: str) -> str:
  """The source of a restoration example: lowercase, dashes as spaces, no other
  punctuation, single spaces."""
  text = _DASHES.sub(" ", line.lower())
  text = "".join(ch for ch in text if ch.isalnum() or ch.isspace() or ch == "'")
  return " ".join(text.split())


def text_lines(work: corpus_lib.Work) -> list[str]:
  """The spoken (or, in the poems, written) lines of a work: no speaker headings,
  stage directions ("[Exit.]"), act or scene headings, or all-capital titles."""
  out = []
  for block in work.text.split("\n\n"):
    lines = [line.strip() for line in block.strip("\n").split("\n")]
    if work.genre != "poem" and len(lines) >= 2 and _SPEAKER.match(lines[0]):
      lines = lines[1:]
    out.extend(line for line in lines if line and not line.startswith("[")
               and not _HEADING.match(line) and line != line.upper())
  return out


@functools.lru_cache(maxsize=4)
def restore_pairs(split: str) -> tuple[tuple[str, str], ...]:
  """(source, target) pairs of the works of `split`: target a line as printed,
  source its unpunctuate()d form. Test lines come from the validation works, so
  no test line (or its play) is seen in training."""
  _check_split(split)
  pairs = []
  for work in corpus_lib.load_works(split):
    for line in text_lines(work):
      source = unpunctuate(line)
      if source:
        pairs.append((source, line))
  return tuple(pairs)
