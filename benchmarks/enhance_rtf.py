"""Real-time factor of enhancement: streaming (frame by frame) and whole utterance.

For the demo model (LSTM 192x2) and the paper model (LSTM 256x2), with random weights (speed
does not depend on them), enhances a --seconds long utterance of real demo speech + noise:
  * streaming: the Keras streaming model, one 16 ms frame per call, as `enhance` does;
  * whole utterance: one pass of the training-form model over all frames.
RTF = processing time / audio duration; below 1 is faster than real time. Each path runs once
untimed first (tracing), then --repeats times; the best time is reported.

  python benchmarks/enhance_rtf.py
"""
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

import tf_tinyse  # pylint: disable=unused-import  (sets TF_USE_LEGACY_KERAS)
from tf_tinyse import audio
from benchmarks import model_configs
from tf_tinyse import cli
from tf_tinyse import demo_data
from tf_tinyse import enhancer
from tf_tinyse import model as model_lib

flags.DEFINE_float("seconds", 10.0, "Length of the utterance to enhance.")
flags.DEFINE_integer("repeats", 3, "Timed runs per path (the best is reported).")

FLAGS = flags.FLAGS

CONFIGS = model_configs.CONFIGS


def utterance(seconds):
  """`seconds` of demo test speech (looped) plus demo test noise at a moderate level."""
  def looped(kind):
    files = sorted(glob.glob(os.path.join(demo_data.path(), kind, "test", "*.flac")))
    wave = np.concatenate([audio.read_audio(f) for f in files[:2]])
    return np.resize(wave, int(seconds * audio.SAMPLE_RATE))
  return (looped("speech") + 0.3 * looped("noise")).astype(np.float32)


def best_time(fn, wave, repeats):
  fn(wave[:audio.SAMPLE_RATE])  # trace and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(wave)
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  wave = utterance(FLAGS.seconds)
  duration = len(wave) / audio.SAMPLE_RATE
  print(f"{duration:.1f} s utterance, best of {FLAGS.repeats}, {os.cpu_count()} CPU cores, "
        f"TensorFlow {tf.__version__}")
  for label, config in CONFIGS.items():
    training = model_lib.build_mask_model(config)
    streaming = model_lib.build_mask_model(config, streaming=True)
    streaming.set_weights(training.get_weights())
    whole = best_time(enhancer.Enhancer(training, config), wave, FLAGS.repeats)
    frames = best_time(enhancer.StreamingEnhancer.from_keras(streaming, config.feature), wave,
                       FLAGS.repeats)
    hops = len(wave) // config.feature.hop_length
    print(f"{label:32s} streaming RTF {frames / duration:6.3f} ({1e3 * frames / hops:5.2f} ms "
          f"per 16 ms frame)   whole-utterance RTF {whole / duration:7.4f}")


if __name__ == "__main__":
  cli.run(main)
