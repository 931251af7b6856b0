"""The main job: train → evaluate → (compress → export → validate in TFLM) → report.

    python -m tf_tinyse.pipeline --flagfile=configs/demo.cfg --output_dir=runs/demo

Without --data_dir it runs on the built-in demo corpus (real recorded speech
and noise, `tf_tinyse/demo_data`). Everything lands in --output_dir:
`model/` (the trained model dir), `examples/` (noisy, enhanced and clean WAVs
of a few test utterances), `evaluation.json` and `report.json`. Rerunning the
same command resumes an interrupted training run and redoes the later stages.

Stages are plain functions that read and extend one `report` dict, so later
stages (pruning, export, sweeps) are added to `STAGES` without touching the
others.
"""
import os
import time

from absl import flags
from absl import logging
import numpy as np

from tf_tinyse import audio
from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import enhancer as enhancer_lib
from tf_tinyse import evaluate
from tf_tinyse import fileio
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse import train
from tf_tinyse.errors import UserError

flags.DEFINE_string("output_dir", "runs/demo", "Folder for the model, examples and reports.")
flags.DEFINE_integer("example_wavs", 3, "Test utterances written as noisy/enhanced/clean WAVs.")

FLAGS = flags.FLAGS


class Context:
  """What every stage may read: settings, data and output folders."""

  def __init__(self, output_dir, data_dir, model_config, data_config, eval_seed, max_files):
    self.output_dir = output_dir
    self.model_dir = os.path.join(output_dir, "model")
    self.data_dir = data_dir
    self.model_config = model_config
    self.data_config = data_config
    self.corpus = data.discover_corpus(data_dir, data_config.validation_fraction)
    self.eval_seed = eval_seed
    self.max_files = max_files
    self._test_examples = None

  @property
  def test_examples(self):
    if self._test_examples is None:
      self._test_examples = data.make_evaluation_set(
          self.corpus, "test", seed=self.eval_seed, max_files=self.max_files,
          snr_db_range=(self.data_config.snr_db_min, self.data_config.snr_db_max),
          skip_bad_audio=self.data_config.skip_bad_audio)
    return self._test_examples


def stage_train(ctx, report):
  started = time.time()
  result = train.train(
      ctx.model_config, ctx.data_config, ctx.corpus, ctx.model_dir, FLAGS.steps,
      seed=FLAGS.seed, learning_rate=FLAGS.learning_rate, clip_norm=FLAGS.clip_norm,
      checkpoint_every=FLAGS.checkpoint_every, validate_every=FLAGS.validate_every,
      max_validation_files=FLAGS.max_validation_files, log_every=FLAGS.log_every,
      strategy=train.make_strategy(FLAGS.strategy))
  _, model = model_lib.load_trained(ctx.model_dir)
  report["train"] = {"steps": result["step"], "resumed_from_step": result["resumed_from"],
                     "best_validation": result["best"],
                     "wall_seconds_this_run": time.time() - started,
                     "parameters": model_lib.count_parameters(model),
                     "model_dir": ctx.model_dir}


def stage_evaluate(ctx, report):
  """Float model, whole utterances, on the test split."""
  enhance = enhancer_lib.Enhancer.from_model_dir(ctx.model_dir)
  result = evaluate.evaluate_examples(enhance, ctx.test_examples)
  path = os.path.join(ctx.output_dir, "evaluation.json")
  fileio.write_json_atomic(path, dict(result, model_dir=ctx.model_dir, data_dir=ctx.data_dir,
                                      split="test", seed=ctx.eval_seed))
  report["evaluation"] = {"summary": result["summary"], "json": path}


def stage_streaming_check(ctx, report):
  """The frame-by-frame streaming model must give the whole-utterance output."""
  whole = enhancer_lib.Enhancer.from_model_dir(ctx.model_dir)
  streaming = enhancer_lib.StreamingEnhancer.from_model_dir(ctx.model_dir)
  example = ctx.test_examples[0]
  difference = float(np.max(np.abs(whole(example.noisy) - streaming(example.noisy))))
  report["streaming_check"] = {"utterance": example.name,
                               "max_abs_difference": difference, "tolerance": 1e-4,
                               "passed": difference <= 1e-4}
  if difference > 1e-4:
    raise RuntimeError(f"streaming and whole-utterance outputs differ by {difference}")


def stage_examples(ctx, report):
  enhance = enhancer_lib.Enhancer.from_model_dir(ctx.model_dir)
  folder = os.path.join(ctx.output_dir, "examples")
  written = []
  for example in ctx.test_examples[:FLAGS.example_wavs]:
    for kind, wave in (("noisy", example.noisy), ("enhanced", enhance(example.noisy)),
                       ("clean", example.clean)):
      path = os.path.join(folder, f"{example.name}_{kind}.wav")
      audio.write_audio(path, wave)
      written.append(path)
  report["examples"] = {"folder": folder, "files": written}


STAGES = [("train", stage_train), ("evaluate", stage_evaluate),
          ("streaming_check", stage_streaming_check), ("examples", stage_examples)]


def print_report(report):
  print()
  print(f"== tf_tinyse main job: {report['data_dir']} ==")
  train_info = report["train"]
  print(f"trained {train_info['steps']} steps, {train_info['parameters']:,} parameters; "
        f"model: {train_info['model_dir']}")
  summary = report["evaluation"]["summary"]
  print(f"test split, {summary['files']} utterances (float model, whole utterances):")
  print(metrics.format_table(summary))
  print(f"streaming check: max |whole - streaming| = "
        f"{report['streaming_check']['max_abs_difference']:.2e}")
  print(f"example WAVs: {report['examples']['folder']}")
  print(f"report: {report['report_json']}")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  data_dir = FLAGS.data_dir
  if not data_dir:
    data_dir = demo_data.path()
    logging.info("no --data_dir: using the built-in demo corpus %s", data_dir)
  ctx = Context(FLAGS.output_dir, data_dir, model_lib.ModelConfig.from_flags(),
                data.DataConfig.from_flags(), FLAGS.eval_seed, FLAGS.max_files)
  os.makedirs(ctx.model_dir, exist_ok=True)
  report = {"data_dir": data_dir, "output_dir": ctx.output_dir,
            "report_json": os.path.join(ctx.output_dir, "report.json"), "stages": {}}
  for name, stage in STAGES:
    started = time.time()
    logging.info("stage %s", name)
    stage(ctx, report)
    report["stages"][name] = {"seconds": time.time() - started}
    fileio.write_json_atomic(report["report_json"], report)
  print_report(report)


if __name__ == "__main__":
  cli.run(main)
