"""Tests of tf_tinyse.data.probe_noise: what each probe kind is, and its corpus layout."""
import glob
import os

import numpy as np
import pytest
import scipy.signal

from tf_tinyse import audio
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse.data import probe_noise

RATE = audio.SAMPLE_RATE


def _frame_power(wave):
  _, _, spectrum = scipy.signal.stft(wave.astype(np.float64), RATE, nperseg=512, boundary=None,
                                     padded=False)  # no frame cut off by the edges
  return np.abs(spectrum) ** 2  # [bins, frames]


def test_probe_noises_are_the_same_for_the_same_seed_and_differ_by_seed():
  for kind in probe_noise.KINDS:
    first, again = (probe_noise.probe_noises(kind, 3, seed=5, seconds=1.0) for _ in range(2))
    other = probe_noise.probe_noises(kind, 3, seed=6, seconds=1.0)
    assert [n for n, _ in first] == [f"probe_{kind}_{i:02d}" for i in range(3)]
    for (_, a), (_, b), (_, c) in zip(first, again, other):
      assert a.dtype == np.float32 and a.shape == (RATE,)
      np.testing.assert_array_equal(a, b)
      assert not np.array_equal(a, c)
      assert np.abs(a).max() == pytest.approx(0.1, rel=1e-6)


def test_every_tone_is_narrowband_in_every_frame_it_sounds():
  for name, wave in probe_noise.probe_noises("tones", 12, seconds=3.0):
    power = _frame_power(wave)
    energy = power.sum(axis=0)
    sounding = energy > 0.01 * energy.max()  # a beep's gaps are skipped
    # 8 of 257 bins hold most of each frame's power (measured >= 0.73, the 15-harmonic hum).
    top = np.sort(power[:, sounding], axis=0)[-8:].sum(axis=0) / energy[sounding]
    assert top.min() > 0.7, (name, top.min())


def test_every_click_noise_is_sparse_and_broadband():
  for name, wave in probe_noise.probe_noises("clicks", 8, seconds=3.0):
    active = np.mean(np.abs(wave) > 0.01 * np.abs(wave).max())
    freqs, power = scipy.signal.welch(wave.astype(np.float64), RATE, nperseg=1024)
    # Measured: sounding 0.1-5 % of the time, 88-98 % of the power above 1 kHz.
    assert 0 < active < 0.1, (name, active)
    assert power[freqs >= 1000].sum() > 0.8 * power.sum(), name


def test_an_unknown_kind_or_variant_is_refused():
  with pytest.raises(ValueError, match="unknown probe noise kind 'hum'"):
    probe_noise.probe_noises("hum", 1)
  with pytest.raises(ValueError, match="tone variant 6"):
    probe_noise.tone(np.random.default_rng(0), 6, 1.0)


def test_probe_corpus_is_a_test_split_of_real_speech_and_the_probe_noises(tmp_path):
  speech = sorted(glob.glob(os.path.join(demo_data.path(), "speech", "test", "*.flac")))[:3]
  out = probe_noise.write_probe_corpus(speech, str(tmp_path / "probe"), "tones", count=4)
  corpus = data.discover_corpus(out)
  assert [os.path.basename(p) for p in corpus.test.clean] == [os.path.basename(p) for p in speech]
  assert len(corpus.test.noise) == 4
  written = audio.read_audio(corpus.test.noise[0])
  expected = probe_noise.probe_noises("tones", 1)[0][1]
  assert np.abs(written - expected).max() < 2 / 2 ** 15  # 16-bit PCM of the same signal
  examples = data.make_evaluation_set(corpus, "test")
  assert len(examples) == 3 and all(e.noise_name.startswith("probe_tones_") for e in examples)
  # Written again (a rerun), the links are replaced, not duplicated.
  probe_noise.write_probe_corpus(speech, out, "tones", count=4)
  assert len(os.listdir(os.path.join(out, "speech", "test"))) == 3
