"""Scores a trained model on a test set: SDR, SI-SDR, PESQ, STOI for noisy input and output.

    python -m tf_tinyse.evaluate --model_dir=OUT --data_dir=DIR --output_json=FILE

DIR holds `clean/` + `noisy/` pairs, or `speech/` + `noise/` which are then
mixed deterministically (--seed) at SNR U(--snr_db_min, --snr_db_max) dB LUFS.
The `test/` split is used when the folders have one (--split).
"""
import time

from absl import flags
from absl import logging
import numpy as np
import tqdm

from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import enhancer as enhancer_lib
from tf_tinyse import fileio
from tf_tinyse import metrics
from tf_tinyse.errors import UserError

flags.DEFINE_string("output_json", None, "Where to write per-file and mean scores (JSON).")
flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Split of --data_dir to score.")
flags.DEFINE_integer("max_files", None, "Score at most this many utterances (spread evenly).")
flags.DEFINE_integer("eval_seed", 0, "Seed of the deterministic speech + noise mixing.")
flags.DEFINE_integer("mixtures_per_file", 1,
                     "speech/ + noise/ layout: mix each utterance this many times, each with its "
                     "own noise, offset and SNR (named <name>~mix<k> for k >= 1), so that a small "
                     "split such as valid/ averages over more noises. Prepared pairs: ignored.",
                     lower_bound=1)

FLAGS = flags.FLAGS


def evaluate_examples(enhance, examples, sample_rate=16000, progress=True):
  """Enhances and scores every example. Returns the JSON-ready report."""
  per_file = []
  started = time.time()
  audio_seconds = 0.0
  for example in tqdm.tqdm(examples, disable=not progress, unit="file", mininterval=5.0):
    enhanced = enhance(example.noisy)
    if not np.isfinite(enhanced).all():
      raise UserError(f"the model produced NaN/inf for '{example.name}': the model is broken; "
                      "retrain or pick another checkpoint")
    audio_seconds += len(example.noisy) / sample_rate
    scores = metrics.score_utterance(example.clean, example.noisy, enhanced, sample_rate)
    per_file.append({"name": example.name, "snr_db": example.snr_db,
                     "noise": example.noise_name, **scores})
  return {"summary": metrics.summarize(per_file), "per_file": per_file,
          "audio_seconds": audio_seconds, "wall_seconds": time.time() - started}


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  if not FLAGS.data_dir:
    raise UserError("--data_dir is required")
  if not (FLAGS.model_dir or FLAGS.tflite):
    raise UserError("--model_dir (or --tflite) is required")
  data_config = data.DataConfig.from_flags()
  corpus = data.discover_corpus(FLAGS.data_dir, **data_config.split_options())
  examples = data.make_evaluation_set(
      corpus, FLAGS.split, seed=FLAGS.eval_seed, max_files=FLAGS.max_files,
      snr_db_range=(data_config.snr_db_min, data_config.snr_db_max),
      skip_bad_audio=data_config.skip_bad_audio, mixtures_per_file=FLAGS.mixtures_per_file)
  enhance = enhancer_lib.make_enhancer(FLAGS.model_dir, FLAGS.streaming, FLAGS.tflite)
  report = evaluate_examples(enhance, examples)
  report.update({"model_dir": FLAGS.model_dir, "tflite": FLAGS.tflite,
                 "data_dir": FLAGS.data_dir, "split": FLAGS.split, "seed": FLAGS.eval_seed,
                 "mixtures_per_file": FLAGS.mixtures_per_file,
                 "streaming": bool(FLAGS.streaming or FLAGS.tflite)})
  print(metrics.format_table(report["summary"]))
  if FLAGS.output_json:
    fileio.write_json_atomic(FLAGS.output_json, report)
    print(f"wrote {FLAGS.output_json}")
  logging.info("scored %d files (%.1f s of audio) in %.1f s", len(examples),
               report["audio_seconds"], report["wall_seconds"])


if __name__ == "__main__":
  cli.run(main)
