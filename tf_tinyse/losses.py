"""The enhancement loss: a phase-sensitive spectral approximation on compressed spectra.

`L = (1-α) ‖ |X|^c − |X̂|^c ‖² + α ‖ X^c − X̂^c ‖²` with `c = 0.3`, `α = 0.9`
(Stamenovic et al. 2021, Sec. 3), where `X^c` compresses the magnitude and
keeps the phase, and `X̂ = STFT(x̂)` is computed again from the enhanced
waveform: the loss then sees the spectrum the listener gets after overlap-add
(consistency), not the masked spectrum, which overlap-add may change.
Norms are means over batch, frames and bins so the value does not depend on
segment length.

`negative_si_sdr` is an optional second term on the waveforms (`--si_sdr_loss_weight`):
the spectral loss weighs every time-frequency point alike, SI-SDR weighs the error by its
share of the utterance's energy, the way the metric scores it.

`envelope_decorrelation` is an optional third term (`--stoi_loss_weight`), the
intelligibility measure STOI (Taal et al. 2011) made differentiable on this project's STFT:
one minus the correlation of clean and enhanced one-third-octave band envelopes over 384 ms
segments. Both other terms are minimised by Wiener-like gains, which at low local SNR
attenuate speech together with the noise; the correlation does not depend on a band's level
within a segment, so it pulls towards keeping the envelope of weak speech instead.

`LossConfig` holds the weights of the terms; its flags are defined here.
"""
import dataclasses
import functools

from absl import flags
import numpy as np
import tensorflow as tf

from tf_tinyse import features
from tf_tinyse.errors import UserError

flags.DEFINE_float("complex_loss_weight", 0.9, "Weight alpha of the complex (phase-sensitive) "
                   "part of the spectral loss, 1 - alpha on the magnitudes; 0.9 is the paper's.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("si_sdr_loss_weight", 0.0, "Weight per dB of a -SI-SDR term on the "
                   "waveforms added to the spectral loss (losses.negative_si_sdr); 0: the "
                   "paper's loss alone.", lower_bound=0.0)
flags.DEFINE_float("stoi_loss_weight", 0.0, "Weight of a STOI-like term added to the spectral "
                   "loss: 1 - the correlation of clean and enhanced one-third-octave band "
                   "envelopes over 384 ms segments (losses.envelope_decorrelation); needs "
                   "training segments of at least 384 ms.", lower_bound=0.0)

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The training loss: the paper's spectral loss plus optional waveform/envelope terms."""
  complex_weight: float = 0.9
  si_sdr_weight: float = 0.0
  stoi_weight: float = 0.0

  @classmethod
  def from_flags(cls, flag_values=FLAGS):
    return cls(complex_weight=flag_values.complex_loss_weight,
               si_sdr_weight=flag_values.si_sdr_loss_weight,
               stoi_weight=flag_values.stoi_loss_weight)

  def check_segment_seconds(self, segment_seconds, feature_config):
    """Raises a UserError when training segments are too short for the STOI-like term."""
    frames = features.num_frames(int(round(segment_seconds * feature_config.sample_rate)),
                                 feature_config)
    if self.stoi_weight and frames < stoi_segment_frames(feature_config):
      raise UserError(f"--stoi_loss_weight compares {STOI_SEGMENT_SECONDS * 1000:.0f} ms "
                      f"envelope segments; --segment_seconds={segment_seconds} is shorter: "
                      "raise it or set --stoi_loss_weight=0")

  def per_example(self, clean_waves, enhanced_waves, feature_config):
    """The loss of each example ([batch, samples] waveforms each; returns [batch])."""
    clean_spectra = features.stft(clean_waves, feature_config)
    enhanced_spectra = features.stft(enhanced_waves, feature_config)
    loss = per_example_loss(clean_spectra, enhanced_spectra, feature_config.compression,
                            self.complex_weight)
    if self.si_sdr_weight:
      loss += self.si_sdr_weight * negative_si_sdr(clean_waves, enhanced_waves)
    if self.stoi_weight:
      loss += self.stoi_weight * envelope_decorrelation(clean_spectra, enhanced_spectra,
                                                        feature_config)
    return loss


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


# STOI's analysis (Taal et al. 2011): 15 one-third-octave bands from 150 Hz, envelopes
# compared over 384 ms, the enhanced envelope scaled to the clean one's energy and clipped
# at a signal-to-distortion ratio of -15 dB, silent frames (40 dB below the loudest) left out.
STOI_BANDS = 15
STOI_LOWEST_CENTRE_HZ = 150.0
STOI_SEGMENT_SECONDS = 0.384
_STOI_CLIP = 1.0 + 10.0 ** (15.0 / 20.0)
_STOI_SILENCE_DB = 40.0


@functools.lru_cache(maxsize=8)
def _third_octave_matrix_cached(sample_rate, frame_length):
  num_bins = frame_length // 2 + 1
  bin_hz = np.arange(num_bins) * sample_rate / frame_length
  centres = STOI_LOWEST_CENTRE_HZ * 2.0 ** (np.arange(STOI_BANDS) / 3.0)
  matrix = np.zeros((num_bins, STOI_BANDS), np.float32)
  for band, centre in enumerate(centres):
    inside = (bin_hz >= centre * 2.0 ** (-1.0 / 6.0)) & (bin_hz < centre * 2.0 ** (1.0 / 6.0))
    if not inside.any():
      raise ValueError(f"the one-third-octave band at {centre:.0f} Hz holds no STFT bin at "
                       f"{sample_rate} Hz / {frame_length}")
    matrix[inside, band] = 1.0
  return matrix


def third_octave_matrix(config):
  """[num_bins, 15]: which STFT bins each of STOI's one-third-octave bands sums."""
  return _third_octave_matrix_cached(config.sample_rate, config.frame_length).copy()


def stoi_segment_frames(config):
  """STFT frames of one 384 ms envelope segment (24 at a 16 ms hop)."""
  return max(2, int(round(STOI_SEGMENT_SECONDS * config.sample_rate / config.hop_length)))


def envelope_decorrelation(clean_spectra, enhanced_spectra, config, segment_step=4, eps=1e-10):
  """1 - STOI's intermediate intelligibility on this STFT, per example ([batch]).

  `clean_spectra`, `enhanced_spectra`: STFTs [batch, frames, bins] complex64 with at least
  `stoi_segment_frames(config)` frames. Band envelopes are the root of each band's power;
  segments start every `segment_step` frames (STOI: every frame). Segments whose clean
  energy is 40 dB below the example's loudest segment do not count.
  """
  segment = stoi_segment_frames(config)
  frames = clean_spectra.shape[1]
  if frames is not None and frames < segment:
    raise ValueError(f"the STOI-like loss compares {segment}-frame segments "
                     f"({STOI_SEGMENT_SECONDS * 1000:.0f} ms); these spectra hold {frames} frames")
  bands = tf.constant(third_octave_matrix(config))

  def envelope_segments(spectra):
    power = tf.square(tf.math.real(spectra)) + tf.square(tf.math.imag(spectra))
    envelope = tf.sqrt(tf.einsum("btf,fk->btk", power, bands) + eps)
    # [batch, segments, frames of a segment, bands]
    return tf.signal.frame(envelope, segment, segment_step, axis=1)

  clean = envelope_segments(clean_spectra)
  enhanced = envelope_segments(enhanced_spectra)
  clean_energy = tf.reduce_sum(tf.square(clean), axis=2, keepdims=True)
  enhanced_energy = tf.reduce_sum(tf.square(enhanced), axis=2, keepdims=True)
  scaled = enhanced * tf.sqrt(clean_energy / (enhanced_energy + eps))
  clipped = tf.minimum(scaled, _STOI_CLIP * clean)
  clean = clean - tf.reduce_mean(clean, axis=2, keepdims=True)
  clipped = clipped - tf.reduce_mean(clipped, axis=2, keepdims=True)
  correlation = tf.reduce_sum(clean * clipped, axis=2) / tf.sqrt(
      tf.reduce_sum(tf.square(clean), axis=2) * tf.reduce_sum(tf.square(clipped), axis=2) + eps)
  # [batch, segments]: the mean over bands, then over the segments that are not silent.
  correlation = tf.reduce_mean(correlation, axis=-1)
  segment_energy = tf.reduce_sum(clean_energy, axis=[2, 3])
  loudest = tf.reduce_max(segment_energy, axis=1, keepdims=True)
  sounding = tf.cast(segment_energy > loudest * 10.0 ** (-_STOI_SILENCE_DB / 10.0),
                     correlation.dtype)
  mean = tf.reduce_sum(correlation * sounding, axis=1) / tf.maximum(
      tf.reduce_sum(sounding, axis=1), 1.0)
  return 1.0 - mean
