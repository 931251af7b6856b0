import numpy as np
import pytest
import tensorflow as tf

from tf_tinyse import features
from tf_tinyse import losses

CONFIG = features.FeatureConfig()


# --- An independent numpy reference of the STFT, its inverse and the loss (float64) -----------
# Written from the method, not from features.py's code: 512-sample frames every 256 samples,
# square-root periodic Hann window at analysis and synthesis, a causal first frame (256 zeros
# on the left, so frame t ends at sample (t + 1) * 256), and zeros on the right up to a whole
# number of hops plus one hop.
FRAME, HOP = 512, 256


def numpy_window():
  n = np.arange(FRAME)
  return np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * n / FRAME))


def numpy_stft(waves):
  """[batch, samples] → [batch, frames, 257] complex128."""
  waves = np.atleast_2d(np.asarray(waves, np.float64))
  length = waves.shape[-1]
  left = FRAME - HOP
  right = HOP + (-(length + left)) % HOP
  padded = np.pad(waves, [(0, 0), (left, right)])
  count = 1 + (padded.shape[-1] - FRAME) // HOP
  frames = np.stack([padded[:, t * HOP:t * HOP + FRAME] for t in range(count)], axis=1)
  return np.fft.rfft(frames * numpy_window(), axis=-1)


def numpy_istft(spectra, length):
  """Windowed overlap-add of the inverse FFTs, without the causal left padding."""
  frames = np.fft.irfft(spectra, n=FRAME, axis=-1) * numpy_window()
  out = np.zeros((spectra.shape[0], (spectra.shape[1] - 1) * HOP + FRAME))
  for t in range(spectra.shape[1]):
    out[:, t * HOP:t * HOP + FRAME] += frames[:, t]
  return out[:, FRAME - HOP:FRAME - HOP + length]


def numpy_loss(clean_spectra, enhanced_spectra, c=0.3, alpha=0.9):
  """Per example: mean over frames and bins of (1-α)(|X|^c − |X̂|^c)² + α|X^c − X̂^c|², where
  X^c = |X|^c e^{i∠X}."""
  a, b = np.abs(clean_spectra) ** c, np.abs(enhanced_spectra) ** c
  a_complex = a * np.exp(1j * np.angle(clean_spectra))
  b_complex = b * np.exp(1j * np.angle(enhanced_spectra))
  terms = (1 - alpha) * (a - b) ** 2 + alpha * np.abs(a_complex - b_complex) ** 2
  return terms.mean(axis=(1, 2))


def test_loss_is_zero_for_identical_signals(speech_clip):
  wave = speech_clip[None, :]
  assert float(losses.consistent_enhancement_loss(wave, wave, CONFIG)) < 1e-10


def test_loss_grows_with_noise_and_with_phase_error(speech_clip, noise_clip):
  clean = speech_clip[None, :]
  small = losses.consistent_enhancement_loss(clean, clean + 0.05 * noise_clip[None], CONFIG)
  large = losses.consistent_enhancement_loss(clean, clean + 0.5 * noise_clip[None], CONFIG)
  assert 0 < float(small) < float(large)
  # Same magnitudes, wrong phase: only the complex (phase-sensitive) term sees it.
  spectra = features.stft(clean, CONFIG)
  flipped = spectra * tf.complex(-1.0, 0.0)
  only_magnitude = losses.phase_sensitive_loss(spectra, flipped, complex_weight=0.0)
  with_phase = losses.phase_sensitive_loss(spectra, flipped, complex_weight=0.9)
  assert float(only_magnitude) < 1e-10
  assert float(with_phase) > 0.01


def test_weights_combine_the_two_terms(speech_clip, noise_clip):
  a = features.stft(speech_clip[None], CONFIG)
  b = features.stft((speech_clip + 0.3 * noise_clip)[None], CONFIG)
  mag = float(losses.phase_sensitive_loss(a, b, complex_weight=0.0))
  cpx = float(losses.phase_sensitive_loss(a, b, complex_weight=1.0))
  mixed = float(losses.phase_sensitive_loss(a, b, complex_weight=0.9))
  np.testing.assert_allclose(mixed, 0.1 * mag + 0.9 * cpx, rtol=1e-5)


def test_loss_equals_numpy_reference_on_real_audio(speech_clip, noise_clip):
  # Two real examples, 100 samples short of 3 s (not a whole number of hops: the right padding
  # matters), each with its own enhancement error.
  n = len(speech_clip) - 100
  clean = np.stack([speech_clip[:n], noise_clip[:n]])
  enhanced = np.stack([speech_clip[:n] + 0.3 * noise_clip[:n],
                       0.5 * noise_clip[:n] + 0.2 * speech_clip[100:100 + n]])
  want = numpy_loss(numpy_stft(clean), numpy_stft(enhanced))
  # The STFT itself first (frames, padding, window), then the loss on top of it.
  spectra = features.stft(clean, CONFIG).numpy()
  assert spectra.shape == (2, 189, 257)
  np.testing.assert_allclose(spectra, numpy_stft(clean), rtol=0, atol=1e-4)  # |X| up to 73
  # Measured: relative difference 8e-8 (float32 against float64); the tolerance leaves 100x.
  per_example = losses.per_example_loss(features.stft(clean, CONFIG),
                                        features.stft(enhanced, CONFIG)).numpy()
  np.testing.assert_allclose(per_example, want, rtol=1e-5)
  np.testing.assert_allclose(
      float(losses.consistent_enhancement_loss(clean, enhanced, CONFIG)), want.mean(), rtol=1e-5)
  assert want[0] > 5 * want[1] > 0  # the two examples are different problems (0.48 vs 0.05)


def test_per_example_loss_has_one_value_per_example(speech_clip, noise_clip):
  clean = np.stack([speech_clip, speech_clip])
  enhanced = np.stack([speech_clip, speech_clip + 0.3 * noise_clip])
  per_example = losses.per_example_loss(features.stft(clean, CONFIG),
                                        features.stft(enhanced, CONFIG)).numpy()
  assert per_example.shape == (2,)
  assert per_example[0] < 1e-10 < per_example[1]


def test_gradient_is_finite_at_silence():
  clean = tf.zeros([1, 2048])
  estimate = tf.Variable(tf.zeros([1, 2048]))
  with tf.GradientTape() as tape:
    loss = losses.consistent_enhancement_loss(clean, estimate, CONFIG)
  grad = tape.gradient(loss, estimate)
  assert np.isfinite(grad.numpy()).all()


# --- The optional SI-SDR term ----------------------------------------------------------------


def test_negative_si_sdr_matches_the_metric_on_real_audio(speech_clip, noise_clip):
  from tf_tinyse import metrics  # pylint: disable=g-import-not-at-top
  clean = np.stack([speech_clip, speech_clip]).astype(np.float32)
  enhanced = np.stack([0.7 * speech_clip + 0.1 * noise_clip,
                       speech_clip + 0.5 * noise_clip]).astype(np.float32)
  got = losses.negative_si_sdr(tf.constant(clean), tf.constant(enhanced)).numpy()
  want = [-metrics.si_sdr(c, e) for c, e in zip(clean, enhanced)]
  # Below the 30 dB cap the cap's tau*|target|^2 changes the value by < 0.01 dB.
  np.testing.assert_allclose(got, want, atol=0.02)
  assert got[0] < got[1]  # more noise, larger loss


def test_negative_si_sdr_ignores_the_estimates_scale(speech_clip, noise_clip):
  clean = tf.constant(speech_clip[None].astype(np.float32))
  estimate = (speech_clip + 0.3 * noise_clip)[None].astype(np.float32)
  values = [float(losses.negative_si_sdr(clean, tf.constant(g * estimate))[0])
            for g in (0.1, 1.0, 4.0)]
  np.testing.assert_allclose(values, values[1], atol=1e-3)


def test_negative_si_sdr_saturates_at_30_db_and_keeps_finite_gradients(speech_clip):
  clean = tf.constant(speech_clip[None].astype(np.float32))
  exact = tf.Variable(clean)
  with tf.GradientTape() as tape:
    loss = losses.negative_si_sdr(clean, exact)
  assert float(loss[0]) == pytest.approx(-30.0, abs=0.01)
  assert np.isfinite(tape.gradient(loss, exact).numpy()).all()
  silent = tf.Variable(tf.zeros([1, 2048]))
  with tf.GradientTape() as tape:
    loss = losses.negative_si_sdr(tf.zeros([1, 2048]), silent)
  assert np.isfinite(loss.numpy()).all()
  assert np.isfinite(tape.gradient(loss, silent).numpy()).all()


# --- The optional STOI-like term -------------------------------------------------------------


def _envelope_decorrelation(clean, enhanced):
  clean, enhanced = (tf.constant(np.atleast_2d(x).astype(np.float32)) for x in (clean, enhanced))
  return losses.envelope_decorrelation(features.stft(clean, CONFIG),
                                       features.stft(enhanced, CONFIG), CONFIG).numpy()


def test_third_octave_bands_are_stois_disjoint_and_none_is_empty():
  matrix = losses.third_octave_matrix(CONFIG)
  assert matrix.shape == (CONFIG.num_bins, 15)
  assert set(np.unique(matrix)) == {0.0, 1.0}
  assert matrix.sum(axis=1).max() == 1.0  # disjoint
  assert matrix.sum(axis=0).min() >= 1.0  # every band holds a bin
  hz = np.arange(CONFIG.num_bins) * CONFIG.sample_rate / CONFIG.frame_length
  lowest, highest = hz[matrix.any(axis=1)][[0, -1]]
  # 150 Hz * 2^(-1/6) = 134 Hz up to the 15th band's top edge, 150 * 2^(14/3 + 1/6) = 4.3 kHz.
  assert 134 <= lowest <= 170 and 4000 <= highest <= 4300
  assert losses.stoi_segment_frames(CONFIG) == 24  # 384 ms at a 16 ms hop


def test_envelope_decorrelation_is_zero_for_the_clean_signal_at_any_level(speech_clip):
  values = [_envelope_decorrelation(speech_clip, g * speech_clip)[0] for g in (0.1, 1.0, 3.0)]
  np.testing.assert_allclose(values, 0.0, atol=1e-4)


def test_envelope_decorrelation_ranks_noisy_speech_as_stoi_does(speech_clip, noise_clip):
  from tf_tinyse import metrics  # pylint: disable=g-import-not-at-top
  estimates = [speech_clip + g * noise_clip for g in (0.1, 0.3, 1.0, 3.0)]
  ours = _envelope_decorrelation(np.stack([speech_clip] * 4), np.stack(estimates))
  stoi = np.array([metrics.stoi(speech_clip, e) for e in estimates])
  assert np.all(np.diff(ours) > 0) and np.all(np.diff(stoi) < 0)
  # Close to 1 - STOI, which is computed on another STFT (10 kHz, 256-sample frames).
  np.testing.assert_allclose(ours, 1.0 - stoi, atol=0.1)


def test_envelope_decorrelation_penalises_a_lost_band_that_si_sdr_hardly_sees(speech_clip):
  """Removing speech above 2 kHz costs little energy (SI-SDR) but much envelope (STOI)."""
  spectrum = np.fft.rfft(speech_clip)
  hz = np.fft.rfftfreq(len(speech_clip), 1.0 / CONFIG.sample_rate)
  lowpassed = np.fft.irfft(np.where(hz < 2000, spectrum, 0), n=len(speech_clip))
  lost = _envelope_decorrelation(speech_clip, lowpassed)[0]
  assert lost > 0.1
  si_sdr = -float(losses.negative_si_sdr(tf.constant(speech_clip[None].astype(np.float32)),
                                          tf.constant(lowpassed[None].astype(np.float32)))[0])
  assert si_sdr > 10.0


def test_envelope_decorrelation_has_finite_gradients_also_on_silence(speech_clip):
  clean = np.stack([speech_clip, np.zeros_like(speech_clip)]).astype(np.float32)
  estimate = tf.Variable(clean + 0.01)
  with tf.GradientTape() as tape:
    loss = losses.envelope_decorrelation(features.stft(tf.constant(clean), CONFIG),
                                         features.stft(estimate, CONFIG), CONFIG)
  assert np.isfinite(loss.numpy()).all()
  gradient = tape.gradient(loss, estimate).numpy()
  assert np.isfinite(gradient).all() and np.abs(gradient[0]).max() > 0


def test_envelope_decorrelation_refuses_spectra_shorter_than_a_segment(speech_clip):
  with pytest.raises(ValueError, match="384 ms"):
    _envelope_decorrelation(speech_clip[:4000], speech_clip[:4000])


def test_loss_config_sums_the_weighted_terms(speech_clip, noise_clip):
  clean = tf.constant(np.stack([speech_clip, speech_clip]).astype(np.float32))
  enhanced = tf.constant(np.stack([speech_clip + 0.2 * noise_clip,
                                   speech_clip + noise_clip]).astype(np.float32))
  clean_spectra, enhanced_spectra = features.stft(clean, CONFIG), features.stft(enhanced, CONFIG)
  config = losses.LossConfig(complex_weight=0.5, si_sdr_weight=0.02, stoi_weight=2.0)
  want = (losses.per_example_loss(clean_spectra, enhanced_spectra, complex_weight=0.5) +
          0.02 * losses.negative_si_sdr(clean, enhanced) +
          2.0 * losses.envelope_decorrelation(clean_spectra, enhanced_spectra, CONFIG))
  np.testing.assert_allclose(config.per_example(clean, enhanced, CONFIG), want, rtol=1e-5)
  np.testing.assert_allclose(
      losses.LossConfig().per_example(clean, enhanced, CONFIG),
      losses.per_example_loss(clean_spectra, enhanced_spectra), rtol=1e-6)
