"""The built-in demo corpus: a small subset of a real recorded speech + noise corpus.

Layout: speech/{train,test} and noise/{train,test}, 16 kHz mono FLAC. Attribution and licenses
of every file are in SOURCES.md; manifest.csv lists the files taken.
"""
import os


def path() -> str:
  """The demo corpus folder, usable as `--data_dir` (works for installed packages too)."""
  return os.path.dirname(os.path.abspath(__file__))
