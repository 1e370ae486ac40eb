"""Tests for jaxlm.data.corpus and the cleaning in scripts/build_corpus.py."""

import importlib.util
import lzma
import pathlib
import re

import pytest

from jaxlm.data import corpus

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _bytes(works):
  return sum(len(w.text.encode("utf-8")) for w in works)


def _build_script():
  path = ROOT / "scripts" / "build_corpus.py"
  spec = importlib.util.spec_from_file_location("build_corpus", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_all_works_load_sorted_with_unique_names():
  works = corpus.load_works()
  names = [w.name for w in works]
  assert len(works) == 42
  assert names == sorted(set(names))
  assert all(isinstance(w, corpus.Work) for w in works)


def test_fields():
  works = {w.name: w for w in corpus.load_works()}
  hamlet = works["hamlet"]
  assert hamlet.title == "HAMLET, PRINCE OF DENMARK"
  assert hamlet.genre == "tragedy"
  assert "To be, or not to be" in hamlet.text
  for w in works.values():
    assert w.genre in corpus.GENRES, w.name
    assert w.title and w.text.split("\n", 1)[0] == w.title, w.name
    assert "_gut" not in w.name
  assert {w.genre for w in works.values()} == set(corpus.GENRES)


def test_splits_are_disjoint_whole_works_covering_all():
  train = {w.name for w in corpus.load_works("train")}
  valid = {w.name for w in corpus.load_works("validation")}
  everything = {w.name for w in corpus.load_works("all")}
  assert not train & valid
  assert train | valid == everything
  assert valid == set(corpus.VALIDATION_WORKS)


def test_validation_is_about_a_tenth_with_one_work_per_genre():
  valid = corpus.load_works("validation")
  fraction = _bytes(valid) / _bytes(corpus.load_works())
  assert 0.08 < fraction < 0.12
  assert sorted(w.genre for w in valid) == sorted(corpus.GENRES)


def test_text_is_clean():
  licence = re.compile(r"project\s+gutenberg|\be-?books?\b|\be-?texts?\b|\*\*\*", re.I)
  for w in corpus.load_works():
    assert not licence.search(w.text), w.name
    assert "\r" not in w.text, w.name
    assert not re.search(r"[ \t]\n", w.text), w.name  # No trailing whitespace.
    assert "\n\n\n\n" not in w.text, w.name  # At most 2 blank lines in a row.
    assert w.text.endswith("\n") and not w.text.endswith("\n\n"), w.name


def test_loads_are_cached():
  assert corpus.load_works()[0] is corpus.load_works()[0]


def test_bad_split_names_value_and_choices():
  with pytest.raises(ValueError, match=r"split='test'.*validation"):
    corpus.load_works("test")


def test_missing_file_says_how_to_rebuild(tmp_path):
  path = tmp_path / "nope.jsonl.xz"
  with pytest.raises(FileNotFoundError, match=r"nope\.jsonl\.xz.*build_corpus\.py"):
    corpus.load_works(path=str(path))


@pytest.mark.parametrize("payload", [b"not xz at all", lzma.compress(b"{not json\n"),
                                     lzma.compress(b'{"name": "x"}\n')])
def test_corrupt_file_says_how_to_rebuild(tmp_path, payload):
  path = tmp_path / "bad.jsonl.xz"
  path.write_bytes(payload)
  with pytest.raises(ValueError, match=r"bad\.jsonl\.xz.*corrupt.*build_corpus\.py"):
    corpus.load_works(path=str(path))


def test_truncated_file_is_corrupt(tmp_path):
  path = tmp_path / "cut.jsonl.xz"
  path.write_bytes(pathlib.Path(corpus.DEFAULT_PATH).read_bytes()[:1000])
  with pytest.raises(ValueError, match="corrupt"):
    corpus.load_works(path=str(path))


def test_build_strips_gutenberg_boilerplate():
  build = _build_script()
  raw = ("The Project Gutenberg EBook of Hamlet\r\n\r\n"
         "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
         "HAMLET   \r\n\r\n\r\n\r\n\r\n  To be, or not to be\r\n\r\n"
         "End of the Project Gutenberg EBook of Hamlet\r\n"
         "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nlicence text\r\n")
  assert build.clean("hamlet", raw) == "HAMLET\n\n\n  To be, or not to be\n"


def test_build_fails_loudly_on_leftover_boilerplate():
  build = _build_script()
  with pytest.raises(ValueError, match="boilerplate"):
    build.clean("x", "TITLE\n\nThis eBook is for the use of anyone anywhere\n")
  # A word that merely contains "etext" is Shakespeare, not licence text.
  text = "TITLE\nAnd my pretext to strike\n"
  assert build.clean("coriolanus", text) == text
