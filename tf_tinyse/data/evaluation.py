"""Evaluation sets: whole utterances mixed deterministically (or prepared pairs as they are)."""
import dataclasses
import os
from typing import Optional, Sequence, Union

import numpy as np

from tf_tinyse.data.corpus import AudioSet
from tf_tinyse.data.corpus import Corpus
from tf_tinyse.data.corpus import crop
from tf_tinyse.data.corpus import load_audio_set
from tf_tinyse.data.corpus import PAIRS
from tf_tinyse.data.corpus import SplitFiles
from tf_tinyse.data.mixing import loudness
from tf_tinyse.data.mixing import mix_at_snr
from tf_tinyse.data.mixing import TooQuietError
from tf_tinyse.errors import UserError


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
    noise = crop(noise_wave, offset, speech.size, loop=True)
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
