"""The enhancement loss: a phase-sensitive spectral approximation on compressed spectra.

`L = (1-α) ‖ |X|^c − |X̂|^c ‖² + α ‖ X^c − X̂^c ‖²` with `c = 0.3`, `α = 0.9`
(Stamenovic et al. 2021, Sec. 3), where `X^c` compresses the magnitude and
keeps the phase, and `X̂ = STFT(x̂)` is computed again from the enhanced
waveform: the loss then sees the spectrum the listener gets after overlap-add
(consistency), not the masked spectrum, which overlap-add may change.
Norms are means over batch, frames and bins so the value does not depend on
segment length.

`negative_si_sdr` is an optional second term on the waveforms (`--si_sdr_loss_weight` in
`tf_tinyse.train`): the spectral loss weighs every time-frequency point alike, SI-SDR
weighs the error by its share of the utterance's energy, the way the metric scores it.
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


# The SI-SDR term saturates at 30 dB (tau = 10^(-30/10)), as in thresholded SDR losses: an
# example already that clean stops pulling, and a near-exact estimate cannot make log10 blow up.
_SI_SDR_CAP_DB = 30.0


def negative_si_sdr(clean_waves, enhanced_waves, eps=1e-8):
  """-SI-SDR in dB per example ([batch, samples] each; returns [batch]), saturating at
  -30 dB. Zero-mean signals and the optimal scale alpha = <s, s_hat> / ||s||^2 as in
  `metrics.si_sdr`."""
  clean = clean_waves - tf.reduce_mean(clean_waves, axis=-1, keepdims=True)
  enhanced = enhanced_waves - tf.reduce_mean(enhanced_waves, axis=-1, keepdims=True)
  alpha = (tf.reduce_sum(clean * enhanced, axis=-1, keepdims=True) /
           (tf.reduce_sum(tf.square(clean), axis=-1, keepdims=True) + eps))
  target = alpha * clean
  target_energy = tf.reduce_sum(tf.square(target), axis=-1)
  error_energy = tf.reduce_sum(tf.square(target - enhanced), axis=-1)
  tau = 10.0 ** (-_SI_SDR_CAP_DB / 10.0)
  ratio = (target_energy + eps) / (error_energy + tau * target_energy + eps)
  return -10.0 * tf.math.log(ratio) / tf.math.log(10.0)
