"""Corpus layouts, splits and loading: which files a corpus has, and their waveforms.

Two corpus layouts are understood (see `discover_corpus`):
  * `speech/` + `noise/`: clean speech and noise recorded separately, mixed on the fly;
  * `clean/` + `noisy/`: prepared pairs with matching file names (VoiceBank-DEMAND style).
Each of the two folders is either flat or split into `train/`, `test/` (and optionally `valid/`).
Without a `valid/` folder, validation holds out whole speakers of the training speech and whole
noise recordings (see `discover_corpus`), so that model selection scores unseen speakers and
noises, as the test split does.
"""
import dataclasses
import os
import re

from absl import logging
import numpy as np

from tf_tinyse import audio
from tf_tinyse.data.mixing import MIN_LOUDNESS_SECONDS
from tf_tinyse.errors import UserError

# LibriSpeech names a file <speaker>-<chapter>-<utterance> (1034-121119-0000.flac), the demo
# corpus ls_<speaker>_<chapter>_<utterance>, VCTK / VoiceBank-DEMAND p<speaker>_<utterance>.
DEFAULT_SPEAKER_ID_PATTERN = r"^(?:ls_)?(\d+)[-_]\d+[-_]\d+$|^(p\d+)_\d+$"
# Pieces of one recording (rain_s00, rain_s01) and ESC-50 clips cut from one source recording
# (1-17367-A, 1-17367-B) share a name once the piece number or the take letter is removed.
DEFAULT_NOISE_SOURCE_PATTERN = r"^(.+?)(?:_s\d+|-[A-Z])?$"

SPEECH_NOISE = "speech_noise"
PAIRS = "pairs"
SPLITS = ("train", "valid", "test")


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


def crop(wave, start, length, loop):
  """wave[start:start + length], looped (noise) or zero-padded (speech) when too short."""
  if wave.size >= start + length:
    return wave[start:start + length]
  if loop:
    reps = -(-(start + length) // wave.size)
    return np.tile(wave, reps)[start:start + length]
  return np.pad(wave[start:], (0, length - wave[start:].size))
