"""The signal path around the network: STFT, mel features, mel mask, inverse STFT.

Method (Stamenovic et al. 2021; Fedorov et al. 2020): 16 kHz audio, frames of
512 samples with a hop of 256 (16 ms), features `Z = (G |Y|)^0.3` with `G` a
128-band mel filterbank, a mel-domain mask `M` brought back to linear
frequency with `Gᵀ`, multiplied into the noisy STFT and inverted.

Every function here works on batches (`[batch, samples]` or
`[batch, frames, bins]`) in TensorFlow, so training, evaluation, enhancement
and export compute features in exactly one way.
"""
import dataclasses
import functools
import math

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
  """STFT and mel settings. The defaults are the paper's."""
  sample_rate: int = 16000
  frame_length: int = 512
  hop_length: int = 256
  num_bands: int = 128
  compression: float = 0.3
  # Lowest gain the mask can apply: mask' = floor + (1 - floor) * mask. 0 is the paper's path.
  mask_floor: float = 0.0
  # STFT bins centred below this frequency get gain 0 whatever the mask says: speech holds
  # next to no energy there, recordings often hold rumble and drift. 0 is the paper's path.
  low_cut_hz: float = 0.0

  def __post_init__(self):
    if not 0.0 <= self.mask_floor < 1.0:
      raise ValueError(f"mask_floor must be in [0, 1), got {self.mask_floor}")
    if not 0.0 <= self.low_cut_hz < self.sample_rate / 2:
      raise ValueError(f"low_cut_hz must be in [0, {self.sample_rate / 2:g}) (the Nyquist "
                       f"frequency), got {self.low_cut_hz}")

  @property
  def num_bins(self):
    return self.frame_length // 2 + 1

  @property
  def algorithmic_latency_ms(self):
    """Frame plus hop: the frame must be complete, then one hop to compute it."""
    return 1000.0 * (self.frame_length + self.hop_length) / self.sample_rate

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d):
    return cls(**d)


def analysis_window(config):
  """Square-root periodic Hann: applied at analysis and synthesis, its square
  sums to one at 50 % overlap, which gives perfect reconstruction."""
  n = np.arange(config.frame_length)
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / config.frame_length)
  return np.sqrt(hann).astype(np.float32)


def _hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def _mel_matrix_cached(sample_rate, frame_length, num_bands):
  num_bins = frame_length // 2 + 1
  bin_hz = sample_rate / frame_length
  # Band centres equally spaced in mel from 0 Hz to Nyquist, in units of bins.
  centres = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sample_rate / 2), num_bands)) / bin_hz
  # At 16 kHz/512 the lowest mel bands are narrower than one bin; such bands
  # would see no energy. Spacing the low centres one bin apart (linear below
  # the crossover, mel above) gives every band at least one bin.
  centres = np.maximum(centres, np.arange(num_bands, dtype=np.float64))
  if centres[-1] > num_bins - 1 + 1e-9:
    raise ValueError(f"{num_bands} bands do not fit into {num_bins} STFT bins")
  # Triangles between neighbouring centres: for every bin the weights of the
  # two bands around it sum to one (a partition of unity), so the transpose
  # interpolates a mel mask back to linear frequency and an all-ones mel mask
  # is the identity.
  bins = np.arange(num_bins, dtype=np.float64)
  matrix = np.zeros((num_bands, num_bins))
  for m in range(num_bands):
    left = centres[m - 1] if m > 0 else None
    right = centres[m + 1] if m < num_bands - 1 else None
    w = np.zeros(num_bins)
    w[bins == centres[m]] = 1.0
    if left is not None:
      rising = (bins > left) & (bins <= centres[m])
      w[rising] = (bins[rising] - left) / (centres[m] - left)
    else:
      w[bins <= centres[m]] = 1.0
    if right is not None:
      falling = (bins >= centres[m]) & (bins < right)
      w[falling] = (right - bins[falling]) / (right - centres[m])
    else:
      w[bins >= centres[m]] = 1.0
    matrix[m] = w
  return matrix.astype(np.float32)


def mel_matrix(config):
  """G, shape [num_bands, num_bins]; each column sums to one."""
  return _mel_matrix_cached(config.sample_rate, config.frame_length, config.num_bands).copy()


def num_frames(num_samples, config):
  """Frames `stft` returns for a signal of `num_samples` samples."""
  padded = num_samples + config.frame_length
  return -(-padded // config.hop_length) - (config.frame_length // config.hop_length) + 1


def stft(waves, config):
  """[batch, samples] float → [batch, frames, bins] complex64.

  The signal is padded on the left by `frame_length - hop_length` zeros so that
  the first frame ends at the first hop (a causal frame ending at sample
  `(t+1)·hop`), and on the right by at least one hop (up to a whole number of
  hops) so that the last samples are covered by two frames, as overlap-add
  needs for perfect reconstruction.
  """
  waves = tf.convert_to_tensor(waves, tf.float32)
  pad_left = config.frame_length - config.hop_length
  length = tf.shape(waves)[-1]
  pad_right = config.hop_length + (-(length + pad_left)) % config.hop_length
  padded = tf.pad(waves, [[0, 0], [pad_left, pad_right]])
  frames = tf.signal.frame(padded, config.frame_length, config.hop_length)
  return tf.signal.rfft(frames * analysis_window(config))


def istft(spectra, config, length):
  """[batch, frames, bins] complex → [batch, length] float; inverse of `stft`."""
  frames = tf.signal.irfft(spectra, fft_length=[config.frame_length])
  frames = frames * analysis_window(config)
  waves = tf.signal.overlap_and_add(frames, config.hop_length)
  start = config.frame_length - config.hop_length
  return waves[:, start:start + length]


def magnitude(spectra):
  return tf.abs(spectra)


def mel_features(spectra, config):
  """`Z = (G |Y|)^c`: [batch, frames, bins] complex → [batch, frames, bands]."""
  g = tf.constant(mel_matrix(config).T)  # [bins, bands]
  mel = tf.matmul(magnitude(spectra), g)
  return tf.pow(mel + 1e-8, config.compression)


def waveform_features(waves, config):
  """[batch, samples] → mel features [batch, frames, bands] (`mel_features` of `stft`)."""
  return mel_features(stft(waves, config), config)


def mel_mask_to_linear(mask, config):
  """`Gᵀ M`: [batch, frames, bands] → [batch, frames, bins]."""
  return tf.matmul(mask, tf.constant(mel_matrix(config)))


def floored_mask(mask, config):
  """The model's mask [..., bands] with the config's floor: `f + (1 - f) M`.

  G's columns sum to one, so the floor is also the lowest gain of every STFT bin.
  """
  if not config.mask_floor:
    return mask
  return config.mask_floor + (1.0 - config.mask_floor) * mask


def low_cut_bins(config):
  """How many STFT bins, from DC up, lie below `config.low_cut_hz` (their centre frequency)."""
  bin_hz = config.sample_rate / config.frame_length
  return min(config.num_bins, math.ceil(config.low_cut_hz / bin_hz))


def low_cut_gain(config):
  """[bins] float32: 0 for the `low_cut_bins` lowest bins, 1 above."""
  gain = np.ones(config.num_bins, np.float32)
  gain[:low_cut_bins(config)] = 0.0
  return gain


def bin_gains(mask, config):
  """The gain of every STFT bin: the (floored) mel mask brought back to linear frequency,
  zero below the low cut. [..., bands] → [..., bins]."""
  gains = mel_mask_to_linear(floored_mask(mask, config), config)
  if low_cut_bins(config):
    gains = gains * tf.constant(low_cut_gain(config))
  return gains


def apply_mel_mask(spectra, mask, config):
  """Multiplies the noisy STFT by the gain of each bin (`bin_gains`)."""
  return spectra * _as_complex(bin_gains(mask, config))


def compressed_spectrum(spectra, compression):
  """`X^c`: magnitude compressed, phase kept. Returns (|X|^c, X^c)."""
  mag = tf.abs(spectra)
  # The epsilon keeps the gradient of |X|^c finite at |X| = 0.
  compressed_mag = tf.pow(mag * mag + 1e-12, compression / 2.0)
  phase = spectra / _as_complex(tf.maximum(mag, 1e-12))
  return compressed_mag, _as_complex(compressed_mag) * phase


def _as_complex(real):
  # tf.complex, unlike tf.cast, has a gradient that keeps only the real part
  # without a warning about discarding the imaginary one.
  return tf.complex(real, tf.zeros_like(real))
