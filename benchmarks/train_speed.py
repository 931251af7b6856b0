"""Training speed of the TinyLSTM trainer with the real input pipeline, next to the pipeline.

For the demo model (LSTM 192x2) and the paper model (LSTM 256x2), batch 32 of 0.8 s segments
by default, prints training steps/s, CPU milliseconds per step and seconds of audio trained per
second over --timed_steps steps after --warmup_steps, and how many batches/s the input pipeline
alone produces. When the pipeline is not clearly faster than training, training is starved for
data. The loss flags (--si_sdr_loss_weight, --stoi_loss_weight) and --quantize (the QAT form)
apply, and so do training's CPU thread flags (--intra_op_threads, --inter_op_threads; 0 for
TensorFlow's defaults); --max_unrolled_frames=0 times the LSTMs with their loop instead of
unrolled (keras_layers.unrolling).

  python benchmarks/train_speed.py --data_dir=tf_tinyse/demo_data
  python benchmarks/train_speed.py --models=paper --batch_size=16 --max_unrolled_frames=0
"""
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_tinyse  # pylint: disable=g-import-not-at-top,unused-import  (TF_USE_LEGACY_KERAS, console)
from absl import flags  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tf_keras as keras

from benchmarks import model_configs
from keras_layers import unrolling
from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import losses
from tf_tinyse import model as model_lib
from tf_tinyse import train

flags.DEFINE_integer("warmup_steps", 5, "Steps run before timing (tracing, pipeline fill).")
flags.DEFINE_integer("timed_steps", 30, "Steps timed.")
flags.DEFINE_integer("private_threadpool_size", 0, "If > 0, the input pipeline runs on its own "
                     "thread pool of this size instead of TensorFlow's inter-op pool.")
flags.DEFINE_list("models", ["demo", "paper"], "Model sizes timed (keys: the first word of a "
                  "label in benchmarks/model_configs.py).")
flags.DEFINE_boolean("time_pipeline", True, "Also time the input pipeline alone.")
flags.DEFINE_integer("max_unrolled_frames", unrolling.MAX_UNROLLED_FRAMES, "Training batches of "
                     "at most this many frames run the LSTM recurrence unrolled; 0: always the "
                     "loop (what training did before keras_layers.unrolling).", lower_bound=0)

FLAGS = flags.FLAGS

CONFIGS = model_configs.CONFIGS


def training_dataset(audio_set, data_config):
  """The training pipeline, on a private thread pool if --private_threadpool_size > 0."""
  dataset = data.make_training_dataset(audio_set, data_config, seed=0)
  if FLAGS.private_threadpool_size > 0:
    options = tf.data.Options()
    options.threading.private_threadpool_size = FLAGS.private_threadpool_size
    dataset = dataset.with_options(options)
  return dataset


def pipeline_rate(audio_set, data_config, warmup, timed):
  """Batches per second the input pipeline produces on its own."""
  iterator = iter(training_dataset(audio_set, data_config))
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(timed):
    next(iterator)
  return timed / (time.perf_counter() - start)


def train_rate(config, audio_set, data_config, warmup, timed):
  """(training steps/s, parameters, CPU % of one core), fed by the real pipeline (as train.train
  does)."""
  keras.utils.set_random_seed(0)
  trainer = train.Trainer(config, tf.distribute.get_strategy(),
                          global_batch_size=data_config.batch_size,
                          loss=losses.LossConfig.from_flags())
  iterator = iter(training_dataset(audio_set, data_config))
  for _ in range(warmup):
    float(trainer.train_step(next(iterator)))
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(timed):
    # float() waits for the step, as the training loop does to check the loss.
    float(trainer.train_step(next(iterator)))
  seconds = time.perf_counter() - start
  cpu_percent = 100 * (time.process_time() - cpu_start) / seconds
  return timed / seconds, model_lib.count_parameters(trainer.model), cpu_percent


def main(argv):
  del argv
  # Training's thread flags (tf_tinyse.train), before TensorFlow's runtime starts.
  train.set_cpu_threads(FLAGS.intra_op_threads, FLAGS.inter_op_threads)
  unrolling.MAX_UNROLLED_FRAMES = FLAGS.max_unrolled_frames
  data_config = data.DataConfig.from_flags()
  corpus = data.discover_corpus(FLAGS.data_dir or demo_data.path(),
                                **data_config.split_options())
  audio_set = data.load_audio_set(corpus.split("train"), data_config.skip_bad_audio)
  seconds_per_batch = data_config.batch_size * data_config.segment_seconds
  print(f"batch {data_config.batch_size} x {data_config.segment_seconds} s, "
        f"{FLAGS.timed_steps} timed steps after {FLAGS.warmup_steps}, {os.cpu_count()} CPU "
        f"cores, GPUs: {len(tf.config.list_physical_devices('GPU'))}, TensorFlow {tf.__version__}")
  calls = data_config.data_parallel_calls
  print(f"LSTM recurrence: unrolled up to {FLAGS.max_unrolled_frames} frames, "
        f"{'QAT' if FLAGS.quantize else 'float'} form, loss {losses.LossConfig.from_flags()}")
  print(f"threads: intra-op {FLAGS.intra_op_threads or 'default'}, inter-op "
        f"{FLAGS.inter_op_threads or 'default'}, input pipeline "
        f"{FLAGS.private_threadpool_size or 'shared'} pool, data_parallel_calls "
        f"{'AUTOTUNE' if calls == tf.data.AUTOTUNE else calls}")
  rate = None
  if FLAGS.time_pipeline:
    rate = pipeline_rate(audio_set, data_config, FLAGS.warmup_steps, FLAGS.timed_steps)
    print(f"{'input pipeline alone':32s} {rate:7.2f} batches/s  "
          f"{rate * seconds_per_batch:8.1f} s of audio/s")
  for label, config in CONFIGS.items():
    if label.split()[0] not in FLAGS.models:
      continue
    config = dataclasses.replace(config, quantize=FLAGS.quantize)
    steps, params, cpu = train_rate(config, audio_set, data_config, FLAGS.warmup_steps,
                                    FLAGS.timed_steps)
    starved = "  (pipeline < 2x training: may starve)" if rate and rate < 2 * steps else ""
    cpu_ms_per_step = 10 * cpu / steps  # CPU % of one core / steps per second, in ms
    print(f"{label:32s} {steps:7.2f} steps/s  {cpu_ms_per_step:6.1f} CPU ms/step  "
          f"{steps * seconds_per_batch:8.1f} s of audio/s  {params:,} parameters, "
          f"CPU {cpu:.0f} %{starved}")


if __name__ == "__main__":
  cli.run(main)
