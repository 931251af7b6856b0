"""Loudness (ITU-R BS.1770, LUFS), mixing speech and noise at a LUFS SNR, clip protection.

The SNR of every training and evaluation mixture is a loudness difference in LUFS (the
paper's recipe, measured as pyloudnorm does but vectorized, see `_LoudnessMeter`); every
mixture and target is kept below `CLIP_PEAK`.
"""
from typing import Optional

import numpy as np
import pyloudnorm
import scipy.signal

from tf_tinyse import audio

# pyloudnorm's gating block is 0.4 s: a shorter signal has no loudness.
MIN_LOUDNESS_SECONDS = 0.4
# Peak the mixture (and target) may reach; louder mixtures are scaled down, speech and noise
# together, so the SNR is kept and no sample clips in 16-bit export or in the model input.
CLIP_PEAK = 0.99


class TooQuietError(ValueError):
  """A signal is below the BS.1770 absolute gate (-70 LUFS): its loudness is -inf.

  The SNR of such a mixture is undefined (the noise gain would be infinite), so there is no
  sound fallback level: callers draw another segment instead (training) or another offset
  (evaluation).
  """


_LOUDNESS_CORRECTIONS = 3


class _LoudnessMeter:
  """pyloudnorm's `Meter(rate).integrated_loudness` (BS.1770-4), vectorized.

  pyloudnorm loops over gating blocks in Python and rebuilds its filter coefficients on every
  call; in the training pipeline, which measures ~100 segments per batch under the GIL, that
  made loudness the bottleneck. This computes the same quantity with the same K-weighting
  filters (taken from pyloudnorm's meter), the same block boundaries and the same gates; the
  tests check it against pyloudnorm itself.
  """

  def __init__(self, rate):
    meter = pyloudnorm.Meter(rate)
    self.rate = rate
    self._block = meter.block_size  # 0.4 s
    self._step = 1.0 - meter.overlap  # 0.25 of a block
    self._stages = [(f.b, f.a, f.passband_gain) for f in meter._filters.values()]  # pylint: disable=protected-access

  def __call__(self, wave):
    return self.gated_loudness(self.block_energies(wave))

  def block_energies(self, wave):
    """Mean square of the K-weighted signal per 0.4 s gating block (75 % overlap).

    Scaling the signal by g scales these by g**2, so the loudness of a scaled signal is
    `gated_loudness(z * g**2)`, without filtering it again.
    """
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1 or x.size < self._block * self.rate:
      raise ValueError(f"loudness needs a 1-D signal of >= {self._block} s, got {x.shape}")
    for b, a, gain in self._stages:
      x = gain * scipy.signal.lfilter(b, a, x)
    seconds = x.size / self.rate
    blocks = int(np.round((seconds - self._block) / (self._block * self._step))) + 1
    j = np.arange(blocks)
    # Same (float) boundary arithmetic as pyloudnorm, so the blocks match to the sample.
    lower = (self._block * (j * self._step) * self.rate).astype(np.int64)
    upper = np.minimum((self._block * (j * self._step + 1) * self.rate).astype(np.int64), x.size)
    energy = np.concatenate([[0.0], np.cumsum(np.square(x))])
    return (energy[upper] - energy[lower]) / (self._block * self.rate)

  @staticmethod
  def gated_loudness(z):
    """BS.1770 gating (absolute -70 LUFS, relative -10 LU) of block energies, in LUFS."""
    with np.errstate(divide="ignore"):
      block_lufs = -0.691 + 10.0 * np.log10(z)
      above_absolute = block_lufs >= -70.0
      if not above_absolute.any():
        return -np.inf
      relative_gate = -0.691 + 10.0 * np.log10(np.mean(z[above_absolute])) - 10.0
      gated = (block_lufs > relative_gate) & (block_lufs > -70.0)
      if not gated.any():
        return -np.inf
      return float(-0.691 + 10.0 * np.log10(np.mean(z[gated])))


_meters = {}


def _meter(sample_rate):
  meter = _meters.get(sample_rate)
  if meter is None:
    meter = _meters[sample_rate] = _LoudnessMeter(sample_rate)
  return meter


def loudness(wave, sample_rate=audio.SAMPLE_RATE) -> float:
  """Integrated loudness in LUFS (ITU-R BS.1770-4, as pyloudnorm's Meter computes it).

  -inf when every 0.4 s block is below the -70 LUFS absolute gate. Needs >= 0.4 s of signal.
  """
  return _meter(sample_rate)(wave)


def mix_at_snr(speech, noise, snr_db, gain_db, *, sample_rate=audio.SAMPLE_RATE,
               speech_lufs=None, target: Optional[np.ndarray] = None):
  """Mixes speech and noise so that loudness(speech) - loudness(noise) = snr_db (LUFS).

  The noise is scaled, the speech is kept, then both are multiplied by the overall gain.
  If the mixture (or the clean target) would peak above `CLIP_PEAK` (0.99), both are scaled
  down together (`limit_peak`), which keeps the SNR but lowers the effective gain.

  Args:
    speech, noise: 1-D float arrays of the same length (>= 0.4 s).
    snr_db: the loudness difference to reach, dB.
    gain_db: overall gain applied to both, dB.
    speech_lufs: the speech loudness if already known (skips measuring it again).
    target: the clean signal to return instead of `speech` (same shape), e.g. the
      early-reflection speech of a reverberant `speech`; the SNR is still that of `speech`,
      the signal in the mixture. It gets the same gain and clip protection.

  Returns:
    (noisy, clean) float32 arrays.

  Raises:
    TooQuietError: speech or noise is below the loudness gate (loudness -inf).
  """
  speech = np.asarray(speech, dtype=np.float32)
  noise = np.asarray(noise, dtype=np.float32)
  if speech.shape != noise.shape:
    raise ValueError(f"speech and noise differ in shape: {speech.shape} vs {noise.shape}")
  if target is not None and np.shape(target) != speech.shape:
    raise ValueError(f"target and speech differ in shape: {np.shape(target)} vs {speech.shape}")
  meter = _meter(sample_rate)
  l_speech = meter(speech) if speech_lufs is None else speech_lufs
  z_noise = meter.block_energies(noise)
  l_noise = meter.gated_loudness(z_noise)
  if not np.isfinite(l_speech) or not np.isfinite(l_noise):
    raise TooQuietError(f"loudness speech {l_speech} LUFS, noise {l_noise} LUFS")
  # Loudness is a gated mean square, so scaling by g moves it by 20 log10(g) dB, except when
  # the scaling moves blocks across the -70 LUFS absolute gate (sparse noise such as keyboard
  # clicks); then the level is measured again and corrected (converges in one or two steps).
  noise_gain = 10.0 ** ((l_speech - snr_db - l_noise) / 20.0)
  for _ in range(_LOUDNESS_CORRECTIONS):
    error = meter.gated_loudness(z_noise * noise_gain**2) - (l_speech - snr_db)
    if not np.isfinite(error) or abs(error) < 0.001:
      break
    noise_gain *= 10.0 ** (-error / 20.0)
  gain = 10.0 ** (gain_db / 20.0)
  mixed_speech = speech * gain
  clean = mixed_speech if target is None else np.asarray(target, dtype=np.float32) * gain
  noisy = mixed_speech + noise * (noise_gain * gain)
  noisy, clean = limit_peak(noisy, clean)
  return noisy.astype(np.float32), clean.astype(np.float32)


def apply_gain(noisy, clean, gain_db):
  """Both multiplied by the gain (dB), then clip-protected (`limit_peak`)."""
  gain = 10.0 ** (gain_db / 20.0)
  return limit_peak(noisy * gain, clean * gain)


def limit_peak(noisy, clean):
  """Scales both down together when either peaks above `CLIP_PEAK` (keeps their ratio)."""
  peak = max(float(np.max(np.abs(noisy))), float(np.max(np.abs(clean))))
  if peak > CLIP_PEAK:
    scale = CLIP_PEAK / peak
    noisy, clean = noisy * scale, clean * scale
  return noisy, clean
