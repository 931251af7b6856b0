"""Throughput of the training input pipeline (tf_tinyse.data.make_training_dataset).

Builds the training stream on --data_dir and prints batches/s and seconds of audio produced
per second, with data_parallel_calls = 1 and AUTOTUNE (or the values given). A training step
of the model must take longer than one batch here for the pipeline not to be the bottleneck.

  python benchmarks/data_pipeline.py --data_dir=tf_tinyse/demo_data --batches=100
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import tensorflow as tf

import tf_tinyse  # pylint: disable=unused-import  (sets TF_USE_LEGACY_KERAS)
from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse.errors import UserError

flags.DEFINE_integer("batches", 100, "Batches to time (after the warm-up).")
flags.DEFINE_integer("warmup_batches", 5, "Batches produced before timing starts.")
flags.DEFINE_list("parallel_calls", ["1", "-1"],
                  "data_parallel_calls values to compare (-1 = AUTOTUNE).")
flags.DEFINE_integer("seed", 0, "Stream seed.")

FLAGS = flags.FLAGS


def measure(audio_set, config, seed, batches, warmup):
  """(batches per second, audio seconds per second) over `batches` batches."""
  iterator = iter(data.make_training_dataset(audio_set, config, seed))
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  rate = batches / elapsed
  return rate, rate * config.batch_size * config.segment_seconds


def main(argv):
  del argv
  if not FLAGS.data_dir:
    raise UserError("--data_dir is required (e.g. --data_dir=tf_tinyse/demo_data)")
  base = data.DataConfig.from_flags()
  corpus = data.discover_corpus(FLAGS.data_dir, **base.split_options())
  start = time.perf_counter()
  audio_set = data.load_audio_set(corpus.split("train"), skip_bad_audio=base.skip_bad_audio)
  print(f"loaded {len(audio_set.clean)} speech/clean and {len(audio_set.noise)} noise files "
        f"in {time.perf_counter() - start:.2f} s ({corpus.layout} layout)")
  print(f"batch {base.batch_size} x {base.segment_seconds} s, {os.cpu_count()} CPU cores, "
        f"TensorFlow {tf.__version__}")
  for calls in (int(v) for v in FLAGS.parallel_calls):
    config = data.DataConfig(**{**base.__dict__, "data_parallel_calls": calls})
    rate, audio_rate = measure(audio_set, config, FLAGS.seed, FLAGS.batches,
                               FLAGS.warmup_batches)
    label = "AUTOTUNE" if calls == tf.data.AUTOTUNE else str(calls)
    print(f"data_parallel_calls={label:>8}: {rate:7.1f} batches/s, "
          f"{audio_rate:8.1f} s of audio/s ({audio_rate / 60:.1f} min/s)")


if __name__ == "__main__":
  cli.run(main)
