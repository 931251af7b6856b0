"""The main job: train → evaluate → quantize (QAT) → export int8 → validate in TFLM → report.

    python -m tf_tinyse.pipeline --flagfile=configs/demo.cfg --output_dir=runs/demo

Without --data_dir it runs on the built-in demo corpus (real recorded speech
and noise, `tf_tinyse/demo_data`). Everything lands in --output_dir:
`model/` (the float model dir), `model_int8/` (the quantization-aware fine-tuned
model dir), `export/` (`model.tflite`, Vela output, `model_card.json`),
`examples/` (noisy, clean and enhanced WAVs of a few test utterances, float and
int8-in-TFLM), `evaluation_*.json` and `report.json`. Rerunning the
same command resumes an interrupted training run and redoes the later stages.
After a rerun with more --steps has changed the float model's best weights,
the quantization-aware fine-tuning started from the old ones is stale: its
folder is moved aside to `model_int8.stale/` (replacing an older one, with a
warning) and fine-tuning starts again from the new float model, so that every
number in the report comes from one float model (`train.train`'s
`if_init_changed='restart'`, checked by the hash in `model_int8/init_from.json`).

With --strategy=multi_worker every worker runs the training stages (they train
together) but only the chief writes: the other workers write no model, report
or example and stop after training.

Stages are plain functions that read and extend one `report` dict, so later
stages (pruning, export, sweeps) are added to `STAGES` without touching the
others.
"""
import dataclasses
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
from tf_tinyse import export
from tf_tinyse import fileio
from tf_tinyse import losses
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse import train
from tf_tinyse.errors import UserError

flags.DEFINE_string("output_dir", "runs/demo", "Folder for the model, examples and reports.")
flags.DEFINE_integer("example_wavs", 3, "Test utterances written as noisy/enhanced/clean WAVs.")
flags.DEFINE_integer("qat_steps", 1000, "Quantization-aware fine-tuning steps after float "
                     "training (0: export the float model with post-training quantization).")
flags.DEFINE_float("qat_learning_rate", 5e-4, "Learning rate of the quantization-aware fine-tuning.")

FLAGS = flags.FLAGS


class Context:
  """What every stage may read: settings, data and output folders."""

  def __init__(self, output_dir, data_dir, model_config, data_config, eval_seed, max_files,
               strategy=None):
    self.output_dir = output_dir
    self.model_dir = os.path.join(output_dir, "model")
    self.qat_model_dir = os.path.join(output_dir, "model_int8")
    self.tflite_path = os.path.join(output_dir, "export", "model.tflite")
    self.data_dir = data_dir
    self.model_config = model_config
    self.data_config = data_config
    self.corpus = data.discover_corpus(data_dir, **data_config.split_options())
    # One strategy for all training stages (a multi-worker one can be made only once).
    self.strategy = strategy
    self.role = train.WorkerRole.from_strategy(strategy)
    self.eval_seed = eval_seed
    self.max_files = max_files
    self._test_examples = None
    self._float_enhancer = None

  @property
  def float_enhancer(self):
    """The trained float model, whole utterances; loaded once for all stages."""
    if self._float_enhancer is None:
      self._float_enhancer = enhancer_lib.Enhancer.from_model_dir(self.model_dir)
    return self._float_enhancer

  @property
  def test_examples(self):
    if self._test_examples is None:
      self._test_examples = data.make_evaluation_set(
          self.corpus, "test", seed=self.eval_seed, max_files=self.max_files,
          snr_db_range=(self.data_config.snr_db_min, self.data_config.snr_db_max),
          skip_bad_audio=self.data_config.skip_bad_audio)
    return self._test_examples


def _train(ctx, config, model_dir, steps, learning_rate, init_from=None, sparsity_schedule=None):
  started = time.time()
  result = train.train(
      config, ctx.data_config, ctx.corpus, model_dir, steps,
      seed=FLAGS.seed, learning_rate=learning_rate, clip_norm=FLAGS.clip_norm,
      checkpoint_every=FLAGS.checkpoint_every, validate_every=FLAGS.validate_every,
      max_validation_files=FLAGS.max_validation_files, log_every=FLAGS.log_every,
      strategy=ctx.strategy, init_from=init_from,
      final_learning_rate_fraction=FLAGS.final_learning_rate_fraction,
      validation_mixtures=FLAGS.validation_mixtures, sparsity_schedule=sparsity_schedule,
      if_init_changed=train.INIT_CHANGED_RESTART, worker_role=ctx.role,
      loss=losses.LossConfig.from_flags(), weight_average_decay=FLAGS.weight_average_decay,
      weight_decay=FLAGS.weight_decay)
  info = {"steps": result["step"], "resumed_from_step": result["resumed_from"],
          "best_validation": result["best"], "wall_seconds_this_run": time.time() - started,
          "model_dir": model_dir}
  if init_from:
    info.update(init_from=result["init_from"], restarted=result["restarted"])
  if ctx.role.is_chief:  # elsewhere the chief may still be writing model_dir
    info["parameters"] = model_lib.count_parameters(model_lib.load_trained(model_dir)[1])
  return info


def stage_train(ctx, report):
  """Float training from scratch."""
  # With sparsity flags the float model stays dense: pruning happens while the quantization-
  # aware fine-tuning starts from it (the fast path on a CPU).
  report["train"] = _train(ctx, ctx.model_config.dense(), ctx.model_dir, FLAGS.steps,
                           FLAGS.learning_rate)


def stage_quantization_aware_training(ctx, report):
  """Fine-tunes the float model with fake quantization on the int8 export grid.

  A QAT folder fine-tuned from other float weights than today's (the float model trained on)
  is moved aside and fine-tuning starts again (see the module docstring).
  """
  if FLAGS.qat_steps <= 0:
    report["qat"] = None
    return
  # The fine-tune matches the float model to the int8 grid it is exported on, where nothing
  # drops out: dropout there would put scaled, off-grid activations into the layers it fits.
  config = dataclasses.replace(ctx.model_config, quantize=True, dropout=0.0)
  report["qat"] = _train(ctx, config, ctx.qat_model_dir, FLAGS.qat_steps,
                         FLAGS.qat_learning_rate, init_from=ctx.model_dir,
                         sparsity_schedule=train.check_sparsity_flags(config, ctx.model_dir,
                                                                      FLAGS.qat_steps))
  if config.sparsity_structure is not None and ctx.role.is_chief:
    report["qat"]["sparsity"] = {
        k: v for k, v in sparsity.measure(model_lib.load_trained(ctx.qat_model_dir)[1]).items()
        if k != "layers"}


def _evaluate(ctx, report, key, enhance, description):
  result = evaluate.evaluate_examples(enhance, ctx.test_examples)
  path = os.path.join(ctx.output_dir, f"evaluation_{key}.json")
  fileio.write_json_atomic(path, dict(result, data_dir=ctx.data_dir, split="test",
                                      seed=ctx.eval_seed, model=description))
  report.setdefault("evaluation", {})[key] = {"model": description,
                                              "summary": result["summary"], "json": path}


def stage_evaluate_float(ctx, report):
  _evaluate(ctx, report, "fp32", ctx.float_enhancer,
            "float32 Keras, whole utterances")


def stage_evaluate_qat(ctx, report):
  if report.get("qat"):
    _evaluate(ctx, report, "qat_keras",
              enhancer_lib.Enhancer.from_model_dir(ctx.qat_model_dir),
              "quantization-aware Keras model (fake quant), whole utterances")


def _exported_model_dir(report, ctx):
  return ctx.qat_model_dir if report.get("qat") else ctx.model_dir


def stage_export(ctx, report):
  """int8 .tflite, Vela compile, TFLM validation and the model card."""
  card = export.export_model_dir(
      _exported_model_dir(report, ctx), ctx.tflite_path, ctx.corpus, ctx.data_config,
      accelerator=FLAGS.accelerator, sram_kib=FLAGS.sram_kib, flash_kib=FLAGS.flash_kib,
      seed=ctx.eval_seed, tolerance_lsb=FLAGS.tolerance_lsb,
      tolerance_si_sdr_db=FLAGS.tolerance_si_sdr_db,
      tolerance_mean_lsb=FLAGS.tolerance_mean_lsb)
  report["export"] = {"tflite": ctx.tflite_path,
                      "model_card": os.path.join(os.path.dirname(ctx.tflite_path),
                                                 "model_card.json"),
                      "card": card}


def stage_evaluate_tflm(ctx, report):
  _evaluate(ctx, report, "tflm_int8",
            enhancer_lib.make_enhancer(_exported_model_dir(report, ctx),
                                       tflite=ctx.tflite_path),
            "int8 .tflite in the TFLite Micro interpreter, frame by frame")


def stage_streaming_check(ctx, report):
  """The frame-by-frame streaming model must give the whole-utterance output."""
  whole = ctx.float_enhancer
  streaming = enhancer_lib.StreamingEnhancer.from_model_dir(ctx.model_dir)
  example = ctx.test_examples[0]
  difference = float(np.max(np.abs(whole(example.noisy) - streaming(example.noisy))))
  report["streaming_check"] = {"utterance": example.name,
                               "max_abs_difference": difference, "tolerance": 1e-4,
                               "passed": difference <= 1e-4}
  if difference > 1e-4:
    raise RuntimeError(f"streaming and whole-utterance outputs differ by {difference}")


def stage_examples(ctx, report):
  enhance_float = ctx.float_enhancer
  enhance_int8 = enhancer_lib.make_enhancer(_exported_model_dir(report, ctx),
                                            tflite=ctx.tflite_path)
  folder = os.path.join(ctx.output_dir, "examples")
  written = []
  for example in ctx.test_examples[:FLAGS.example_wavs]:
    for kind, wave in (("noisy", example.noisy), ("clean", example.clean),
                       ("enhanced_fp32", enhance_float(example.noisy)),
                       ("enhanced_int8_tflm", enhance_int8(example.noisy))):
      path = os.path.join(folder, f"{example.name}_{kind}.wav")
      audio.write_audio(path, wave)
      written.append(path)
  report["examples"] = {"folder": folder, "files": written}


def _cpu_seconds():
  """User + system CPU time of this process (all its threads) and of the child processes
  it waited for: a stage's cost on the machine, whatever else shares its cores."""
  times = os.times()
  return times.user + times.system + times.children_user + times.children_system


# The stages every worker of a multi-worker cluster runs; the others only the chief runs.
TRAINING_STAGES = ("train", "quantization_aware_training")
STAGES = [("train", stage_train), ("evaluate_fp32", stage_evaluate_float),
          ("streaming_check", stage_streaming_check),
          ("quantization_aware_training", stage_quantization_aware_training),
          ("evaluate_qat", stage_evaluate_qat), ("export", stage_export),
          ("evaluate_tflm", stage_evaluate_tflm), ("examples", stage_examples)]


def print_report(report):
  print()
  print(f"== tf_tinyse main job on {report['data_dir']} ==")
  for key in ("train", "qat"):
    info = report.get(key)
    if info:
      print(f"{'float training' if key == 'train' else 'QAT fine-tuning'}: {info['steps']} "
            f"steps, {info['parameters']:,} parameters -> {info['model_dir']}")
      if info.get("restarted"):
        print(f"  fine-tuned again from the new float model; the stale run is in "
              f"{info['restarted']['stale_model_dir']}")
      if info.get("sparsity"):
        print(f"  pruned to sparsity {info['sparsity']['pruned']:.3f} (zero kernel weights "
              f"{info['sparsity']['overall']:.3f}, {info['sparsity']['nonzero_weights']:,} "
              "non-zero kernel weights)")
  for key, entry in report["evaluation"].items():
    print(f"\n{entry['model']} — test split, {entry['summary']['files']} utterances:")
    print(metrics.format_table(entry["summary"]))
  print(f"\nstreaming check: max |whole - streaming| = "
        f"{report['streaming_check']['max_abs_difference']:.2e}")
  export_info = report.get("export")
  if export_info:
    print("\n" + export.format_card(export_info["card"]))
    print(f"int8 model: {export_info['tflite']}  card: {export_info['model_card']}")
  print(f"example WAVs: {report['examples']['folder']}")
  print("time per stage, wall / CPU minutes: " + ", ".join(
      f"{name} {stage['seconds'] / 60:.1f} / {stage['cpu_seconds'] / 60:.1f}"
      for name, stage in report["stages"].items()))
  print(f"report: {report['report_json']}")


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  data_dir = FLAGS.data_dir
  if not data_dir:
    data_dir = demo_data.path()
    logging.info("no --data_dir: using the built-in demo corpus %s", data_dir)
  train.set_cpu_threads(FLAGS.intra_op_threads, FLAGS.inter_op_threads)
  model_config = model_lib.ModelConfig.from_flags()
  if model_config.sparsity_structure is not None:
    if model_config.pruning == sparsity.OFFLINE:
      raise UserError("the main job prunes during quantization-aware fine-tuning (--pruning="
                      "online or tfmot); prune a trained model offline with python -m "
                      "tf_tinyse.prune_offline")
    if FLAGS.qat_steps <= 0:
      raise UserError("--sparsity_structure needs --qat_steps > 0: the main job prunes while "
                      "it fine-tunes the float model with quantization")
    train.check_sparsity_flags(dataclasses.replace(model_config, quantize=True), None,
                               FLAGS.qat_steps)
  ctx = Context(FLAGS.output_dir, data_dir, model_config,
                data.DataConfig.from_flags(), FLAGS.eval_seed, FLAGS.max_files,
                strategy=train.make_strategy(FLAGS.strategy))
  report = {"data_dir": data_dir, "output_dir": ctx.output_dir,
            "report_json": os.path.join(ctx.output_dir, "report.json"), "stages": {}}
  for name, stage in STAGES:
    if not ctx.role.is_chief and name not in TRAINING_STAGES:
      continue
    started, cpu_started = time.time(), _cpu_seconds()
    logging.info("stage %s", name)
    stage(ctx, report)
    report["stages"][name] = {"seconds": time.time() - started,
                              "cpu_seconds": _cpu_seconds() - cpu_started}
    if ctx.role.is_chief:
      fileio.write_json_atomic(report["report_json"], report)
  if not ctx.role.is_chief:
    print(f"{ctx.role.task_type} {ctx.role.task_id}: training done; the chief writes the "
          f"model, the export and the report into {ctx.output_dir}")
    return
  print_report(report)


if __name__ == "__main__":
  cli.run(main)
