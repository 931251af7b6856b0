"""Reading and writing audio files: the only place where waveforms enter or leave the toolkit.

Everything downstream works on 16 kHz mono float32 waveforms in [-1, 1]. `read_audio` is the
single door in: it decodes (soundfile), down-mixes (with a warning, because it changes the
signal), resamples with soxr when the file is not at 16 kHz, and rejects files that would
silently poison training or scoring (corrupt, empty, NaN/inf, all-silent) with one actionable
line. `write_audio` is the single door out (atomic 16-bit PCM WAV).
"""
import os

from absl import logging
import numpy as np
import soundfile as sf
import soxr

from tf_tinyse import fileio
from tf_tinyse.errors import UserError

SAMPLE_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

# Peak below which a file counts as silent: -80 dBFS, i.e. under the 16-bit noise floor of
# most real recordings. A silent clean target or noise file makes the LUFS-based SNR
# undefined, so it is refused unless the caller explicitly allows it.
SILENCE_PEAK = 1e-4

_EXTENSIONS_TEXT = "/".join(AUDIO_EXTENSIONS)


def read_audio(path, sample_rate=SAMPLE_RATE, *, allow_silent=False, min_seconds=None):
  """Reads an audio file as a 1-D float32 waveform at `sample_rate`.

  Args:
    path: a .wav/.flac/.ogg file (anything libsndfile decodes).
    sample_rate: the rate to return; other rates are resampled with soxr (HQ).
    allow_silent: accept a file whose peak is below `SILENCE_PEAK` (e.g. a model output).
    min_seconds: if given, refuse files shorter than this (after resampling). Only callers
      that need a minimum length ask for it (e.g. loudness needs 0.4 s).

  Returns:
    np.ndarray float32 of shape [samples]. Multi-channel files are averaged to mono (with
    a warning naming the file).

  Raises:
    UserError: missing, unreadable or corrupt file, no samples, NaN/inf samples, silent file
      (unless allow_silent), or shorter than min_seconds.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"audio file '{path}' does not exist; check the path")
  try:
    wave, file_rate = sf.read(path, dtype="float32", always_2d=True)
  except (sf.SoundFileError, RuntimeError, ValueError, EOFError) as e:
    reason = " ".join(str(e).split())  # libsndfile messages may span lines
    raise UserError(
        f"cannot decode audio file '{path}' ({reason}); replace it with a valid "
        f"{_EXTENSIONS_TEXT} file or pass --skip_bad_audio") from e
  if wave.shape[0] == 0:
    raise UserError(f"audio file '{path}' holds no samples; remove it or pass --skip_bad_audio")
  if not np.all(np.isfinite(wave)):
    raise UserError(
        f"audio file '{path}' contains NaN or infinite samples; re-export it or pass "
        "--skip_bad_audio")
  if wave.shape[1] > 1:
    logging.warning("audio file '%s' has %d channels; averaging them to mono", path,
                    wave.shape[1])
  wave = wave.mean(axis=1, dtype=np.float32)
  if file_rate != sample_rate:
    logging.info("resampling '%s' from %d Hz to %d Hz", path, file_rate, sample_rate)
    wave = soxr.resample(wave, file_rate, sample_rate, quality="HQ").astype(np.float32)
  if min_seconds is not None and wave.shape[0] < min_seconds * sample_rate:
    raise UserError(
        f"audio file '{path}' is {wave.shape[0] / sample_rate:.3f} s long, shorter than the "
        f"{min_seconds} s needed; remove it or pass --skip_bad_audio")
  peak = float(np.max(np.abs(wave))) if wave.size else 0.0
  if not allow_silent and peak < SILENCE_PEAK:
    raise UserError(
        f"audio file '{path}' is silent (peak {_dbfs(peak)} dBFS); remove it or pass "
        "--skip_bad_audio")
  return np.ascontiguousarray(wave, dtype=np.float32)


def write_audio(path, wave, sample_rate=SAMPLE_RATE):
  """Writes a 1-D waveform as a 16-bit PCM WAV file, atomically.

  Samples beyond [-1, 1] are clipped (with a warning) because 16-bit PCM cannot hold them;
  a waveform with NaN/inf is refused since the file would be garbage.

  Raises:
    UserError: the waveform contains NaN or infinite values.
    ValueError: the waveform is not 1-D (a programming error).
  """
  path = os.fspath(path)
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim != 1:
    raise ValueError(f"write_audio expects a 1-D waveform, got shape {wave.shape}")
  if not np.all(np.isfinite(wave)):
    raise UserError(
        f"refusing to write '{path}': the waveform contains NaN or infinite values (the model "
        "or its input is broken)")
  peak = float(np.max(np.abs(wave))) if wave.size else 0.0
  if peak > 1.0:
    logging.warning("clipping '%s': peak %.3f exceeds full scale", path, peak)
    wave = np.clip(wave, -1.0, 1.0)
  with fileio.atomic_output(path) as tmp:
    sf.write(tmp, wave, sample_rate, subtype="PCM_16", format="WAV")


def list_audio_files(folder, what="folder"):
  """Lists the audio files under `folder` (recursive), sorted, as paths joined to `folder`.

  Hidden files (e.g. temporary files of an interrupted write) are ignored.

  Args:
    folder: the folder to search.
    what: how the folder is named in error messages, e.g. "data_dir".

  Raises:
    UserError: the folder does not exist or holds no audio file.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise UserError(f"{what} '{folder}' does not exist or is not a folder")
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in files:
      if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS):
        found.append(os.path.join(root, name))
  if not found:
    raise UserError(
        f"{what} '{folder}' holds no audio files (looked for {_EXTENSIONS_TEXT})")
  return sorted(found)


def _dbfs(peak):
  return "-inf" if peak <= 0 else f"{20 * np.log10(peak):.1f}"
