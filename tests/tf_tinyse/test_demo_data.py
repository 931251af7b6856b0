"""The built-in demo corpus: what it ships is what its manifest and attribution file describe."""
import csv
import os

import pytest
import soundfile as sf

from tf_tinyse import demo_data

MAX_BYTES = 20_000_000  # the corpus must stay small enough to ship inside the package


def _manifest():
  with open(os.path.join(demo_data.path(), "manifest.csv"), newline="") as f:
    return list(csv.DictReader(f))


def _audio_files():
  root = demo_data.path()
  found = set()
  for directory, _, names in os.walk(root):
    found.update(os.path.relpath(os.path.join(directory, n), root)
                 for n in names if n.endswith(".flac"))
  return found


def test_manifest_lists_exactly_the_shipped_audio():
  assert {row["path"] for row in _manifest()} == _audio_files()


def test_attribution_file_ships_and_names_every_source():
  with open(os.path.join(demo_data.path(), "SOURCES.md")) as f:
    sources = f.read()
  for source in {row["source"] for row in _manifest()}:
    # The manifest's source column is "owner/repo (...)": the repository must be attributed.
    assert source.split(" ")[0] in sources, source


def test_corpus_is_small():
  root = demo_data.path()
  total = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names)
  assert total <= MAX_BYTES


@pytest.mark.parametrize("split,kind", [("train", "speech"), ("train", "noise"),
                                        ("test", "speech"), ("test", "noise")])
def test_audio_is_16k_mono_and_as_long_as_listed(split, kind):
  rows = [r for r in _manifest() if r["split"] == split and r["kind"] == kind]
  assert rows
  for row in rows:
    info = sf.info(os.path.join(demo_data.path(), row["path"]))
    assert info.samplerate == 16000 and info.channels == 1, row["path"]
    assert info.duration == pytest.approx(float(row["seconds"]), abs=0.01), row["path"]
