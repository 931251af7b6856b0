"""Throughput of the training input pipeline (tf_tinyse.data.make_training_dataset).

Builds the training stream on --data_dir and prints batches/s and seconds of audio produced
per second, with data_parallel_calls = 1 and AUTOTUNE (or the values given). A training step
of the model must take longer than one batch here for the pipeline not to be the bottleneck.

Then the same with each augmentation of tf_tinyse.data.augment switched on for every example
(probability 1, the most expensive setting) and with all of them on, in examples/s against
what training consumes (--training_examples_per_s: the demo model trains at ~14 steps/s with
batch 16 on 2 CPU cores). With one parallel call the pipeline uses about one core, the cost
it takes from training when both share the CPU. The stream's start-up time (the RIR bank of
reverberation is simulated then) is printed too.

  python benchmarks/data_pipeline.py --data_dir=tf_tinyse/demo_data --batches=100
"""
import dataclasses
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
flags.DEFINE_list("augmentations",
                  ["spectral_shaping", "speed", "reverb", "noise_mix", "babble", "tonal_noise",
                   "clicks", "level", "all"],
                  "Augmentations to time one by one at probability 1 ('all': together; "
                  "'level': --level_distribution=lufs with --snr_distribution=normal), after "
                  "a row with the augmentation flags as given.")
flags.DEFINE_float("training_examples_per_s", 14 * 16,
                   "Examples per second training consumes, to compare with.")

FLAGS = flags.FLAGS

_ON = {"spectral_shaping": {"spectral_shaping": 1.0}, "speed": {"speed": 1.0},
       "reverb": {"reverb": 1.0}, "noise_mix": {"noise_mix": 1.0}, "babble": {"babble": 1.0},
       "tonal_noise": {"tonal_noise": 1.0}, "clicks": {"clicks": 1.0},
       "level": {"level_distribution": "lufs", "snr_distribution": "normal"}}
_ON["all"] = {k: v for on in _ON.values() for k, v in on.items()}


def measure(audio_set, config, seed, batches, warmup):
  """(batches per second, audio seconds per second, start-up seconds) over `batches`."""
  start = time.perf_counter()
  dataset = data.make_training_dataset(audio_set, config, seed)
  startup = time.perf_counter() - start
  iterator = iter(dataset)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  rate = batches / elapsed
  return rate, rate * config.batch_size * config.segment_seconds, startup


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
  calls = [int(v) for v in FLAGS.parallel_calls]
  label = lambda c: "AUTOTUNE" if c == tf.data.AUTOTUNE else str(c)
  for c in calls:
    config = dataclasses.replace(base, data_parallel_calls=c)
    rate, audio_rate, _ = measure(audio_set, config, FLAGS.seed, FLAGS.batches,
                                  FLAGS.warmup_batches)
    print(f"data_parallel_calls={label(c):>8}: {rate:7.1f} batches/s, "
          f"{audio_rate:8.1f} s of audio/s ({audio_rate / 60:.1f} min/s)")
  need = FLAGS.training_examples_per_s
  print(f"\nexamples/s with each augmentation on every example (training needs {need:.0f}/s; "
        f"x = pipeline / training), rir_bank_size={base.augment.rir_bank_size}:")
  print(f"{'augmentation':>17} " + " ".join(f"{'calls=' + label(c):>22}" for c in calls)
        + f" {'start-up':>9}")
  # The first row: the augmentation flags as given (none by default).
  given = "as flagged" if base.augment != data.AugmentConfig() else "none"
  for name in [given] + list(FLAGS.augmentations):
    if name != given and name not in _ON:
      raise UserError(f"--augmentations: unknown '{name}'; expected some of {sorted(_ON)}")
    augment = dataclasses.replace(base.augment, **_ON.get(name, {}))
    cells, startup = [], 0.0
    for c in calls:
      config = dataclasses.replace(base, data_parallel_calls=c, augment=augment)
      rate, _, seconds = measure(audio_set, config, FLAGS.seed, FLAGS.batches,
                                 FLAGS.warmup_batches)
      startup = max(startup, seconds)  # the first build (the RIR bank is cached after it)
      examples = rate * config.batch_size
      cells.append(f"{examples:10.0f} ex/s ({examples / need:5.1f}x)")
    print(f"{name:>17} " + " ".join(f"{cell:>22}" for cell in cells) + f" {startup:8.1f}s")


if __name__ == "__main__":
  cli.run(main)
