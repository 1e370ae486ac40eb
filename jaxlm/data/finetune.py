"""Fine-tuning examples built from the embedded corpus: genre passages and speeches.

Genre classification: a passage of a work, labelled by the work's First Folio
genre (comedy, tragedy, history; the poems as a fourth class). Training uses
the corpus's train works and testing its validation works (one of each genre),
so every test passage comes from a work the classifier, and the language model
pretrained on the train split, never saw.

Speaker naming (SFT): a speech of a play, followed by the play's title and the
speakers of the two speeches before it (the scene so far, as a reader knows
it), answered with the speaker's name as the text gives it ("Ham", "ROMEO").
Plays have their own casts, so test speeches are one in ten of each play's
speeches (chosen by a hash of the play and the speech's index), not whole
plays. Two baselines bound what the speech itself adds: the play's most
frequent speaker, and the speaker of two speeches back (dialogue alternates).
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
    if m := _SPEAKER.match(lines[0].strip()):
      out.append(Speech(work.name, work.title, (m.group(1) or m.group(2)).strip(),
                        "\n".join(lines[1:])))
  return out


@functools.lru_cache(maxsize=4)
def speaker_examples(split: str) -> tuple[tuple[str, str], ...]:
  """(prompt, response) pairs of `split` ("train" or "validation", the held-out tenth).

  The prompt is the speech, then the play's title and the two previous
  speakers, then "SPEAKER:"; the response is " " and the speaker's name. The
  first two speeches of a play are skipped (no context). Speeches of every play
  in the corpus are used (the genre split does not apply: the cast is learned).
  """
  _check_split(split)
  pairs = []
  for work in corpus_lib.load_works("all"):
    play = speeches(work)
    for i, s in enumerate(play[2:], start=2):
      held_out = zlib.crc32(f"{s.work}:{i}".encode()) % SFT_TEST_EVERY == 0
      if held_out == (split == "validation"):
        context = (play[i - 2].speaker, play[i - 1].speaker)
        pairs.append((prompt_for(s.title, s.text, context), " " + s.speaker))
  if not pairs:
    raise ValueError("the corpus holds no speeches with speaker headings")
  return tuple(pairs)


def prompt_for(title: str, speech: str, previous: tuple[str, str]) -> str:
  """The SFT prompt of a speech (also what a user types to ask the tuned model).

  The title and the previous speakers come last so that a prompt cut from the
  left to fit the window keeps them and the end of the speech.
  """
  return f"{speech}\n({title}; after {previous[0]}, {previous[1]})\nSPEAKER:"


def _play_and_context(prompt: str) -> tuple[str, str, str]:
  """(title, speaker two back, previous speaker) from a prompt_for() prompt."""
  title, _, rest = prompt.rsplit("\n", 2)[-2][1:-1].rpartition("; after ")
  two_back, _, previous = rest.partition(", ")
  return title, two_back, previous


def speaker_baselines() -> dict[str, float]:
  """Exact-match accuracy on the held-out speeches of two rules that ignore the speech:
  `majority`, the play's most frequent speaker in the training speeches, and
  `two_back`, the speaker of the speech two before (A, B, A)."""
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for prompt, response in speaker_examples("train"):
    counts[_play_and_context(prompt)[0]][response] += 1
  test = speaker_examples("validation")
  majority = two_back = 0
  for prompt, response in test:
    title, back, _ = _play_and_context(prompt)
    majority += bool(counts[title]) and counts[title].most_common(1)[0][0] == response
    two_back += " " + back == response
  return {"majority": majority / len(test), "two_back": two_back / len(test)}


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
  return tuple((source, line) for work in corpus_lib.load_works(split)
               for line in text_lines(work) if (source := unpunctuate(line)))
