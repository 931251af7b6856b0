"""Online pruning end to end on a tiny model: learned thresholds move, the network ends at the
target, per-layer sparsities are reported (sparsity.json, TensorBoard), masks survive best/,
checkpoints and resume, a dense model initializes a pruned one, and the counts are right."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from keras_layers import learned_threshold
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse import train
from tf_tinyse.errors import UserError

TINY = model_lib.ModelConfig(lstm_units=(32, 32), dense_units=(32,), quantize=True,
                             sparsity_structure="weight")
TINY_DATA = data.DataConfig(batch_size=4, segment_seconds=0.4)
# A short schedule and a constant, high learning rate: a learned threshold moves about
# THRESHOLD_SCALE × learning rate per step.
SCHEDULE = sparsity.Schedule(target=0.8, begin_step=0, end_step=80)
STEPS = 160


@pytest.fixture(scope="module")
def corpus():
  return data.discover_corpus(demo_data.path())


def _train(model_dir, corpus, config=TINY, steps=STEPS, **kwargs):
  args = dict(checkpoint_every=40, validate_every=40, max_validation_files=1, log_every=20,
              progress=False, learning_rate=4e-3, final_learning_rate_fraction=1.0,
              sparsity_schedule=SCHEDULE)
  args.update(kwargs)
  return train.train(config, TINY_DATA, corpus, model_dir, steps=steps, **args)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory, corpus):
  model_dir = str(tmp_path_factory.mktemp("online"))
  return model_dir, _train(model_dir, corpus)


def test_the_schedule_is_tfmots_polynomial_decay():
  s = sparsity.Schedule(target=0.8, begin_step=100, end_step=1100)
  assert s.target_at(0) == 0.0 and s.target_at(100) == 0.0
  assert s.target_at(600) == pytest.approx(0.8 * (1 - 0.5 ** 3))
  assert s.target_at(1100) == pytest.approx(0.8) and s.target_at(5000) == pytest.approx(0.8)
  assert float(s.target_at(tf.constant(600))) == pytest.approx(s.target_at(600), rel=1e-6)


def test_thresholds_move_and_the_network_ends_at_the_target(online_run):
  model_dir, result = online_run
  with open(os.path.join(model_dir, sparsity.SPARSITY_FILE)) as f:
    report = json.load(f)
  assert report["pruned"] == pytest.approx(SCHEDULE.target, abs=sparsity.TARGET_TOLERANCE)
  assert report["structure"] == "weight" and report["strategy"] == "online"
  thresholds = [layer["threshold"] for layer in report["layers"].values()]
  assert all(t > 0.3 for t in thresholds)  # they start at 0
  assert len({round(layer["pruned"], 3) for layer in report["layers"].values()}) > 1
  assert result["best"]["at_target"] and result["best"]["step"] >= SCHEDULE.end_step


def test_best_weights_carry_the_masks_of_the_report(online_run):
  model_dir, _ = online_run
  with open(os.path.join(model_dir, sparsity.SPARSITY_FILE)) as f:
    report = json.load(f)
  _, model = model_lib.load_trained(model_dir)
  measured = sparsity.measure(model)
  assert measured["pruned"] == pytest.approx(report["pruned"])
  for name, layer in report["layers"].items():
    tau = learned_threshold.THRESHOLD_SCALE * float(model.get_layer(name).pruning_threshold)
    assert tau == pytest.approx(layer["threshold"])
  # The streaming form (what the export converts) holds the same masks.
  _, streaming = model_lib.load_trained(model_dir, streaming=True)
  for name in report["layers"]:
    for a, b in zip(model_lib.forward_weights(model.get_layer(name)),
                    model_lib.forward_weights(streaming.get_layer(name))):
      np.testing.assert_array_equal(a, b)


def test_parameter_counts_see_the_masks_not_the_threshold_variables(online_run):
  model_dir, _ = online_run
  _, model = model_lib.load_trained(model_dir)
  dense = model_lib.build_mask_model(TINY.dense())
  total, nonzero = model_lib.parameter_counts(model)
  assert total == model_lib.count_parameters(dense)
  report = sparsity.measure(model)
  assert nonzero < total - report["kernel_weights"] * 0.75


def test_per_layer_sparsity_goes_to_tensorboard(online_run):
  model_dir, _ = online_run
  tags = set()
  for path in glob.glob(os.path.join(model_dir, "logs", "*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  assert {"sparsity/overall", "sparsity/target", "sparsity/lstm_0", "sparsity/mask",
          "threshold/lstm_1"} <= tags


def test_resuming_restores_the_thresholds(tmp_path, corpus, online_run):
  reference_dir, _ = online_run
  model_dir = str(tmp_path / "resumed")
  _train(model_dir, corpus, steps=120)
  result = _train(model_dir, corpus, steps=STEPS)
  assert result["resumed_from"] == 120
  _, resumed = model_lib.load_trained(model_dir)
  _, reference = model_lib.load_trained(reference_dir)
  # Same seed, same stream, resumed at a checkpoint: the same run.
  for layer in ("lstm_0", "lstm_1", "dense_0", "mask"):
    np.testing.assert_allclose(float(resumed.get_layer(layer).pruning_threshold),
                               float(reference.get_layer(layer).pruning_threshold), atol=1e-5)


def test_pruning_a_trained_dense_model_starts_from_its_weights(tmp_path, corpus):
  dense_dir = str(tmp_path / "dense")
  train.train(TINY.dense(), TINY_DATA, corpus, dense_dir, steps=4, checkpoint_every=4,
              validate_every=4, max_validation_files=1, progress=False)
  config = model_lib.ModelConfig(lstm_units=(32, 32), dense_units=(32,), quantize=True,
                                 sparsity_structure="block")
  trainer = train.Trainer(config, tf.distribute.get_strategy())
  _, source = model_lib.load_trained(dense_dir)
  model_lib.copy_weights(source, trainer.model)
  for name in ("qeq", "lstm_0", "mask"):
    for a, b in zip(source.get_layer(name).weights, trainer.model.get_layer(name).weights):
      np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert float(trainer.model.get_layer("lstm_0").pruning_threshold) == 0.0


def test_tfmot_cannot_prune_units():
  config = model_lib.ModelConfig(sparsity_structure="unit", pruning=sparsity.TFMOT)
  with pytest.raises(UserError, match="tfmot.*units"):
    train.check_sparsity_flags(config, None, 100)


def test_offline_fine_tuning_needs_an_offline_pruned_model(tmp_path):
  config = model_lib.ModelConfig(sparsity_structure="weight", pruning=sparsity.OFFLINE)
  with pytest.raises(UserError, match="prune_offline"):
    train.check_sparsity_flags(config, None, 100)


def test_the_readme_command_runs_as_written(tmp_path):
  """The issue's command (no --data_dir: the demo corpus), made tiny by flags after it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  model_dir = str(tmp_path / "out")
  command = [sys.executable, "-m", "tf_tinyse.train", "--flagfile=configs/demo.cfg",
             "--sparsity_structure=weight", "--target_sparsity=0.8", "--pruning=online",
             f"--model_dir={model_dir}",
             # tiny: the same flags after the flagfile override its values
             "--lstm_units=16,16", "--dense_units=16", "--batch_size=2", "--segment_seconds=0.4",
             "--steps=6", "--checkpoint_every=6", "--validate_every=6",
             "--max_validation_files=1", "--validation_mixtures=1"]
  done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "trained to step 6" in done.stdout
  with open(os.path.join(model_dir, sparsity.SPARSITY_FILE)) as f:
    report = json.load(f)
  assert report["structure"] == "weight" and report["schedule"]["target"] == 0.8
