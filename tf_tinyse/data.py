"""Corpora, splits, LUFS-SNR mixing, the training tf.data pipeline and evaluation sets.

Two corpus layouts are understood (see `discover_corpus`):
  * `speech/` + `noise/`: clean speech and noise recorded separately, mixed on the fly;
  * `clean/` + `noisy/`: prepared pairs with matching file names (VoiceBank-DEMAND style).
Each of the two folders is either flat or split into `train/`, `test/` (and optionally `valid/`).
Without a `valid/` folder, validation holds out whole speakers of the training speech and whole
noise recordings (see `discover_corpus`), so that model selection scores unseen speakers and
noises, as the test split does.

Training data follows the paper: speech and noise are re-framed into 0.8 s segments,
continuously reshuffled and remixed; the SNR is drawn from U(-6, 9) dB and measured as a
loudness difference in LUFS (ITU-R BS.1770, pyloudnorm), then an overall gain from U(-5, 5) dB
is applied.

The training stream is a pure function of (seed, batch index): batch `b` is always the same
whatever the number of parallel calls, and a resumed run that starts at batch `b` continues
exactly the stream an uninterrupted run would have produced.
"""
import collections
import dataclasses
import os
import re
import threading
from typing import Optional, Sequence, Union

from absl import flags
from absl import logging
import numpy as np
import pyloudnorm
import scipy.signal
import tensorflow as tf

from tf_tinyse import audio
from tf_tinyse.errors import UserError

FLAGS = flags.FLAGS

flags.DEFINE_string("data_dir", None,
                    "Corpus folder: 'speech/' + 'noise/' (mixed on the fly) or 'clean/' + "
                    "'noisy/' (prepared pairs), each flat or with train/ test/ [valid/].")
flags.DEFINE_integer("batch_size", 32, "Training batch size (segments per batch).")
flags.DEFINE_float("segment_seconds", 0.8, "Length of a training segment in seconds.")
flags.DEFINE_float("snr_db_min", -6.0, "Lowest training/evaluation SNR (LUFS difference, dB).")
flags.DEFINE_float("snr_db_max", 9.0, "Highest training/evaluation SNR (LUFS difference, dB).")
flags.DEFINE_float("gain_db_max", 5.0,
                   "Training gain augmentation: overall gain drawn from U(-x, x) dB.")
flags.DEFINE_float("validation_fraction", 0.1,
                   "Fraction of the training speakers (speech or pairs) held out for "
                   "validation when the corpus has no valid/ split, and fraction of the noise "
                   "recordings held out when there is no noise/valid/ folder (0: none).")
# LibriSpeech names a file <speaker>-<chapter>-<utterance> (1034-121119-0000.flac), the demo
# corpus ls_<speaker>_<chapter>_<utterance>, VCTK / VoiceBank-DEMAND p<speaker>_<utterance>.
DEFAULT_SPEAKER_ID_PATTERN = r"^(?:ls_)?(\d+)[-_]\d+[-_]\d+$|^(p\d+)_\d+$"
# Pieces of one recording (rain_s00, rain_s01) and ESC-50 clips cut from one source recording
# (1-17367-A, 1-17367-B) share a name once the piece number or the take letter is removed.
DEFAULT_NOISE_SOURCE_PATTERN = r"^(.+?)(?:_s\d+|-[A-Z])?$"
flags.DEFINE_string("speaker_id_pattern", DEFAULT_SPEAKER_ID_PATTERN,
                    "Regex searched in each speech (or clean) file name without folder and "
                    "extension; its first group (the first that matched, with alternatives) is "
                    "the speaker id, and validation holds out whole speakers. The default reads "
                    "LibriSpeech names (1034-121119-0000, ls_1034_121119_0000) and VCTK / "
                    "VoiceBank names (p226_001). A file that does not match is a speaker of "
                    "its own.")
flags.DEFINE_string("noise_source_pattern", DEFAULT_NOISE_SOURCE_PATTERN,
                    "Regex searched in each noise file name without folder and extension; its "
                    "first group names the recording the file was cut from, and validation "
                    "holds out whole recordings. The default drops a trailing piece number "
                    "(rain_s00, rain_s01) or ESC-50 take letter (1-17367-A). A file that does "
                    "not match is a recording of its own.")
flags.DEFINE_bool("skip_bad_audio", False,
                  "Skip corrupt, empty, silent or NaN audio files with a warning instead of "
                  "stopping.")
flags.DEFINE_integer("data_parallel_calls", tf.data.AUTOTUNE,
                     "Batches prepared in parallel by the input pipeline (-1 = AUTOTUNE).")

# pyloudnorm's gating block is 0.4 s: a shorter signal has no loudness.
MIN_LOUDNESS_SECONDS = 0.4

flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator(
    "segment_seconds", lambda v: MIN_LOUDNESS_SECONDS <= v <= 60,
    f"--segment_seconds must be in [{MIN_LOUDNESS_SECONDS}, 60] (LUFS needs 0.4 s)")
flags.register_validator("gain_db_max", lambda v: 0 <= v <= 40,
                         "--gain_db_max must be in [0, 40]")
flags.register_validator("validation_fraction", lambda v: 0 <= v < 1,
                         "--validation_fraction must be in [0, 1)")


def _is_grouping_regex(value):
  try:
    return re.compile(value).groups >= 1
  except (re.error, TypeError):
    return False


for _name in ("speaker_id_pattern", "noise_source_pattern"):
  flags.register_validator(_name, _is_grouping_regex,
                           f"--{_name} must be a regular expression with a (group)")
flags.register_validator("data_parallel_calls", lambda v: v == tf.data.AUTOTUNE or v >= 1,
                         "--data_parallel_calls must be -1 (AUTOTUNE) or >= 1")
flags.register_multi_flags_validator(
    ["snr_db_min", "snr_db_max"],
    lambda d: -60 <= d["snr_db_min"] <= d["snr_db_max"] <= 60,
    "--snr_db_min must be <= --snr_db_max, both in [-60, 60]")

SPEECH_NOISE = "speech_noise"
PAIRS = "pairs"
SPLITS = ("train", "valid", "test")

# Peak the mixture (and target) may reach; louder mixtures are scaled down, speech and noise
# together, so the SNR is kept and no sample clips in 16-bit export or in the model input.
CLIP_PEAK = 0.99

# A speech segment is "near silent" (skipped) when fewer than this fraction of its 20 ms
# frames are active, a frame being active within `_ACTIVE_RANGE_DB` of the file's loudest
# frames. Training on pure pauses teaches nothing and makes the LUFS-SNR meaningless.
_MIN_ACTIVE_FRACTION = 0.2
_ACTIVE_RANGE_DB = 40.0
_FRAME = 320  # 20 ms at 16 kHz


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Data settings; library functions take this instead of reading flags."""
  batch_size: int = 32
  segment_seconds: float = 0.8
  snr_db_min: float = -6.0
  snr_db_max: float = 9.0
  gain_db_max: float = 5.0
  validation_fraction: float = 0.1
  skip_bad_audio: bool = False
  data_parallel_calls: int = tf.data.AUTOTUNE
  sample_rate: int = audio.SAMPLE_RATE
  speaker_id_pattern: str = DEFAULT_SPEAKER_ID_PATTERN
  noise_source_pattern: str = DEFAULT_NOISE_SOURCE_PATTERN

  @property
  def segment_samples(self) -> int:
    return int(round(self.segment_seconds * self.sample_rate))

  def split_options(self) -> dict:
    """The arguments of `discover_corpus` that decide the splits: `discover_corpus(dir,
    **config.split_options())`."""
    return {"validation_fraction": self.validation_fraction,
            "speaker_id_pattern": self.speaker_id_pattern,
            "noise_source_pattern": self.noise_source_pattern}

  @classmethod
  def from_flags(cls, flag_values=None) -> "DataConfig":
    """The config given by the data flags (parsed `FLAGS` unless another FlagValues)."""
    f = FLAGS if flag_values is None else flag_values
    return cls(batch_size=f.batch_size, segment_seconds=f.segment_seconds,
               snr_db_min=f.snr_db_min, snr_db_max=f.snr_db_max, gain_db_max=f.gain_db_max,
               validation_fraction=f.validation_fraction, skip_bad_audio=f.skip_bad_audio,
               data_parallel_calls=f.data_parallel_calls,
               speaker_id_pattern=f.speaker_id_pattern,
               noise_source_pattern=f.noise_source_pattern)


# --------------------------------------------------------------------------------------------
# Corpus layouts and splits


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  """The files of one split.

  Speech/noise layout: `clean` are speech files, `noise` noise files, `noisy` is empty.
  Pairs layout: `clean[i]` and `noisy[i]` are one pair, `noise` is empty.
  """
  layout: str
  clean: tuple = ()
  noise: tuple = ()
  noisy: tuple = ()

  def __bool__(self):
    return bool(self.clean)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The files of a corpus per split. `valid` may be held out of train; `test` may be empty.

  `speaker_id_pattern` and `noise_source_pattern` are the groupings the splits were made with
  (see `speaker_id`, `noise_source`); `validation_report` describes the validation split.
  """
  root: str
  layout: str
  train: SplitFiles
  valid: SplitFiles
  test: SplitFiles
  speaker_id_pattern: str = DEFAULT_SPEAKER_ID_PATTERN
  noise_source_pattern: str = DEFAULT_NOISE_SOURCE_PATTERN

  def split(self, name) -> SplitFiles:
    """The files of split `name`; UserError if it has no files (e.g. no test/ folder)."""
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    files = getattr(self, name)
    first, second = ("speech", "noise") if self.layout == SPEECH_NOISE else ("clean", "noisy")
    if not files.clean:
      raise UserError(
          f"data_dir '{self.root}' has no {name} split: expected audio under "
          f"'{self.root}/{first}/{name}/' (and '{self.root}/{second}/{name}/')")
    if self.layout == SPEECH_NOISE and not files.noise:
      raise UserError(f"data_dir '{self.root}' has no noise for the {name} split: expected "
                      f"audio under '{self.root}/noise/{name}/' or a flat '{self.root}/noise/'")
    return files

  def validation_report(self) -> dict:
    """What the validation split scores, and what of it training has seen.

    `speakers`: the validation speakers; `noise_files`: the validation noise file names;
    `shared_with_train`: the speakers and noise recordings (sources) that are in both the
    validation and the training split (empty lists when validation is disjoint).
    """
    speakers = lambda files: {speaker_id(p, self.speaker_id_pattern) for p in files}
    sources = lambda files: {noise_source(p, self.noise_source_pattern) for p in files}
    valid_speakers, train_speakers = speakers(self.valid.clean), speakers(self.train.clean)
    valid_sources, train_sources = sources(self.valid.noise), sources(self.train.noise)
    return {
        "files": len(self.valid.clean),
        "speakers": sorted(valid_speakers),
        "noise_files": [os.path.basename(p) for p in self.valid.noise],
        "train_speakers": len(train_speakers),
        "train_noise_files": len(self.train.noise),
        "shared_with_train": {"speakers": sorted(valid_speakers & train_speakers),
                              "noise_sources": sorted(valid_sources & train_sources)},
        "speaker_id_pattern": self.speaker_id_pattern,
        "noise_source_pattern": self.noise_source_pattern,
    }


def _stem(path):
  return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def _group_of(path, pattern):
  """The first group of `pattern` that matched in the file's name, else the name itself."""
  stem = _stem(path)
  match = re.search(pattern, stem)
  if match:
    for group in match.groups():
      if group:
        return group
  return stem


def speaker_id(path, pattern=DEFAULT_SPEAKER_ID_PATTERN) -> str:
  """The speaker of a speech file, read from its name with `pattern` (`--speaker_id_pattern`).

  `1034-121119-0000.flac` and `ls_1034_121119_0000.flac` are speaker `1034`, `p226_001.wav`
  is `p226`; a name the pattern does not match is a speaker of its own (the name itself).
  """
  return _group_of(path, pattern)


def noise_source(path, pattern=DEFAULT_NOISE_SOURCE_PATTERN) -> str:
  """The recording a noise file was cut from, read from its name (`--noise_source_pattern`).

  `rain__blanket_rain_s00.flac` and `..._s01.flac` are `rain__blanket_rain`,
  `rain__esc10_1-17367-A.flac` is `rain__esc10_1-17367`; a name that does not match is a
  recording of its own.
  """
  return _group_of(path, pattern)


def discover_corpus(data_dir, validation_fraction=0.1, *,
                    speaker_id_pattern=DEFAULT_SPEAKER_ID_PATTERN,
                    noise_source_pattern=DEFAULT_NOISE_SOURCE_PATTERN) -> Corpus:
  """Finds the layout and the files of each split of `data_dir`.

  When there is no `valid/` folder, `validation_fraction` of the training speakers (speaker
  ids read from the file names with `speaker_id_pattern`, see `speaker_id`) are held out with
  all their files (or pairs), picked evenly over the sorted speaker ids so that the choice is
  deterministic. When there is no `noise/valid/` folder, `validation_fraction` of the training
  noise recordings (`noise_source`: the pieces of one recording stay together) are held out
  the same way, spread over the sorted names so that validation covers several noise types.
  Validation then scores speakers and noises that training never saw, as the test split does.
  Where the files allow no disjoint set (one speaker, one noise recording) validation shares
  them with training, with a warning; `Corpus.validation_report` records what is shared.
  A flat folder (no train/test subfolders) is train data only, except a flat `noise/`, which
  also serves the test split (with a warning when there is one, as test noise is then seen in
  training).

  Raises:
    UserError: data_dir missing, matching no layout, a folder without audio, unmatched pairs.
  """
  root = os.fspath(data_dir)
  if not os.path.isdir(root):
    raise UserError(f"data_dir '{root}' does not exist or is not a folder")
  has = lambda name: os.path.isdir(os.path.join(root, name))
  by_speaker = lambda path: speaker_id(path, speaker_id_pattern)
  if has("speech") and has("noise"):
    layout = SPEECH_NOISE
    speech = _split_folder(os.path.join(root, "speech"))
    noise = _split_folder(os.path.join(root, "noise"))
    if noise.pop("_flat", None) is not None:
      flat = noise.pop("train")
      if speech.get("test"):
        logging.warning("data_dir '%s': noise/ is flat, so the test split uses the training "
                        "noise", root)
      noise = {"train": flat, "test": flat}
    speech.pop("_flat", None)
    if not speech.get("valid"):
      speech["train"], speech["valid"] = _hold_out_speakers(
          root, "speech", speech.get("train", []), by_speaker, validation_fraction)
    if not noise.get("valid"):
      noise["train"], noise["valid"] = _hold_out_noise(
          root, noise.get("train", []), lambda p: noise_source(p, noise_source_pattern),
          validation_fraction)
    make = lambda s: SplitFiles(SPEECH_NOISE, clean=tuple(speech.get(s, ())),
                                noise=tuple(noise.get(s, ()) if speech.get(s) else ()))
  elif has("clean") and has("noisy"):
    layout = PAIRS
    clean = _split_folder(os.path.join(root, "clean"))
    noisy = _split_folder(os.path.join(root, "noisy"))
    if ("_flat" in clean) != ("_flat" in noisy):
      raise UserError(f"data_dir '{root}': clean/ and noisy/ must both be flat or both have "
                      "train/ test/ subfolders")
    flat = "_flat" in clean
    pairs = {s: _match_pairs(root, clean.get(s, []), noisy.get(s, []), s, flat)
             for s in SPLITS if clean.get(s) or noisy.get(s)}
    if not pairs.get("valid"):
      pairs["train"], pairs["valid"] = _hold_out_speakers(
          root, "clean", pairs.get("train", []), lambda pair: by_speaker(pair[0]),
          validation_fraction)
    make = lambda s: SplitFiles(PAIRS, clean=tuple(c for c, _ in pairs.get(s, ())),
                                noisy=tuple(n for _, n in pairs.get(s, ())))
  else:
    raise UserError(
        f"data_dir '{root}' matches no corpus layout: expected folders 'speech/' + 'noise/' "
        "(mixed on the fly) or 'clean/' + 'noisy/' (prepared pairs with matching file names), "
        "each flat or with train/ test/ [valid/] subfolders")
  return Corpus(root=root, layout=layout, train=make("train"), valid=make("valid"),
                test=make("test"), speaker_id_pattern=speaker_id_pattern,
                noise_source_pattern=noise_source_pattern)


def _split_folder(folder):
  """{split: sorted files}; a flat folder is {'train': files, '_flat': True}."""
  subdirs = [s for s in SPLITS if os.path.isdir(os.path.join(folder, s))]
  if not subdirs:
    return {"train": audio.list_audio_files(folder, what="data_dir"), "_flat": True}
  return {s: audio.list_audio_files(os.path.join(folder, s), what="data_dir") for s in subdirs}


def _hold_out(items, fraction, key=lambda item: item):
  """Splits `items` into (train, valid) by whole groups `key(item)`: `fraction` of the sorted
  groups (at least one, never all), evenly spread over them. Nothing is held out when there
  are fewer than two groups or `fraction` is 0."""
  items = list(items)
  groups = sorted({key(x) for x in items})
  if fraction <= 0 or len(groups) < 2:
    return items, []
  n_valid = min(len(groups) - 1, max(1, int(round(fraction * len(groups)))))
  picked = {groups[int((j + 0.5) * len(groups) / n_valid)] for j in range(n_valid)}
  return ([x for x in items if key(x) not in picked], [x for x in items if key(x) in picked])


def _hold_out_speakers(root, folder, items, speaker, fraction):
  """Holds out whole speakers; with one speaker only, some of its files (with a warning)."""
  train, valid = _hold_out(items, fraction, speaker)
  if fraction > 0 and not valid and len(items) >= 2:
    logging.warning("data_dir '%s': all %d %s/ training files are of speaker '%s' (see "
                    "--speaker_id_pattern), so validation holds out files of that speaker and "
                    "scores a speaker seen in training", root, len(items), folder,
                    speaker(items[0]))
    train, valid = _hold_out(items, fraction)
  return train, valid


def _hold_out_noise(root, files, source, fraction):
  """(train, valid) noise: whole recordings held out; shared with a warning if impossible."""
  if fraction <= 0 or not files:
    return files, files
  train, valid = _hold_out(files, fraction, source)
  if not valid:
    logging.warning("data_dir '%s': the %d training noise file(s) are cut from one recording "
                    "(see --noise_source_pattern), so validation uses the training noise; add "
                    "noise/valid/ or more recordings for validation on unseen noise", root,
                    len(files))
    return files, files
  return train, valid


def _match_pairs(root, clean_files, noisy_files, split, flat):
  """Pairs clean and noisy files by their path below clean/[<split>/] and noisy/[<split>/]."""
  base = lambda kind: os.path.join(root, kind) if flat else os.path.join(root, kind, split)
  clean = {os.path.relpath(p, base("clean")): p for p in clean_files}
  noisy = {os.path.relpath(p, base("noisy")): p for p in noisy_files}
  for have, lack, mine, theirs in (("clean", "noisy", clean, noisy),
                                   ("noisy", "clean", noisy, clean)):
    missing = sorted(set(mine) - set(theirs))
    if missing:
      raise UserError(
          f"data_dir '{root}': {len(missing)} {have} file(s) have no {lack} file with the same "
          f"name (e.g. '{mine[missing[0]]}'); add or remove files so that the pairs match")
  return [(clean[k], noisy[k]) for k in sorted(clean)]


# --------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class AudioSet:
  """The waveforms of one split, in memory (16 kHz mono float32).

  Speech/noise layout: `clean` are speech waveforms, `noise` noise waveforms. Pairs layout:
  `clean[i]` and `noisy[i]` are one pair of equal length. `*_names` are the file paths.
  """
  layout: str
  clean: list
  clean_names: list
  noise: list = dataclasses.field(default_factory=list)
  noise_names: list = dataclasses.field(default_factory=list)
  noisy: list = dataclasses.field(default_factory=list)


def load_audio_set(files: SplitFiles, skip_bad_audio=False) -> AudioSet:
  """Reads every file of a split once.

  A bad file (corrupt, empty, NaN, silent, shorter than the 0.4 s loudness needs) stops with a
  UserError naming it, or with `skip_bad_audio` is skipped with a warning (the count is logged).
  """
  skipped = []

  def read(path, min_seconds=MIN_LOUDNESS_SECONDS):
    try:
      return audio.read_audio(path, min_seconds=min_seconds)
    except UserError as e:
      if not skip_bad_audio:
        raise
      logging.warning("skipping bad audio (--skip_bad_audio): %s", e)
      skipped.append(path)
      return None

  result = AudioSet(layout=files.layout, clean=[], clean_names=[])
  if files.layout == PAIRS:
    for clean_path, noisy_path in zip(files.clean, files.noisy):
      clean, noisy = read(clean_path), read(noisy_path)
      if clean is None or noisy is None:
        continue
      if clean.shape != noisy.shape:
        error = UserError(
            f"pair '{clean_path}' / '{noisy_path}' differs in length ({clean.size} vs "
            f"{noisy.size} samples); fix the pair or pass --skip_bad_audio")
        if not skip_bad_audio:
          raise error
        logging.warning("skipping bad pair (--skip_bad_audio): %s", error)
        skipped.append(clean_path)
        continue
      result.clean.append(clean)
      result.noisy.append(noisy)
      result.clean_names.append(clean_path)
  else:
    for path in files.clean:
      wave = read(path)
      if wave is not None:
        result.clean.append(wave)
        result.clean_names.append(path)
    for path in files.noise:
      wave = read(path)
      if wave is not None:
        result.noise.append(wave)
        result.noise_names.append(path)
  total = len(files.clean) + len(files.noise) + len(files.noisy)
  if skipped:
    logging.warning("skipped %d bad audio file(s) of %d", len(skipped), total)
  if not result.clean or (files.layout == SPEECH_NOISE and not result.noise):
    example = f" (e.g. '{skipped[0]}' was bad)" if skipped else ""
    kind = "speech/clean" if not result.clean else "noise"
    raise UserError(f"no usable {kind} audio in this split{example}; check the data_dir")
  return result


# --------------------------------------------------------------------------------------------
# Loudness and mixing


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
               speech_lufs=None):
  """Mixes speech and noise so that loudness(speech) - loudness(noise) = snr_db (LUFS).

  The noise is scaled, the speech is kept, then both are multiplied by the overall gain.
  If the mixture (or the clean target) would peak above `CLIP_PEAK` (0.99), both are scaled
  down together, which keeps the SNR but lowers the effective gain.

  Args:
    speech, noise: 1-D float arrays of the same length (>= 0.4 s).
    snr_db: the loudness difference to reach, dB.
    gain_db: overall gain applied to both, dB.
    speech_lufs: the speech loudness if already known (skips measuring it again).

  Returns:
    (noisy, clean) float32 arrays.

  Raises:
    TooQuietError: speech or noise is below the loudness gate (loudness -inf).
  """
  speech = np.asarray(speech, dtype=np.float32)
  noise = np.asarray(noise, dtype=np.float32)
  if speech.shape != noise.shape:
    raise ValueError(f"speech and noise differ in shape: {speech.shape} vs {noise.shape}")
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
  clean = speech * gain
  noisy = clean + noise * (noise_gain * gain)
  peak = max(float(np.max(np.abs(noisy))), float(np.max(np.abs(clean))))
  if peak > CLIP_PEAK:
    scale = CLIP_PEAK / peak
    clean, noisy = clean * scale, noisy * scale
  return noisy.astype(np.float32), clean.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Training pipeline


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


def _crop(wave, start, length, loop):
  """wave[start:start + length], looped (noise) or zero-padded (speech) when too short."""
  if wave.size >= start + length:
    return wave[start:start + length]
  if loop:
    reps = -(-(start + length) // wave.size)
    return np.tile(wave, reps)[start:start + length]
  return np.pad(wave[start:], (0, length - wave[start:].size))


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
    if audio_set.layout == SPEECH_NOISE:
      self._noise = _SegmentStream(audio_set.noise, n, self._seed, 2, skip_silent=False)

  def __call__(self, b):
    b = int(b)
    c = self._config
    n = c.segment_samples
    rng = np.random.default_rng([self._seed, 3, b])
    snrs = rng.uniform(c.snr_db_min, c.snr_db_max, c.batch_size)
    gains = rng.uniform(-c.gain_db_max, c.gain_db_max, c.batch_size)
    noisy = np.empty((c.batch_size, n), np.float32)
    clean = np.empty((c.batch_size, n), np.float32)
    for i in range(c.batch_size):
      g = b * c.batch_size + i
      f, start = self._speech.segment(g)
      if self._set.layout == PAIRS:
        clean_seg = _crop(self._set.clean[f], start, n, loop=False)
        noisy_seg = _crop(self._set.noisy[f], start, n, loop=False)
        noisy[i], clean[i] = _apply_gain(noisy_seg, clean_seg, gains[i])
      else:
        noisy[i], clean[i] = self._mix(g, f, start, snrs[i], gains[i], rng)
    return noisy, clean

  def _mix(self, g, f, start, snr_db, gain_db, rng):
    n = self._config.segment_samples
    fn, noise_start = self._noise.segment(g)
    for _ in range(self._MAX_REDRAWS):
      speech = _crop(self._set.clean[f], start, n, loop=False)
      noise = _crop(self._set.noise[fn], noise_start, n, loop=True)
      try:
        return mix_at_snr(speech, noise, snr_db, gain_db, sample_rate=self._config.sample_rate)
      except TooQuietError:
        # Redraw from the batch RNG: keeps the batch a pure function of (seed, b).
        if not np.isfinite(loudness(speech, self._config.sample_rate)):
          f, start = self._speech.random_segment(rng)
        else:
          fn, noise_start = self._noise.random_segment(rng)
    raise UserError("could not find speech and noise segments loud enough to mix (above "
                    "-70 LUFS) after many tries; check the levels of the audio files")


def _apply_gain(noisy, clean, gain_db):
  gain = 10.0 ** (gain_db / 20.0)
  noisy, clean = noisy * gain, clean * gain
  peak = max(float(np.max(np.abs(noisy))), float(np.max(np.abs(clean))))
  if peak > CLIP_PEAK:
    noisy, clean = noisy * (CLIP_PEAK / peak), clean * (CLIP_PEAK / peak)
  return noisy, clean


def make_training_dataset(audio_set: AudioSet, config: DataConfig, seed: int,
                          start_step: int = 0) -> tf.data.Dataset:
  """The infinite training stream of (noisy, clean) float32 batches [batch, segment_samples].

  Speech/noise layout: speech and noise segments come from two independently reshuffled
  streams (each pass re-frames with new offsets and a new order; the two pass lengths differ,
  so the speech/noise pairing changes every pass); near-silent speech segments are skipped;
  SNR ~ U(snr_db_min, snr_db_max) dB LUFS, gain ~ U(-gain_db_max, gain_db_max) dB.
  Pairs layout: aligned random crops of the pairs plus the gain.

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


# --------------------------------------------------------------------------------------------
# Evaluation sets


@dataclasses.dataclass
class Example:
  """One whole utterance to enhance and score."""
  name: str
  noisy: np.ndarray
  clean: np.ndarray
  snr_db: Optional[float] = None  # None for prepared pairs
  noise_name: Optional[str] = None


def make_evaluation_set(source: Union[Corpus, SplitFiles, AudioSet], split: str = "test",
                        seed: int = 0, max_files: Optional[int] = None, *,
                        snr_db_range: Sequence[float] = (-6.0, 9.0),
                        skip_bad_audio: bool = False, mixtures_per_file: int = 1) -> list:
  """Whole-utterance (noisy, clean) examples, the same for the same seed.

  Speech/noise layout: each speech file is mixed with a noise file chosen by a seeded RNG,
  looped/cropped from a random offset to the speech length, at SNR ~ U(*snr_db_range) dB LUFS,
  without gain augmentation but with the same clip protection as training. The draws of file
  `i` depend only on (seed, its file name), so `max_files` picks a subset of the same
  examples and a skipped bad file does not change the others.
  Pairs layout: the pairs as they are.

  Args:
    source: a Corpus (then `split` picks the split), a split's files or an AudioSet.
    max_files: keep at most this many utterances, evenly spread over the sorted names.
    mixtures_per_file: speech/noise layout: mix each utterance this many times, each with
      its own noise, offset and SNR draw, named `<name>~mix<k>` for k ≥ 1 (the first mixture
      is the one a single-mixture set holds). A small validation split then still averages
      over many noises, so best-checkpoint selection is not decided by a few draws.
  """
  if mixtures_per_file < 1:
    raise ValueError(f"mixtures_per_file must be >= 1, got {mixtures_per_file}")
  if isinstance(source, Corpus):
    source = source.split(split)
  if isinstance(source, SplitFiles):
    keep = _spread(len(source.clean), max_files)
    source = load_audio_set(
        dataclasses.replace(source, clean=tuple(source.clean[i] for i in keep),
                            noisy=tuple(source.noisy[i] for i in keep) if source.noisy else ()),
        skip_bad_audio=skip_bad_audio)
    positions = range(len(source.clean))
  else:
    positions = _spread(len(source.clean), max_files)
  examples = []
  for i in positions:
    name = os.path.splitext(os.path.basename(source.clean_names[i]))[0]
    if source.layout == PAIRS:
      examples.append(Example(name=name, noisy=source.noisy[i], clean=source.clean[i]))
      continue
    for k in range(mixtures_per_file):
      # Seed by the file's name so that subsets and skipped files do not shift the draws.
      rng = np.random.default_rng([seed, _stable_hash(name)] + ([k] if k else []))
      examples.append(_mix_utterance(name + (f"~mix{k}" if k else ""), source, i, rng,
                                     snr_db_range))
  return examples


def _mix_utterance(name, source, i, rng, snr_db_range):
  speech = source.clean[i]
  snr_db = float(rng.uniform(*snr_db_range))
  k = int(rng.integers(len(source.noise)))
  noise_wave = source.noise[k]
  speech_lufs = loudness(speech)
  for _ in range(10):
    offset = int(rng.integers(noise_wave.size))
    noise = _crop(noise_wave, offset, speech.size, loop=True)
    try:
      noisy, clean = mix_at_snr(speech, noise, snr_db, 0.0, speech_lufs=speech_lufs)
    except TooQuietError:
      if not np.isfinite(speech_lufs):
        raise UserError(f"speech file '{source.clean_names[i]}' is too quiet to measure its "
                        "loudness (below -70 LUFS); remove it") from None
      continue
    return Example(name=name, noisy=noisy, clean=clean, snr_db=snr_db,
                   noise_name=os.path.basename(source.noise_names[k]))
  raise UserError(f"noise file '{source.noise_names[k]}' is too quiet to measure its loudness "
                  "(below -70 LUFS); remove it")


def _spread(n, max_files):
  if max_files is None or max_files >= n:
    return list(range(n))
  return [int((j + 0.5) * n / max_files) for j in range(max_files)]


def _stable_hash(text):
  # Python's hash() is salted per process; this one is not.
  h = 0
  for byte in text.encode("utf-8"):
    h = (h * 131 + byte) % (2**61 - 1)
  return h
