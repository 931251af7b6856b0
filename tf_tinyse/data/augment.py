"""Augmentation of training examples, for noises, rooms and voices the model has never heard.

Each augmentation changes the speech or the noise of one training example before the two are
mixed at their LUFS SNR (`mixing.mix_at_snr`, whose clip protection still applies after it):

  * spectral shaping (`--augment_spectral_shaping`): random second-order peaking and shelving
    filters (RBJ biquads, gains in ±`--spectral_shaping_db`) on the speech and, drawn
    independently, on the noise (`--spectral_shaping_signals` picks one or both); the RMS
    level is kept. The target is the shaped speech: a
    microphone's or a room's colour is not the model's to undo (a mask ≤ 1 could not boost).
  * speed perturbation (`--augment_speed`): the speech resampled (soxr) by a factor in
    [`--speed_min`, `--speed_max`], which changes tempo and pitch together (factor > 1: faster,
    higher); applied before the segment is cut, so the segment keeps its length.
  * reverberation (`--augment_reverb`): the speech convolved with a room impulse response
    drawn from a bank of `--rir_bank_size` shoebox rooms simulated with pyroomacoustics (image
    sources + ray tracing) at stream start, RT60 in [`--rt60_min`, `--rt60_max`] s.
  * a second noise (`--augment_noise_mix`): another noise segment added to the example's
    noise at a relative level in ±`--noise_mix_db` (RMS).
  * babble (`--augment_babble`): `--babble_talkers_min`..`_max` speech segments of training
    speakers other than the target's (`corpus.speaker_id`), each at the same RMS, summed and
    added to the noise like a second noise.
  * tonal noise (`--augment_tonal_noise`): a stationary narrowband component added to the
    noise: training noise through very narrow resonators (Q 30–300), either at 1–3 random
    frequencies (whines, beeps, feedback) or on a harmonic series (hum, motors), so that a
    steady tone is heard as noise and not as a voiced speech harmonic. Made from the training
    noise recordings, not from synthetic sines.
  * clicks (`--augment_clicks`): broadband clicks added to the noise: bursts of 1–10 ms cut
    from training noise, first-differenced (broadband) and decaying, at random times (2–20
    per second), so that a click is removed without the speech band it covers.
  * rumble (`--augment_rumble`): low-frequency noise added to the noise: a crop of training
    noise through a 4th-order Butterworth low-pass at 10–100 Hz (log-uniform), half the time
    with a DC offset, the way wind, handling, traffic and a cheap microphone's bias sit under
    field recordings. LUFS mixing weights such energy little (K-weighting), so at the drawn
    SNR it can carry more energy than the rest of the mixture, as it does in some ESC-50
    recordings; the model learns to remove it rather than to pass what it never heard.
  * SNR and level distributions: `--snr_distribution=normal` draws the SNR from a normal
    distribution truncated to [`--snr_db_min`, `--snr_db_max`]; `--level_distribution=lufs`
    sets the speech of the mixture to a loudness drawn from [`--level_lufs_min`,
    `--level_lufs_max`] instead of a gain relative to the file's own level.

All are off by default (probability 0, `uniform`, `relative`): the stream is then exactly the
one without augmentation. Every augmentation draws from its own generator seeded by
(seed, augmentation, example index), so the stream stays a pure function of (seed, step)
(resume is exact, parallel calls change nothing) and switching one augmentation on does not
change what another draws.
"""
import dataclasses
import functools
from typing import Optional, Sequence

from absl import flags
from absl import logging
import numpy as np
import scipy.fft
import scipy.signal
import soxr

from tf_tinyse import audio
from tf_tinyse.data.corpus import AudioSet
from tf_tinyse.data.corpus import crop
from tf_tinyse.data.corpus import speaker_id
from tf_tinyse.data.mixing import loudness

FLAGS = flags.FLAGS

SNR_DISTRIBUTIONS = ("uniform", "normal")
LEVEL_DISTRIBUTIONS = ("relative", "lufs")
SHAPING_SIGNALS = ("speech", "noise")

_PROBABILITY = "Probability (0 = off, 1 = every example)"
flags.DEFINE_float("augment_spectral_shaping", 0.0,
                   f"{_PROBABILITY} that the speech, and independently the noise, of a training "
                   "example go through random peaking/shelving filters (level kept).")
flags.DEFINE_float("spectral_shaping_db", 12.0,
                   "Spectral shaping: gain of each filter drawn from U(-x, x) dB.")
flags.DEFINE_multi_enum("spectral_shaping_signals", list(SHAPING_SIGNALS), SHAPING_SIGNALS,
                        "Spectral shaping: the signals it shapes (repeat the flag for both; "
                        "each is drawn independently with --augment_spectral_shaping). "
                        "noise alone colours the noise without changing the speech target.")
flags.DEFINE_float("augment_speed", 0.0,
                   f"{_PROBABILITY} of speed perturbation of the speech (tempo and pitch).")
flags.DEFINE_float("speed_min", 0.9, "Lowest speed factor (< 1: slower, lower pitch).")
flags.DEFINE_float("speed_max", 1.1, "Highest speed factor (> 1: faster, higher pitch).")
flags.DEFINE_float("augment_reverb", 0.0,
                   f"{_PROBABILITY} of reverberating the speech with a simulated room impulse "
                   "response; the target is the speech through the RIR's first "
                   "--reverb_early_ms (direct sound and early reflections).")
flags.DEFINE_float("rt60_min", 0.2, "Reverberation: lowest RT60 of the simulated rooms, s.")
flags.DEFINE_float("rt60_max", 0.8, "Reverberation: highest RT60 of the simulated rooms, s.")
flags.DEFINE_integer("rir_bank_size", 64,
                     "Reverberation: room impulse responses simulated at stream start (from the "
                     "seed) and drawn from for every reverberated example.")
flags.DEFINE_float("reverb_early_ms", 50.0,
                   "Reverberation: the part of the RIR after the direct sound kept in the "
                   "training target, ms (0: the direct sound only, i.e. dry speech).")
flags.DEFINE_float("augment_noise_mix", 0.0,
                   f"{_PROBABILITY} of adding a second noise segment to the example's noise.")
flags.DEFINE_float("noise_mix_db", 10.0,
                   "Level of a second noise, babble, a tonal component, clicks or rumble "
                   "relative to the example's noise (RMS): U(-x, x) dB.")
flags.DEFINE_float("augment_babble", 0.0,
                   f"{_PROBABILITY} of adding babble (other training speakers than the "
                   "target's, see --speaker_id_pattern) to the example's noise.")
flags.DEFINE_float("augment_tonal_noise", 0.0,
                   f"{_PROBABILITY} of adding a tonal component (training noise through narrow "
                   "resonators: 1-3 random frequencies or a harmonic series) to the example's "
                   "noise, at --noise_mix_db relative to it.")
flags.DEFINE_float("augment_clicks", 0.0,
                   f"{_PROBABILITY} of adding broadband clicks (1-10 ms decaying bursts of "
                   "differenced training noise, 2-20 per second) to the example's noise, at "
                   "--noise_mix_db relative to it.")
flags.DEFINE_float("augment_rumble", 0.0,
                   f"{_PROBABILITY} of adding low-frequency rumble (training noise low-passed "
                   "at 10-100 Hz, half the time with a DC offset) to the example's noise, at "
                   "--noise_mix_db relative to it.")
flags.DEFINE_integer("babble_talkers_min", 3, "Babble: fewest talkers.")
flags.DEFINE_integer("babble_talkers_max", 6, "Babble: most talkers.")
flags.DEFINE_enum("snr_distribution", "uniform", SNR_DISTRIBUTIONS,
                  "Training SNR distribution: uniform over [--snr_db_min, --snr_db_max], or "
                  "normal (mean the middle of that range, sd --snr_db_std) truncated to it.")
flags.DEFINE_float("snr_db_std", 5.0, "Standard deviation of --snr_distribution=normal, dB.")
flags.DEFINE_enum("level_distribution", "relative", LEVEL_DISTRIBUTIONS,
                  "Training level: 'relative' = gain U(-gain_db_max, gain_db_max) dB on the "
                  "file's own level; 'lufs' = the speech of each mixture set to a loudness "
                  "drawn from U(--level_lufs_min, --level_lufs_max) LUFS.")
flags.DEFINE_float("level_lufs_min", -40.0, "Lowest speech loudness of --level_distribution=lufs.")
flags.DEFINE_float("level_lufs_max", -15.0,
                   "Highest speech loudness of --level_distribution=lufs.")

_PROBABILITY_FLAGS = ("augment_spectral_shaping", "augment_speed", "augment_reverb",
                      "augment_noise_mix", "augment_babble", "augment_tonal_noise",
                      "augment_clicks", "augment_rumble")
for _name in _PROBABILITY_FLAGS:
  flags.register_validator(_name, lambda v: 0 <= v <= 1, f"--{_name} must be in [0, 1]")
flags.register_validator("spectral_shaping_db", lambda v: 0 <= v <= 24,
                         "--spectral_shaping_db must be in [0, 24]")
flags.register_validator("noise_mix_db", lambda v: 0 <= v <= 40,
                         "--noise_mix_db must be in [0, 40]")
flags.register_validator("rir_bank_size", lambda v: 1 <= v <= 10000,
                         "--rir_bank_size must be in [1, 10000]")
flags.register_validator("reverb_early_ms", lambda v: 0 <= v <= 200,
                         "--reverb_early_ms must be in [0, 200]")
flags.register_validator("snr_db_std", lambda v: v > 0, "--snr_db_std must be > 0")
flags.register_multi_flags_validator(
    ["speed_min", "speed_max"], lambda d: 0.5 <= d["speed_min"] <= d["speed_max"] <= 2.0,
    "--speed_min must be <= --speed_max, both in [0.5, 2]")
flags.register_multi_flags_validator(
    ["rt60_min", "rt60_max"], lambda d: 0.1 <= d["rt60_min"] <= d["rt60_max"] <= 2.0,
    "--rt60_min must be <= --rt60_max, both in [0.1, 2] s")
flags.register_multi_flags_validator(
    ["babble_talkers_min", "babble_talkers_max"],
    lambda d: 1 <= d["babble_talkers_min"] <= d["babble_talkers_max"] <= 20,
    "--babble_talkers_min must be <= --babble_talkers_max, both in [1, 20]")
flags.register_multi_flags_validator(
    ["level_lufs_min", "level_lufs_max"],
    lambda d: -70 < d["level_lufs_min"] <= d["level_lufs_max"] <= 0,
    "--level_lufs_min must be <= --level_lufs_max, both in (-70, 0] LUFS")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation settings (see the module docstring); the defaults switch everything off."""
  spectral_shaping: float = 0.0
  spectral_shaping_db: float = 12.0
  spectral_shaping_signals: tuple = SHAPING_SIGNALS
  speed: float = 0.0
  speed_min: float = 0.9
  speed_max: float = 1.1
  reverb: float = 0.0
  rt60_min: float = 0.2
  rt60_max: float = 0.8
  rir_bank_size: int = 64
  reverb_early_ms: float = 50.0
  noise_mix: float = 0.0
  noise_mix_db: float = 10.0
  babble: float = 0.0
  babble_talkers_min: int = 3
  babble_talkers_max: int = 6
  tonal_noise: float = 0.0
  clicks: float = 0.0
  rumble: float = 0.0
  snr_distribution: str = "uniform"
  snr_db_std: float = 5.0
  level_distribution: str = "relative"
  level_lufs_min: float = -40.0
  level_lufs_max: float = -15.0

  def __post_init__(self):
    if self.snr_distribution not in SNR_DISTRIBUTIONS:
      raise ValueError(f"snr_distribution must be one of {SNR_DISTRIBUTIONS}")
    if self.level_distribution not in LEVEL_DISTRIBUTIONS:
      raise ValueError(f"level_distribution must be one of {LEVEL_DISTRIBUTIONS}")
    signals = tuple(self.spectral_shaping_signals)
    if not signals or set(signals) - set(SHAPING_SIGNALS):
      raise ValueError(f"spectral_shaping_signals must be some of {SHAPING_SIGNALS}, got "
                       f"{signals}")
    # The order given does not matter: keep one canonical tuple so equal configs compare equal.
    object.__setattr__(self, "spectral_shaping_signals",
                       tuple(name for name in SHAPING_SIGNALS if name in signals))

  @property
  def changes_examples(self) -> bool:
    """Whether any augmentation changes the speech, noise or level of an example."""
    return (max(self.spectral_shaping, self.speed, self.reverb, self.noise_mix, self.babble,
                self.tonal_noise, self.clicks, self.rumble) > 0
            or self.level_distribution != "relative")

  @classmethod
  def from_flags(cls, flag_values=None) -> "AugmentConfig":
    """The config given by the augmentation flags (parsed `FLAGS` unless another FlagValues)."""
    f = FLAGS if flag_values is None else flag_values
    return cls(spectral_shaping=f.augment_spectral_shaping,
               spectral_shaping_db=f.spectral_shaping_db,
               spectral_shaping_signals=tuple(f.spectral_shaping_signals), speed=f.augment_speed,
               speed_min=f.speed_min, speed_max=f.speed_max, reverb=f.augment_reverb,
               rt60_min=f.rt60_min, rt60_max=f.rt60_max, rir_bank_size=f.rir_bank_size,
               reverb_early_ms=f.reverb_early_ms, noise_mix=f.augment_noise_mix,
               noise_mix_db=f.noise_mix_db, babble=f.augment_babble,
               babble_talkers_min=f.babble_talkers_min,
               babble_talkers_max=f.babble_talkers_max, tonal_noise=f.augment_tonal_noise,
               clicks=f.augment_clicks, rumble=f.augment_rumble,
               snr_distribution=f.snr_distribution,
               snr_db_std=f.snr_db_std, level_distribution=f.level_distribution,
               level_lufs_min=f.level_lufs_min, level_lufs_max=f.level_lufs_max)


# --------------------------------------------------------------------------------------------
# SNR distribution


def draw_snrs(rng, size, low, high, distribution="uniform", std=5.0) -> np.ndarray:
  """`size` SNRs (dB) in [low, high]: uniform, or normal around the middle truncated to it.

  `uniform` is exactly `rng.uniform(low, high, size)`, the draw of the stream without
  augmentation. The truncated normal redraws the values outside the range.
  """
  if distribution == "uniform":
    return rng.uniform(low, high, size)
  if distribution != "normal":
    raise ValueError(f"unknown SNR distribution {distribution!r}")
  snrs = rng.normal((low + high) / 2, std, size)
  for _ in range(100):
    outside = (snrs < low) | (snrs > high)
    if not outside.any():
      break
    snrs[outside] = rng.normal((low + high) / 2, std, int(outside.sum()))
  return np.clip(snrs, low, high)


# --------------------------------------------------------------------------------------------
# Spectral shaping


@dataclasses.dataclass(frozen=True)
class Biquad:
  """One second-order filter of the RBJ audio-EQ cookbook: `peaking`, `low_shelf` or
  `high_shelf` at `freq` Hz with `gain_db` (shelves: slope 1, `q` unused)."""
  kind: str
  freq: float
  gain_db: float
  q: float = 0.707

  def sos(self, sample_rate=audio.SAMPLE_RATE) -> np.ndarray:
    """The filter as one row of `scipy.signal.sosfilt` coefficients (a0 = 1)."""
    a = 10.0 ** (self.gain_db / 40.0)
    w0 = 2 * np.pi * self.freq / sample_rate
    cos, sin = np.cos(w0), np.sin(w0)
    if self.kind == "peaking":
      alpha = sin / (2 * self.q)
      b = [1 + alpha * a, -2 * cos, 1 - alpha * a]
      den = [1 + alpha / a, -2 * cos, 1 - alpha / a]
    elif self.kind in ("low_shelf", "high_shelf"):
      alpha = sin / 2 * np.sqrt(2.0)  # shelf slope S = 1
      root = 2 * np.sqrt(a) * alpha
      s = 1 if self.kind == "low_shelf" else -1  # the high shelf mirrors the cosine terms
      b = [a * ((a + 1) - s * (a - 1) * cos + root), s * 2 * a * ((a - 1) - s * (a + 1) * cos),
           a * ((a + 1) - s * (a - 1) * cos - root)]
      den = [(a + 1) + s * (a - 1) * cos + root, -s * 2 * ((a - 1) + s * (a + 1) * cos),
             (a + 1) + s * (a - 1) * cos - root]
    else:
      raise ValueError(f"unknown biquad kind {self.kind!r}")
    return np.array(b + den, dtype=np.float64) / den[0]


# Where the random filters go: peaks over the speech band, shelves at its low and high ends.
_SHAPING_BANDS = {"peaking": (150.0, 6000.0), "low_shelf": (100.0, 600.0),
                  "high_shelf": (1500.0, 6000.0)}
_SHAPING_FILTERS = 2


def random_biquads(rng, max_db, count=_SHAPING_FILTERS) -> list:
  """`count` filters of random kind, log-uniform frequency, gain U(-max_db, max_db), Q in
  [0.5, 2] (log-uniform)."""
  kinds = tuple(_SHAPING_BANDS)
  filters = []
  for _ in range(count):
    kind = kinds[int(rng.integers(len(kinds)))]
    low, high = _SHAPING_BANDS[kind]
    freq = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    gain_db = float(rng.uniform(-max_db, max_db))
    q = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    filters.append(Biquad(kind, freq, gain_db, q))
  return filters


def shape_spectrum(wave, filters: Sequence[Biquad], sample_rate=audio.SAMPLE_RATE):
  """`wave` through the filters in cascade, rescaled to its own RMS (float32)."""
  if not filters:
    return wave
  sos = np.stack([f.sos(sample_rate) for f in filters])
  shaped = scipy.signal.sosfilt(sos, np.asarray(wave, dtype=np.float64))
  rms_in, rms_out = np.sqrt(np.mean(np.square(wave, dtype=np.float64))), np.sqrt(
      np.mean(np.square(shaped)))
  if rms_out > 0:
    shaped *= rms_in / rms_out
  return shaped.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Speed perturbation

# Extra input samples resampled beyond the segment, so that soxr's edge does not reach it.
_RESAMPLE_MARGIN = 64


def change_speed(wave, factor, sample_rate=audio.SAMPLE_RATE):
  """`wave` played `factor` times faster: 1/factor as long, pitch times factor (soxr)."""
  if factor == 1:
    return np.asarray(wave, dtype=np.float32)
  return soxr.resample(np.asarray(wave, dtype=np.float32), sample_rate, sample_rate / factor,
                       quality="HQ")


def _window(wave, start, length):
  """wave[start:start + length] with zeros where that lies before or after the file."""
  out = np.zeros(length, np.float32)
  lo, hi = max(start, 0), min(start + length, wave.size)
  if hi > lo:
    out[lo - start:hi - start] = wave[lo:hi]
  return out


# --------------------------------------------------------------------------------------------
# Reverberation

# pyroomacoustics draws each path's delay with an 81-tap fractional-delay filter centred on
# it: a RIR is kept from 40 samples before its direct-path peak (the sound arrives at ~0).
_FRACTIONAL_DELAY_HALF = 40
_ROOM_DIMS = ((3.0, 10.0), (3.0, 8.0), (2.4, 4.0))  # length, width, height ranges, m
_WALL_DISTANCE = 0.5  # source and microphone at least this far from every wall, m
_TAIL_DB = -60.0  # a RIR ends where its energy decay curve falls below this


def simulate_rir(rng, rt60, sample_rate=audio.SAMPLE_RATE) -> np.ndarray:
  """The impulse response of a random shoebox room designed (Sabine) for `rt60` seconds.

  Room dimensions, source and microphone positions are drawn from `rng`; pyroomacoustics
  simulates image sources up to order 3 plus ray tracing for the tail (its own generators are
  seeded from `rng`, so the response is a function of `rng`'s state). The response starts at
  the direct sound and ends 60 dB down its energy decay; not normalized.
  """
  import pyroomacoustics as pra  # pylint: disable=g-import-not-at-top  (slow import, only here)
  for _ in range(100):
    dims = np.array([rng.uniform(*r) for r in _ROOM_DIMS])
    try:
      absorption, _ = pra.inverse_sabine(rt60, dims)
    except ValueError:  # too large a room for so short a reverberation: draw another room
      continue
    source, mic = (rng.uniform(_WALL_DISTANCE, dims - _WALL_DISTANCE) for _ in range(2))
    if np.linalg.norm(source - mic) >= 2 * _WALL_DISTANCE:
      break
  else:
    raise ValueError(f"no shoebox room found for RT60 {rt60} s")
  seeds = rng.integers(0, 2**63, size=2)
  pra.random.seed(numpy=int(seeds[0]), libroom=int(seeds[1]))
  room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(float(absorption)),
                     max_order=3, ray_tracing=True, air_absorption=True)
  room.set_ray_tracing()
  room.add_source(source)
  room.add_microphone(mic)
  room.compute_rir()
  rir = np.asarray(room.rir[0][0], dtype=np.float64)
  rir = rir[max(0, int(np.argmax(np.abs(rir))) - _FRACTIONAL_DELAY_HALF):]
  decay = np.cumsum(np.square(rir)[::-1])[::-1]
  end = int(np.searchsorted(-decay, -decay[0] * 10 ** (_TAIL_DB / 10)))
  return rir[:max(end, 1)]


def early_samples(early_ms, sample_rate=audio.SAMPLE_RATE) -> int:
  """Taps of a bank RIR that make the training target: the direct sound and `early_ms`."""
  return _FRACTIONAL_DELAY_HALF + 1 + int(round(early_ms * sample_rate / 1000))


@functools.lru_cache(maxsize=4)
def rir_bank(seed, size, rt60_min, rt60_max, early_ms, sample_rate=audio.SAMPLE_RATE) -> tuple:
  """`size` simulated RIRs (float32), the same for the same arguments (cached in-process).

  RT60s are spread evenly over [rt60_min, rt60_max] (stratified draws), and each RIR is
  scaled so that its first `early_samples(early_ms)` taps have unit energy: the training
  target (speech through those taps) keeps about the level of the dry speech.
  """
  rng = np.random.default_rng([int(seed), _STREAM_ID, _BANK])
  rt60s = rt60_min + (rt60_max - rt60_min) * (np.arange(size) + rng.random(size)) / size
  early = early_samples(early_ms, sample_rate)
  bank = []
  for rt60 in rt60s:
    rir = simulate_rir(rng, float(rt60), sample_rate)
    rir /= np.sqrt(np.sum(np.square(rir[:early])))
    bank.append(rir.astype(np.float32))
  return tuple(bank)


def reverberate(wave, rir, early, context):
  """(reverberant, early-reflection) speech of the `wave.size - context` samples after the
  first `context` ones (context >= rir.size - 1: the reverberation of earlier speech reaches
  into the segment).

  `early` taps of the RIR make the second signal, the training target. Why not the dry
  speech: the direct sound and the first ~50 ms of reflections fuse with it perceptually and
  help intelligibility, and a causal model with a 16 ms hop cannot remove them anyway; what it
  should learn to suppress, as mild dereverberation, is the late tail. Both signals share the
  RIR's timing, so the target stays aligned with the speech in the mixture.
  """
  return _BankConvolver((rir,), early)(0, wave, context)


class _BankConvolver:
  """`reverberate` with the RIRs of a bank, their spectra computed once per segment length.

  One forward FFT of the speech and two inverse ones (full and early RIR) per example: the
  part of the circular convolution after the first `rir.size - 1` samples is the linear one
  as soon as the FFT is as long as the speech.
  """

  def __init__(self, bank, early):
    self._bank = bank
    self._early = early
    self._spectra = {}  # (rir index, FFT size) -> (full, early) RIR spectra

  def __call__(self, k, wave, context):
    rir = self._bank[k]
    if context < rir.size - 1:
      raise ValueError(f"context {context} shorter than the RIR ({rir.size} taps)")
    wave = np.asarray(wave, dtype=np.float32)[context - (rir.size - 1):]
    size = scipy.fft.next_fast_len(wave.size, real=True)
    spectra = self._spectra.get((k, size))
    if spectra is None:
      spectra = (scipy.fft.rfft(rir, size), scipy.fft.rfft(rir[:self._early], size))
      if len(self._spectra) < 4 * len(self._bank):  # bounded, whatever lengths come
        self._spectra[(k, size)] = spectra
    speech = scipy.fft.rfft(wave, size)
    valid = slice(rir.size - 1, wave.size)
    return tuple(scipy.fft.irfft(speech * h, size)[valid].astype(np.float32) for h in spectra)


# --------------------------------------------------------------------------------------------
# Noise mixing and babble


def add_at_level(noise, other, relative_db):
  """noise + other, `other` scaled to `relative_db` dB of the noise's RMS (float32)."""
  rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
  rms_noise, rms_other = rms(noise), rms(other)
  if rms_other == 0:
    return noise
  scale = (rms_noise if rms_noise > 0 else rms_other) / rms_other * 10 ** (relative_db / 20)
  return (noise + other * scale).astype(np.float32)


def files_by_speaker(speakers) -> dict:
  """{speaker: [indices of its files]} of a list of per-file speaker ids, speakers sorted."""
  by_speaker = {}
  for i, speaker in enumerate(speakers):
    by_speaker.setdefault(speaker, []).append(i)
  return dict(sorted(by_speaker.items()))


def babble(rng, waves, by_speaker, exclude, length, talkers) -> tuple:
  """(babble, file indices): `talkers` random crops of `waves` by speakers other than
  `exclude` (`by_speaker` as `files_by_speaker` gives it), each at the same RMS, summed.

  The talkers are distinct speakers while there are enough of them, then repeat. Returns
  (None, []) when every file is by `exclude`.
  """
  others = [s for s in by_speaker if s != exclude]
  if not others:
    return None, []
  picked = rng.permutation(len(others))[:talkers]
  while picked.size < talkers:
    picked = np.concatenate([picked, rng.permutation(len(others))[:talkers - picked.size]])
  total = np.zeros(length, np.float32)
  files = []
  for k in picked:
    candidates = by_speaker[others[k]]
    i = candidates[int(rng.integers(len(candidates)))]
    start = int(rng.integers(max(1, waves[i].size - length + 1)))  # loops short files only
    segment = crop(waves[i], start, length, loop=True)
    rms = float(np.sqrt(np.mean(np.square(segment, dtype=np.float64))))
    if rms > 0:
      total += segment / rms
    files.append(i)
  return total, files


# --------------------------------------------------------------------------------------------
# Tonal noise and clicks

_TONE_BAND = (80.0, 7000.0)  # Hz: where a tone's frequency or a series' harmonics lie
_TONE_Q = (30.0, 300.0)  # resonator Q, log-uniform: bandwidths f/Q of a few Hz to tens of Hz
_HUM_F0 = (50.0, 400.0)  # Hz: fundamental of a harmonic series
_HUM_HARMONICS = 8  # at most; those above the tone band are dropped
_TONE_WARMUP = 0.25  # s of extra noise filtered first, so the resonators have rung up


def resonator(freq, q, sample_rate=audio.SAMPLE_RATE) -> np.ndarray:
  """An RBJ band-pass biquad (0 dB at `freq`, bandwidth freq / q) as one sosfilt row."""
  w0 = 2 * np.pi * freq / sample_rate
  alpha = np.sin(w0) / (2 * q)
  den = [1 + alpha, -2 * np.cos(w0), 1 - alpha]
  return np.array([alpha, 0.0, -alpha] + den, dtype=np.float64) / den[0]


def tone_frequencies(rng) -> np.ndarray:
  """The frequencies of one tonal component: 1–3 log-uniform in the tone band, or (half the
  time) a harmonic series of a log-uniform fundamental, its harmonics up to the band's top."""
  if rng.random() < 0.5:
    return np.exp(rng.uniform(*np.log(_TONE_BAND), size=int(rng.integers(1, 4))))
  f0 = float(np.exp(rng.uniform(*np.log(_HUM_F0))))
  harmonics = f0 * np.arange(1, _HUM_HARMONICS + 1)
  return harmonics[harmonics <= _TONE_BAND[1]]


def tonal_noise(rng, noises, length, sample_rate=audio.SAMPLE_RATE) -> np.ndarray:
  """A stationary narrowband sound of `length` samples made from the `noises` recordings.

  Each frequency of `tone_frequencies` gets its own crop of a random recording through a
  resonator of random Q, scaled to unit RMS and then by a random level: the k-th frequency
  by k^-p (p in [0, 1.5], drawn once: a series' harmonics fall off) and U(-6, 0) dB. A noise through a resonator this narrow is a sine whose amplitude
  and phase wander slowly, as a real whine or hum does.
  """
  freqs = tone_frequencies(rng)
  warmup = int(_TONE_WARMUP * sample_rate)
  slope = rng.uniform(0.0, 1.5)
  total = np.zeros(length, np.float64)
  for k, freq in enumerate(freqs):
    source = noises[int(rng.integers(len(noises)))]
    segment = crop(source, int(rng.integers(source.size)), warmup + length, loop=True)
    q = float(np.exp(rng.uniform(*np.log(_TONE_Q))))
    ringing = scipy.signal.sosfilt(resonator(freq, q, sample_rate)[None],
                                   segment.astype(np.float64))[warmup:]
    rms = np.sqrt(np.mean(np.square(ringing)))
    if rms > 0:
      total += ringing / rms * (k + 1) ** -slope * 10 ** (rng.uniform(-6, 0) / 20)
  return total.astype(np.float32)


_CLICK_RATE = (2.0, 20.0)  # clicks per second, log-uniform per example
_CLICK_MS = (1.0, 10.0)  # burst length, log-uniform per click


def clicks(rng, noises, length, sample_rate=audio.SAMPLE_RATE) -> np.ndarray:
  """Broadband clicks over `length` samples, made from the `noises` recordings.

  A Poisson number of clicks at uniform times; each is a burst cut from a random recording,
  first-differenced (which tilts it +6 dB per octave, to a broadband crack), under an
  exponential decay of a quarter of its length, at a level within ±6 dB of the others.
  """
  rate = float(np.exp(rng.uniform(*np.log(_CLICK_RATE))))
  count = max(1, int(rng.poisson(rate * length / sample_rate)))
  total = np.zeros(length, np.float64)
  for _ in range(count):
    n = max(4, int(np.exp(rng.uniform(*np.log(_CLICK_MS))) * sample_rate / 1000))
    source = noises[int(rng.integers(len(noises)))]
    burst = np.diff(crop(source, int(rng.integers(source.size)), n + 1, loop=True)
                    .astype(np.float64))
    burst *= np.exp(-np.arange(n) / (n / 4))
    peak = np.max(np.abs(burst))
    if peak == 0:
      continue
    at = int(rng.integers(length))
    end = min(length, at + n)
    total[at:end] += (burst / peak * 10 ** (rng.uniform(-6, 6) / 20))[:end - at]
  return total.astype(np.float32)


_RUMBLE_CUTOFF = (10.0, 100.0)  # Hz, log-uniform: drift and wind up to traffic and HVAC
_RUMBLE_WARMUP = 0.5  # s of extra noise filtered first: a 10 Hz low-pass settles in ~0.1 s
_RUMBLE_DC_PROBABILITY = 0.5  # share of rumbles that also carry a DC offset


def rumble(rng, noises, length, sample_rate=audio.SAMPLE_RATE) -> np.ndarray:
  """Low-frequency rumble of `length` samples made from the `noises` recordings.

  A crop of a random recording through a 4th-order Butterworth low-pass at a log-uniform
  cutoff in `_RUMBLE_CUTOFF`, scaled to unit RMS, and with probability
  `_RUMBLE_DC_PROBABILITY` a DC offset of ±U(0.5, 2) times that RMS on top.
  """
  cutoff = float(np.exp(rng.uniform(*np.log(_RUMBLE_CUTOFF))))
  source = noises[int(rng.integers(len(noises)))]
  warmup = int(_RUMBLE_WARMUP * sample_rate)
  segment = crop(source, int(rng.integers(source.size)), warmup + length, loop=True)
  sos = scipy.signal.butter(4, cutoff, btype="lowpass", fs=sample_rate, output="sos")
  low = scipy.signal.sosfilt(sos, segment.astype(np.float64))[warmup:]
  rms = np.sqrt(np.mean(np.square(low)))
  low = low / rms if rms > 0 else low
  if rng.random() < _RUMBLE_DC_PROBABILITY:
    low = low + rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 2.0)
  return low.astype(np.float32)


# --------------------------------------------------------------------------------------------
# One training example

_STREAM_ID = 4  # the streams' generators: 1 speech segments, 2 noise segments, 3 batches
_SPEED, _SPEECH_SHAPING, _REVERB, _NOISE_MIX, _BABBLE, _NOISE_SHAPING, _LEVEL, _BANK = range(1, 9)
_TONAL, _CLICKS, _RUMBLE = 9, 10, 11


class ExampleAugmenter:
  """Augments the speech and the noise of training example `g` (speech/noise layout).

  A pure function of (seed, g) and the segments the stream picked: each augmentation draws
  from its own generator `(seed, 4, augmentation, g)`, created anew on every call, so a
  redrawn segment (too quiet to mix) gets the same augmentation draws.
  """

  def __init__(self, audio_set: AudioSet, config: AugmentConfig, segment_samples, seed,
               speaker_id_pattern, sample_rate=audio.SAMPLE_RATE):
    self._set = audio_set
    self._config = config
    self._n = segment_samples
    self._seed = int(seed)
    self._rate = sample_rate
    self._speakers = [speaker_id(p, speaker_id_pattern) for p in audio_set.clean_names]
    self._by_speaker = files_by_speaker(self._speakers)
    self._babble = config.babble
    if self._babble > 0 and len(self._by_speaker) < 2:
      logging.warning("--augment_babble: the training speech has one speaker only (see "
                      "--speaker_id_pattern), so there is no other speaker to babble; off")
      self._babble = 0.0
    self._bank = ()
    if config.reverb > 0:
      self._bank = rir_bank(self._seed, config.rir_bank_size, config.rt60_min, config.rt60_max,
                            config.reverb_early_ms, sample_rate)
    self._reverberate = _BankConvolver(
        self._bank, early_samples(config.reverb_early_ms, sample_rate))

  def _shaping(self, signal) -> float:
    """The spectral shaping probability of `signal` ("speech" or "noise")."""
    c = self._config
    return c.spectral_shaping if signal in c.spectral_shaping_signals else 0.0

  def _drawn(self, g, kind, probability) -> Optional[np.random.Generator]:
    """The generator of augmentation `kind` for example `g` if it applies, else None."""
    if probability <= 0:
      return None
    rng = np.random.default_rng([self._seed, _STREAM_ID, kind, int(g)])
    return rng if rng.random() < probability else None

  def speech(self, g, f, start) -> tuple:
    """(speech of the mixture, training target or None = that speech) for speech file `f`
    from sample `start`: speed perturbation, then spectral shaping, then reverberation."""
    c, n, wave = self._config, self._n, self._set.clean[f]
    rng = self._drawn(g, _SPEED, c.speed)
    factor = float(rng.uniform(c.speed_min, c.speed_max)) if rng is not None else 1.0
    rng = self._drawn(g, _SPEECH_SHAPING, self._shaping("speech"))
    filters = random_biquads(rng, c.spectral_shaping_db) if rng is not None else []
    rng = self._drawn(g, _REVERB, c.reverb)
    k = int(rng.integers(len(self._bank))) if rng is not None else None
    rir = self._bank[k] if rng is not None else None
    if factor == 1 and not filters and rir is None:
      return crop(wave, start, n, loop=False), None
    context = rir.size - 1 if rir is not None else 0  # earlier speech the RIR carries in
    if factor == 1:
      speech = _window(wave, start - context, context + n)
    else:
      before = int(np.ceil(context * factor))
      source = _window(wave, start - before - _RESAMPLE_MARGIN,
                       before + int(np.ceil(n * factor)) + 2 * _RESAMPLE_MARGIN)
      resampled = change_speed(source, factor, self._rate)
      first = int(round((before + _RESAMPLE_MARGIN) / factor)) - context
      speech = _window(resampled, first, context + n)
    speech = shape_spectrum(speech, filters, self._rate)
    if rir is None:
      return speech[context:], None
    return self._reverberate(k, speech, context)

  def noise(self, g, noise, f) -> np.ndarray:
    """The example's noise segment plus a second noise, babble (not of speech file `f`'s
    speaker), a tonal component, clicks and rumble, then spectrally shaped, each if drawn."""
    c, n = self._config, self._n
    rng = self._drawn(g, _NOISE_MIX, c.noise_mix)
    if rng is not None:
      k = int(rng.integers(len(self._set.noise)))
      other = crop(self._set.noise[k], int(rng.integers(self._set.noise[k].size)), n, loop=True)
      noise = add_at_level(noise, other, rng.uniform(-c.noise_mix_db, c.noise_mix_db))
    rng = self._drawn(g, _BABBLE, self._babble)
    if rng is not None:
      talkers = int(rng.integers(c.babble_talkers_min, c.babble_talkers_max + 1))
      talk, _ = babble(rng, self._set.clean, self._by_speaker, self._speakers[f], n, talkers)
      if talk is not None:
        noise = add_at_level(noise, talk, rng.uniform(-c.noise_mix_db, c.noise_mix_db))
    for kind, probability, make in ((_TONAL, c.tonal_noise, tonal_noise),
                                    (_CLICKS, c.clicks, clicks),
                                    (_RUMBLE, c.rumble, rumble)):
      rng = self._drawn(g, kind, probability)
      if rng is not None:
        added = make(rng, self._set.noise, n, self._rate)
        noise = add_at_level(noise, added, rng.uniform(-c.noise_mix_db, c.noise_mix_db))
    rng = self._drawn(g, _NOISE_SHAPING, self._shaping("noise"))
    if rng is not None:
      noise = shape_spectrum(noise, random_biquads(rng, c.spectral_shaping_db), self._rate)
    return noise

  def gain_db(self, g, speech, gain_db) -> tuple:
    """(gain dB, speech loudness or None) of the mixture: the stream's relative gain, or with
    `level_distribution=lufs` the gain that sets the speech to a drawn loudness."""
    c = self._config
    if c.level_distribution == "relative":
      return gain_db, None
    speech_lufs = loudness(speech, self._rate)
    if not np.isfinite(speech_lufs):
      return gain_db, speech_lufs  # too quiet: mixing raises, the stream redraws
    rng = np.random.default_rng([self._seed, _STREAM_ID, _LEVEL, int(g)])
    return float(rng.uniform(c.level_lufs_min, c.level_lufs_max)) - speech_lufs, speech_lufs
