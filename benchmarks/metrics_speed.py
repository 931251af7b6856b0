"""Prints the CPU seconds each evaluation metric costs on one 10 s utterance.

Evaluation scores every test file twice (noisy and enhanced), so these numbers
times twice the number of files is the scoring cost of `evaluate`.

  python benchmarks/metrics_speed.py                 # a demo-corpus clip
  python benchmarks/metrics_speed.py --audio=x.flac --seconds=30 --repeats=5

The estimate is the clean clip plus white noise at 5 dB SNR (fixed seed): the
cost of these metrics depends on the length of the audio, hardly on its content.
"""
import os
import pathlib
import time

from absl import flags
import numpy as np

from tf_tinyse import audio
from tf_tinyse import cli
from tf_tinyse import metrics
from tf_tinyse.errors import UserError

_DEMO_SPEECH = pathlib.Path(__file__).resolve().parent.parent / "tf_tinyse" / "demo_data" / "speech"

_AUDIO = flags.DEFINE_string(
    "audio", None, "Clean speech file to time the metrics on (default: a clip of the demo corpus).")
_SECONDS = flags.DEFINE_float(
    "seconds", 10.0, "Utterance length in seconds; the clip is repeated if shorter.", lower_bound=1.0)
_REPEATS = flags.DEFINE_integer(
    "repeats", 3, "Timed runs per metric (after one warm-up run); the minimum is reported.",
    lower_bound=1)


def _clean_clip(path, seconds):
  if path is None:
    if not _DEMO_SPEECH.is_dir():
      raise UserError(f"demo corpus '{_DEMO_SPEECH}' is not installed; pass --audio=<speech file>")
    path = audio.list_audio_files(_DEMO_SPEECH, what="demo speech folder")[0]
  wave = audio.read_audio(path).astype(np.float64)
  n = int(round(seconds * metrics.DEFAULT_SAMPLE_RATE))
  return os.fspath(path), np.resize(wave, n)  # np.resize repeats the clip when it is short.


def _time(fn, repeats):
  fn()  # Warm-up: first calls pay for imports, caches and page faults.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times), float(np.mean(times))


def main(argv):
  del argv
  path, clean = _clean_clip(_AUDIO.value, _SECONDS.value)
  noise = np.random.default_rng(0).standard_normal(clean.size)
  noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2) / 10.0**(5.0 / 10.0))
  noisy = clean + noise
  sr = metrics.DEFAULT_SAMPLE_RATE
  seconds = clean.size / sr

  jobs = [
      ("sdr (bss_eval, 512 taps)", lambda: metrics.sdr(clean, noisy)),
      ("si_sdr", lambda: metrics.si_sdr(clean, noisy)),
      ("pesq (wb)", lambda: metrics.pesq_wb(clean, noisy, sr)),
      ("stoi", lambda: metrics.stoi(clean, noisy, sr)),
      ("score (all four)", lambda: metrics.score(clean, noisy, sr)),
  ]
  print(f"utterance: {seconds:.1f} s from {path}; {_REPEATS.value} timed runs each")
  header = f"{'metric':<26} {'min s':>8} {'mean s':>8} {'x realtime':>11}"
  print(header)
  print("-" * len(header))
  for name, fn in jobs:
    best, mean = _time(fn, _REPEATS.value)
    print(f"{name:<26} {best:8.4f} {mean:8.4f} {seconds / best:11.1f}")


if __name__ == "__main__":
  cli.run(main)
