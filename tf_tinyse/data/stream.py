"""The training stream: speech and noise re-framed into segments, mixed on the fly, tf.data.

Training data follows the paper: speech and noise are re-framed into 0.8 s segments,
continuously reshuffled and remixed; the SNR is drawn from U(-6, 9) dB and measured as a
loudness difference in LUFS (ITU-R BS.1770, pyloudnorm), then an overall gain from U(-5, 5) dB
is applied. Augmentation (`tf_tinyse.data.augment`, off by default) changes the speech and
noise of each example before they are mixed.

The training stream is a pure function of (seed, batch index): batch `b` is always the same
whatever the number of parallel calls, and a resumed run that starts at batch `b` continues
exactly the stream an uninterrupted run would have produced.
"""
import collections
import threading

from absl import logging
import numpy as np
import tensorflow as tf

from tf_tinyse.data import augment
from tf_tinyse.data.config import DataConfig
from tf_tinyse.data.corpus import AudioSet
from tf_tinyse.data.corpus import crop
from tf_tinyse.data.corpus import PAIRS
from tf_tinyse.data.corpus import SPEECH_NOISE
from tf_tinyse.data.mixing import apply_gain
from tf_tinyse.data.mixing import loudness
from tf_tinyse.data.mixing import mix_at_snr
from tf_tinyse.data.mixing import TooQuietError
from tf_tinyse.errors import UserError

# A speech segment is "near silent" (skipped) when fewer than this fraction of its 20 ms
# frames are active, a frame being active within `_ACTIVE_RANGE_DB` of the file's loudest
# frames. Training on pure pauses teaches nothing and makes the LUFS-SNR meaningless.
_MIN_ACTIVE_FRACTION = 0.2
_ACTIVE_RANGE_DB = 40.0
_FRAME = 320  # 20 ms at 16 kHz


class _SegmentStream:
  """Re-frames a list of waveforms into fixed-length segments, reshuffled every pass.

  Pass `e` frames each file with its own random phase (so segment borders move between
  passes), drops near-silent segments if asked, and shuffles; every pass has the same length
  (the number of segments at nominal framing; passes with fewer valid segments repeat some)
  so that example `g` of the stream is found without replaying earlier passes.
  """

  def __init__(self, waves, segment, seed, stream_id, skip_silent):
    self._lengths = np.array([w.size for w in waves], dtype=np.int64)
    self._segment = segment
    self._seed = seed
    self._stream_id = stream_id
    self._counts = np.maximum(1, self._lengths // segment)
    self.pass_length = int(self._counts.sum())
    if skip_silent:
      active = [_active_frames(w) for w in waves]
      self._frames = np.array([a.size for a in active], dtype=np.int64)
      self._frame_start = np.cumsum(self._frames) - self._frames
      self._active_sum = np.concatenate([[0], np.cumsum(np.concatenate(active))])
    self._skip_silent = skip_silent
    self._cache = collections.OrderedDict()
    self._lock = threading.Lock()

  def _pass(self, e):
    with self._lock:
      if e in self._cache:
        self._cache.move_to_end(e)
        return self._cache[e]
    rng = np.random.default_rng([self._seed, self._stream_id, e])
    slack = np.maximum(0, self._lengths - self._counts * self._segment)
    phase = (rng.random(self._lengths.size) * (slack + 1)).astype(np.int64)
    files = np.repeat(np.arange(self._lengths.size), self._counts)
    first = np.cumsum(self._counts) - self._counts
    k = np.arange(self.pass_length) - np.repeat(first, self._counts)
    starts = phase[files] + k * self._segment
    if self._skip_silent:
      keep = self._is_active(files, starts)
      if not keep.any():
        raise UserError("every speech segment is near silent; check the speech files")
      files, starts = files[keep], starts[keep]
    order = rng.permutation(files.size)
    order = np.resize(order, self.pass_length)  # repeats some segments if some were dropped
    layout = (files[order], starts[order])
    with self._lock:
      self._cache[e] = layout
      while len(self._cache) > 4:
        self._cache.popitem(last=False)
    return layout

  def _is_active(self, files, starts):
    """Per segment: are at least `_MIN_ACTIVE_FRACTION` of its 20 ms frames active?"""
    lo = np.minimum(starts // _FRAME, self._frames[files])
    hi = np.minimum(-(-(starts + self._segment) // _FRAME), self._frames[files])
    base = self._frame_start[files]
    count = self._active_sum[base + hi] - self._active_sum[base + lo]
    return (hi > lo) & (count >= _MIN_ACTIVE_FRACTION * (hi - lo))

  def segment(self, g):
    """(file index, start sample) of example `g` of the stream."""
    files, starts = self._pass(g // self.pass_length)
    p = g % self.pass_length
    return int(files[p]), int(starts[p])

  def random_segment(self, rng):
    """A valid segment drawn at random (used to replace one that is too quiet)."""
    return self.segment(int(rng.integers(0, 2**62)))


def _active_frames(wave):
  """Per 20 ms frame: is it within `_ACTIVE_RANGE_DB` of the file's loudest frames?"""
  n = max(1, wave.size // _FRAME)
  frames = np.resize(wave, n * _FRAME).reshape(n, _FRAME) if wave.size >= _FRAME else \
      wave[None, :]
  energy_db = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
  reference = np.percentile(energy_db, 95)
  return energy_db >= reference - _ACTIVE_RANGE_DB


class _BatchMaker:
  """Builds training batch `b` as a pure function of (seed, b)."""

  _MAX_REDRAWS = 20

  def __init__(self, audio_set: AudioSet, config: DataConfig, seed: int):
    if audio_set.layout == SPEECH_NOISE and not audio_set.noise:
      raise UserError("the training split has no noise files")
    self._set = audio_set
    self._config = config
    self._seed = int(seed)
    n = config.segment_samples
    self._speech = _SegmentStream(audio_set.clean, n, self._seed, 1, skip_silent=True)
    self._speech.segment(0)  # raises UserError here, not inside tf.data, if all is silent
    self._augmenter = None
    if audio_set.layout == SPEECH_NOISE:
      self._noise = _SegmentStream(audio_set.noise, n, self._seed, 2, skip_silent=False)
      if config.augment.changes_examples:
        self._augmenter = augment.ExampleAugmenter(
            audio_set, config.augment, n, self._seed, config.speaker_id_pattern,
            config.sample_rate)
    elif config.augment != augment.AugmentConfig():
      logging.warning("augmentation flags are ignored with prepared clean/noisy pairs: they "
                      "need speech and noise recorded separately (speech/ + noise/)")

  def __call__(self, b):
    b = int(b)
    c = self._config
    n = c.segment_samples
    rng = np.random.default_rng([self._seed, 3, b])
    snrs = augment.draw_snrs(rng, c.batch_size, c.snr_db_min, c.snr_db_max,
                             c.augment.snr_distribution, c.augment.snr_db_std)
    gains = rng.uniform(-c.gain_db_max, c.gain_db_max, c.batch_size)
    noisy = np.empty((c.batch_size, n), np.float32)
    clean = np.empty((c.batch_size, n), np.float32)
    for i in range(c.batch_size):
      g = b * c.batch_size + i
      f, start = self._speech.segment(g)
      if self._set.layout == PAIRS:
        clean_seg = crop(self._set.clean[f], start, n, loop=False)
        noisy_seg = crop(self._set.noisy[f], start, n, loop=False)
        noisy[i], clean[i] = apply_gain(noisy_seg, clean_seg, gains[i])
      else:
        noisy[i], clean[i] = self._mix(g, f, start, snrs[i], gains[i], rng)
    return noisy, clean

  def _mix(self, g, f, start, snr_db, gain_db, rng):
    n = self._config.segment_samples
    fn, noise_start = self._noise.segment(g)
    for _ in range(self._MAX_REDRAWS):
      speech = crop(self._set.clean[f], start, n, loop=False)
      noise = crop(self._set.noise[fn], noise_start, n, loop=True)
      target, gain, speech_lufs = None, gain_db, None
      if self._augmenter is not None:
        # Augmented before mixing, so the LUFS SNR and the clip protection apply to the
        # augmented speech and noise.
        speech, target = self._augmenter.speech(g, f, start)
        noise = self._augmenter.noise(g, noise, f)
        gain, speech_lufs = self._augmenter.gain_db(g, speech, gain_db)
      try:
        return mix_at_snr(speech, noise, snr_db, gain, sample_rate=self._config.sample_rate,
                          speech_lufs=speech_lufs, target=target)
      except TooQuietError:
        # Redraw from the batch RNG: keeps the batch a pure function of (seed, b).
        if not np.isfinite(loudness(speech, self._config.sample_rate)):
          f, start = self._speech.random_segment(rng)
        else:
          fn, noise_start = self._noise.random_segment(rng)
    raise UserError("could not find speech and noise segments loud enough to mix (above "
                    "-70 LUFS) after many tries; check the levels of the audio files")


def make_training_dataset(audio_set: AudioSet, config: DataConfig, seed: int,
                          start_step: int = 0) -> tf.data.Dataset:
  """The infinite training stream of (noisy, clean) float32 batches [batch, segment_samples].

  Speech/noise layout: speech and noise segments come from two independently reshuffled
  streams (each pass re-frames with new offsets and a new order; the two pass lengths differ,
  so the speech/noise pairing changes every pass); near-silent speech segments are skipped;
  SNR ~ U(snr_db_min, snr_db_max) dB LUFS, gain ~ U(-gain_db_max, gain_db_max) dB;
  `config.augment` (off by default) changes speech, noise, SNR and level draws before the
  mixing (`augment.ExampleAugmenter`).
  Pairs layout: aligned random crops of the pairs plus the gain (no augmentation).

  Batch `b` is a pure function of (seed, b): the stream is the same for any
  `data_parallel_calls` (the map keeps order), and `start_step=b` resumes it exactly, so a
  checkpoint only needs the step. The numpy work runs in `tf.numpy_function` calls mapped in
  parallel (one call builds one batch), followed by a prefetch.
  """
  maker = _BatchMaker(audio_set, config, seed)
  n = config.segment_samples
  batch = config.batch_size

  def make(b):
    noisy, clean = tf.numpy_function(maker, [b], (tf.float32, tf.float32), stateful=False)
    noisy.set_shape([batch, n])
    clean.set_shape([batch, n])
    return noisy, clean

  dataset = tf.data.Dataset.counter(start=int(start_step), dtype=tf.int64)
  dataset = dataset.map(make, num_parallel_calls=config.data_parallel_calls,
                        deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)
