import numpy as np
import pytest
import tensorflow as tf

from tf_tinyse import features

CONFIG = features.FeatureConfig()


@pytest.mark.parametrize("length", [16000, 12800, 1000, 257, 1])
def test_stft_istft_reconstructs_perfectly(length, speech_clip):
  wave = np.resize(speech_clip, length)[None, :]
  spectra = features.stft(wave, CONFIG)
  assert spectra.shape == (1, features.num_frames(length, CONFIG), CONFIG.num_bins)
  restored = features.istft(spectra, CONFIG, length).numpy()
  np.testing.assert_allclose(restored, wave, atol=2e-6)


def test_stft_is_causal():
  # Frame t covers samples up to (t + 1) * hop: changing later samples leaves it alone.
  wave = np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float32)
  changed = wave.copy()
  changed[0, 5 * CONFIG.hop_length:] += 1.0
  a, b = features.stft(wave, CONFIG).numpy(), features.stft(changed, CONFIG).numpy()
  np.testing.assert_array_equal(a[:, :5], b[:, :5])
  assert not np.allclose(a[:, 5], b[:, 5])


def test_mel_matrix_is_a_partition_of_unity_and_covers_every_band():
  g = features.mel_matrix(CONFIG)
  assert g.shape == (128, 257)
  np.testing.assert_allclose(g.sum(axis=0), 1.0, atol=1e-6)
  assert (g.sum(axis=1) > 0).all()
  assert (g >= 0).all()
  # Band centres rise with frequency: the argmax bin never goes down.
  assert (np.diff(g.argmax(axis=1)) >= 0).all()


def test_all_ones_mask_is_identity(speech_clip):
  wave = speech_clip[None, :]
  spectra = features.stft(wave, CONFIG)
  ones = tf.ones(spectra.shape[:2] + (CONFIG.num_bands,))
  restored = features.istft(features.apply_mel_mask(spectra, ones, CONFIG), CONFIG,
                            wave.shape[1]).numpy()
  np.testing.assert_allclose(restored, wave, atol=2e-6)


def test_zero_mask_silences(speech_clip):
  spectra = features.stft(speech_clip[None, :], CONFIG)
  zeros = tf.zeros(spectra.shape[:2] + (CONFIG.num_bands,))
  assert np.abs(features.apply_mel_mask(spectra, zeros, CONFIG).numpy()).max() == 0


def test_mel_features_are_compressed_band_energies(speech_clip):
  spectra = features.stft(speech_clip[None, :], CONFIG)
  z = features.mel_features(spectra, CONFIG).numpy()
  assert z.shape == (1, spectra.shape[1], 128)
  expected = (np.abs(spectra.numpy()) @ features.mel_matrix(CONFIG).T + 1e-8) ** 0.3
  np.testing.assert_allclose(z, expected, rtol=1e-4)
  # Louder input, larger features, by the compression power.
  z2 = features.mel_features(features.stft(2 * speech_clip[None, :], CONFIG), CONFIG).numpy()
  np.testing.assert_allclose(z2[z > 0.1], (2 ** 0.3) * z[z > 0.1], rtol=1e-3)


def test_compressed_spectrum_keeps_phase():
  x = tf.constant([[[3 + 4j, -1j]]], tf.complex64)
  mag, comp = features.compressed_spectrum(x, 0.3)
  np.testing.assert_allclose(mag.numpy(), [[[5 ** 0.3, 1.0]]], rtol=1e-5)
  np.testing.assert_allclose(np.angle(comp.numpy()), np.angle(x.numpy()), atol=1e-6)


def test_algorithmic_latency_is_frame_plus_hop():
  assert CONFIG.algorithmic_latency_ms == pytest.approx(48.0)


@pytest.mark.parametrize("floor", [0.05, 0.3])
def test_mask_floor_is_the_lowest_gain_and_keeps_an_all_ones_mask(floor, speech_clip):
  config = features.FeatureConfig(mask_floor=floor)
  spectra = features.stft(speech_clip[None, :], config)
  shape = spectra.shape[:2] + (config.num_bands,)
  zeros = features.apply_mel_mask(spectra, tf.zeros(shape), config).numpy()
  np.testing.assert_allclose(zeros, floor * spectra.numpy(), rtol=1e-5, atol=1e-7)
  ones = features.apply_mel_mask(spectra, tf.ones(shape), config).numpy()
  np.testing.assert_allclose(ones, spectra.numpy(), rtol=1e-5, atol=1e-7)
  # In between: the affine map of the mask, per band, before Gᵀ.
  half = features.apply_mel_mask(spectra, tf.fill(shape, 0.5), config).numpy()
  np.testing.assert_allclose(half, (floor + (1 - floor) * 0.5) * spectra.numpy(), rtol=1e-5,
                             atol=1e-7)


@pytest.mark.parametrize("floor", [-0.1, 1.0, 1.5])
def test_a_mask_floor_outside_0_1_is_refused(floor):
  with pytest.raises(ValueError, match="mask_floor must be in"):
    features.FeatureConfig(mask_floor=floor)


def test_a_config_saved_before_the_mask_floor_loads_without_one():
  saved = features.FeatureConfig().to_dict()
  del saved["mask_floor"]
  assert features.FeatureConfig.from_dict(saved).mask_floor == 0.0
  floored = features.FeatureConfig(mask_floor=0.05)
  assert features.FeatureConfig.from_dict(floored.to_dict()) == floored


@pytest.mark.parametrize("low_cut_hz, bins", [(0.0, 0), (20.0, 1), (31.25, 1), (40.0, 2),
                                             (100.0, 4)])
def test_low_cut_counts_the_bins_centred_below_it(low_cut_hz, bins):
  config = features.FeatureConfig(low_cut_hz=low_cut_hz)
  assert features.low_cut_bins(config) == bins
  gain = features.low_cut_gain(config)
  assert gain.shape == (257,) and (gain[:bins] == 0).all() and (gain[bins:] == 1).all()


def test_low_cut_removes_drift_and_keeps_speech(speech_clip):
  """An all-ones mask with a 40 Hz low cut: a DC offset and a slow drift under the speech
  lose most of their energy, and the speech from 150 Hz up passes unchanged."""
  config = features.FeatureConfig(mask_floor=0.05, low_cut_hz=40.0)
  t = np.arange(len(speech_clip)) / 16000
  drift = (0.1 + 0.2 * np.sin(2 * np.pi * 8 * t)).astype(np.float32) * np.std(speech_clip)
  wave = (speech_clip + drift)[None, :]
  spectra = features.stft(wave, config)
  ones = tf.ones(spectra.shape[:2] + (config.num_bands,))
  out = features.istft(features.apply_mel_mask(spectra, ones, config), config,
                       wave.shape[1]).numpy()[0]
  db = lambda a, b: 10 * np.log10(np.sum(a ** 2) / np.sum(b ** 2))
  # Measured: -24.8 dB (the frames' cut leaves a little at the 62.5 Hz hop rate).
  assert db(out - speech_clip, drift) < -20
  f = np.fft.rfftfreq(len(out), 1 / 16000)
  above = f >= 150
  assert abs(db(np.abs(np.fft.rfft(out))[above], np.abs(np.fft.rfft(wave[0]))[above])) < 1e-3
  # The cut bins are exactly zero in the masked STFT, whatever the mask and its floor.
  masked = features.apply_mel_mask(spectra, ones, config).numpy()
  assert np.abs(masked[..., :2]).max() == 0 and np.abs(masked[..., 2]).min() > 0


@pytest.mark.parametrize("low_cut_hz", [-1.0, 8000.0, 9000.0])
def test_a_low_cut_outside_0_nyquist_is_refused(low_cut_hz):
  with pytest.raises(ValueError, match="low_cut_hz must be in"):
    features.FeatureConfig(low_cut_hz=low_cut_hz)


def test_a_config_saved_before_the_low_cut_loads_without_one():
  saved = features.FeatureConfig().to_dict()
  del saved["low_cut_hz"]
  assert features.FeatureConfig.from_dict(saved).low_cut_hz == 0.0
  cut = features.FeatureConfig(low_cut_hz=40.0)
  assert features.FeatureConfig.from_dict(cut.to_dict()) == cut
