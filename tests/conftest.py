"""Shared fixtures: short real clips from the built-in demo corpus."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import glob  # pylint: disable=g-import-not-at-top

import numpy as np
import pytest

from tf_tinyse import demo_data


def _clip(kind, split, index, seconds):
  from tf_tinyse import audio  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(demo_data.path(), kind, split, "*.flac")))
  wave = audio.read_audio(files[index % len(files)])
  return wave[:int(seconds * audio.SAMPLE_RATE)]


@pytest.fixture(scope="session")
def speech_clip():
  """Three seconds of real recorded speech (test split of the demo corpus)."""
  return _clip("speech", "test", 0, 3.0)


@pytest.fixture(scope="session")
def noise_clip():
  """Three seconds of real recorded noise (test split of the demo corpus)."""
  return _clip("noise", "test", 0, 3.0)


@pytest.fixture(scope="session")
def noisy_clip(speech_clip, noise_clip):
  n = min(len(speech_clip), len(noise_clip))
  return (speech_clip[:n] + 0.5 * noise_clip[:n]).astype(np.float32), speech_clip[:n]


@pytest.fixture(autouse=True)
def _seeded_initializers():
  """Seeds Python, numpy and TensorFlow before every test.

  Layers built without an explicit initializer seed would otherwise draw new weights on every
  run, and a tolerance that holds for most draws could fail for a rare one: CI must not depend
  on luck.
  """
  import tf_keras  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
