"""The enhancement loss: a phase-sensitive spectral approximation on compressed spectra.

`L = (1-α) ‖ |X|^c − |X̂|^c ‖² + α ‖ X^c − X̂^c ‖²` with `c = 0.3`, `α = 0.9`
(Stamenovic et al. 2021, Sec. 3), where `X^c` compresses the magnitude and
keeps the phase, and `X̂ = STFT(x̂)` is computed again from the enhanced
waveform: the loss then sees the spectrum the listener gets after overlap-add
(consistency), not the masked spectrum, which overlap-add may change.
Norms are means over batch, frames and bins so the value does not depend on
segment length.
"""
import tensorflow as tf

from tf_tinyse import features


def per_example_loss(clean_spectra, enhanced_spectra, compression=0.3, complex_weight=0.9):
  """Both arguments are STFTs [batch, frames, bins] complex64; returns [batch]."""
  clean_mag, clean_complex = features.compressed_spectrum(clean_spectra, compression)
  enhanced_mag, enhanced_complex = features.compressed_spectrum(enhanced_spectra, compression)
  magnitude_term = tf.reduce_mean(tf.square(clean_mag - enhanced_mag), axis=[1, 2])
  complex_term = tf.reduce_mean(tf.square(tf.abs(clean_complex - enhanced_complex)), axis=[1, 2])
  return (1.0 - complex_weight) * magnitude_term + complex_weight * complex_term


def phase_sensitive_loss(clean_spectra, enhanced_spectra, compression=0.3, complex_weight=0.9):
  """The batch mean of `per_example_loss`."""
  return tf.reduce_mean(per_example_loss(clean_spectra, enhanced_spectra, compression,
                                         complex_weight))


def consistent_enhancement_loss(clean_waves, enhanced_waves, config, compression=0.3,
                                complex_weight=0.9):
  """The loss between waveforms: STFT both, then `phase_sensitive_loss`."""
  return phase_sensitive_loss(features.stft(clean_waves, config),
                              features.stft(enhanced_waves, config),
                              compression, complex_weight)
