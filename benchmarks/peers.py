"""Peers scored beside us: RNNoise and spectral gating on the same test split, same metrics.

  python -m pip install -e ".[peers]"
  python benchmarks/peers.py --data_dir=DIR [--model_dir=OURS [--tflite=OURS.tflite]] \
      [--peers_output_dir=peers/]

Every method enhances the same deterministic mixtures (`data.make_evaluation_set`: --split,
--eval_seed, the data flags' SNR range) and is scored by `evaluate.evaluate_examples`, so its
JSON (written per method to --peers_output_dir) is what `evaluate --output_json` writes and
`python -m tf_tinyse.compare` gives paired intervals against our models.

- **RNNoise** (`pyrnnoise`, Valin 2018: a GRU network on 22 bands at 48 kHz, 10 ms frames).
  Our 16 kHz input is resampled to 48 kHz (soxr, VHQ), scaled to the int16 range RNNoise's C
  API expects, run frame by frame through `rnnoise_process_frame` (called directly: the
  package's Python frame wrapper truncates floats to int16 without rounding or clipping),
  and resampled back. RNNoise delays its output by a fixed number of samples; the delay is
  measured on clean demo speech (the lag of the cross-correlation peak) and removed, so
  that the sample-aligned metrics (SI-SDR, SDR) score the denoising, not the delay.
- **Spectral gating** (`noisereduce`, non-stationary mode, its defaults). It looks ahead (a
  smoothed, non-causal noise estimate), so it is not a streaming method like ours.
- **Ours** (with --model_dir): the Keras model whole-utterance, and with --tflite the int8
  model frame by frame in the TFLite Micro interpreter.

Prints one row per method: the improvement over the noisy input of each metric (mean over
files; dB metrics floored as in the evaluation summaries) and the real-time factor.
"""
import ctypes
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np
import soxr

import tf_tinyse  # pylint: disable=unused-import  (sets TF_USE_LEGACY_KERAS)
from tf_tinyse import audio
from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import enhancer as enhancer_lib
from tf_tinyse import evaluate
from tf_tinyse import fileio
from tf_tinyse.errors import UserError

flags.DEFINE_list("peers", ["rnnoise", "noisereduce"], "Peer methods to score.")
flags.DEFINE_string("peers_output_dir", None, "Folder for one evaluation JSON per method.")

FLAGS = flags.FLAGS


class RNNoise:
  """RNNoise at 48 kHz behind a 16 kHz waveform → waveform interface, delay removed."""

  RATE = 48000

  def __init__(self):
    from pyrnnoise import rnnoise  # pylint: disable=g-import-not-at-top
    self._lib = rnnoise.lib
    self._frame = int(rnnoise.FRAME_SIZE)
    self.delay = 0
    self.delay = self.measure_delay()

  def _run_48k(self, x):
    """RNNoise over `x` (48 kHz, int16 scale), the tail padded to whole frames."""
    n = len(x)
    frames = -(-(n + self._frame) // self._frame)  # a frame more: the delay's tail
    buffer = np.zeros(frames * self._frame, np.float32)
    buffer[:n] = x
    state = self._lib.rnnoise_create(None)
    try:
      for start in range(0, len(buffer), self._frame):
        frame = np.ascontiguousarray(buffer[start:start + self._frame])
        pointer = frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self._lib.rnnoise_process_frame(state, pointer, pointer)
        buffer[start:start + self._frame] = frame
    finally:
      self._lib.rnnoise_destroy(state)
    return buffer

  def __call__(self, wave):
    wave = np.asarray(wave, np.float32)
    x = soxr.resample(wave, audio.SAMPLE_RATE, self.RATE, quality="VHQ") * 32768.0
    y = self._run_48k(x)[self.delay:self.delay + len(x)] / 32768.0
    y = soxr.resample(y.astype(np.float32), self.RATE, audio.SAMPLE_RATE, quality="VHQ")
    out = np.zeros_like(wave)
    out[:min(len(y), len(wave))] = y[:len(wave)]
    return out

  def measure_delay(self):
    """The output delay in 48 kHz samples: the cross-correlation peak on clean demo speech."""
    speech = audio.read_audio(sorted(glob.glob(
        os.path.join(demo_data.path(), "speech", "test", "*.flac")))[0])[:5 * audio.SAMPLE_RATE]
    x = soxr.resample(speech, audio.SAMPLE_RATE, self.RATE, quality="VHQ") * 32768.0
    y = self._run_48k(x)[:len(x)]
    lags = np.arange(0, 4 * self._frame)
    correlation = [np.dot(x[:len(x) - lag], y[lag:]) for lag in lags]
    return int(lags[int(np.argmax(correlation))])


def spectral_gating(wave):
  import noisereduce  # pylint: disable=g-import-not-at-top
  return noisereduce.reduce_noise(y=np.asarray(wave, np.float32), sr=audio.SAMPLE_RATE,
                                  stationary=False, n_jobs=1).astype(np.float32)


def methods():
  """{label: waveform → waveform} of the requested peers and, with --model_dir, ours."""
  table = {}
  for peer in FLAGS.peers:
    if peer == "rnnoise":
      rnnoise = RNNoise()
      print(f"RNNoise delay: {rnnoise.delay} samples at 48 kHz "
            f"({rnnoise.delay / RNNoise.RATE * 1000:.1f} ms), removed")
      table["RNNoise (pyrnnoise)"] = rnnoise
    elif peer == "noisereduce":
      table["spectral gating (noisereduce, non-causal)"] = spectral_gating
    else:
      raise UserError(f"--peers: unknown peer {peer!r}; expected rnnoise, noisereduce")
  if FLAGS.model_dir:
    table["ours, Keras"] = enhancer_lib.make_enhancer(FLAGS.model_dir)
    if FLAGS.tflite:
      table["ours, int8 in TFLM"] = enhancer_lib.make_enhancer(FLAGS.model_dir, tflite=FLAGS.tflite)
  return table


class _Timed:
  """A waveform → waveform function that adds up the time spent in it."""

  def __init__(self, enhance):
    self.enhance = enhance
    self.seconds = 0.0

  def __call__(self, wave):
    started = time.perf_counter()
    out = self.enhance(wave)
    self.seconds += time.perf_counter() - started
    return out


def main(argv):
  del argv
  if not FLAGS.data_dir:
    raise UserError("--data_dir is required (a corpus with a test split)")
  data_config = data.DataConfig.from_flags()
  corpus = data.discover_corpus(FLAGS.data_dir, **data_config.split_options())
  examples = data.make_evaluation_set(
      corpus, FLAGS.split, seed=FLAGS.eval_seed, max_files=FLAGS.max_files,
      snr_db_range=(data_config.snr_db_min, data_config.snr_db_max))
  seconds = sum(len(e.noisy) for e in examples) / audio.SAMPLE_RATE
  print(f"{len(examples)} utterances ({seconds:.0f} s) of the {FLAGS.split} split of "
        f"{FLAGS.data_dir}, eval seed {FLAGS.eval_seed}")
  rows = []
  for label, enhance in methods().items():
    timed = _Timed(enhance)
    report = evaluate.evaluate_examples(timed, examples, progress=False)
    rtf = timed.seconds / seconds
    report.update({"method": label, "data_dir": FLAGS.data_dir, "split": FLAGS.split,
                   "seed": FLAGS.eval_seed})
    if FLAGS.peers_output_dir:
      name = "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")
      fileio.write_json_atomic(os.path.join(FLAGS.peers_output_dir, name + ".json"), report)
    m = report["summary"]["metrics"]
    rows.append((label, m, rtf))
  print(f"{'method':<44} {'ΔSDR':>7} {'ΔSI-SDR':>8} {'ΔPESQ':>6} {'ΔSTOI':>7} {'RTF':>6}  "
        "(RTF: enhancement time / audio time on this host)")
  noisy = rows[0][1]
  print(f"{'noisy input (absolute)':<44} {noisy['sdr']['noisy']:>7.2f} "
        f"{noisy['si_sdr']['noisy']:>8.2f} {noisy['pesq']['noisy']:>6.2f} "
        f"{noisy['stoi']['noisy']:>7.3f}")
  for label, m, rtf in rows:
    print(f"{label:<44} {m['sdr']['improvement']:>+7.2f} {m['si_sdr']['improvement']:>+8.2f} "
          f"{m['pesq']['improvement']:>+6.2f} {m['stoi']['improvement']:>+7.3f} {rtf:>6.3f}")


if __name__ == "__main__":
  cli.run(main)
