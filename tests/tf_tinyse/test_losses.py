import numpy as np
import tensorflow as tf

from tf_tinyse import features
from tf_tinyse import losses

CONFIG = features.FeatureConfig()


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
