"""--pruning=tfmot: the schedule mapping, tfmot's blocks are pruning_groups' blocks, training
reaches the target, best/ is the stripped plain model, resume keeps masks and pruning step,
float and --quantize, init_from, and the refusals."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from keras_layers import pruning_groups
from keras_layers.quantized_dense import QuantizedDense
from keras_layers.quantized_lstm import QuantizedLSTM
from keras_layers.unrolling import UnrollingLSTM
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse import tfmot_pruning
from tf_tinyse import train
from tf_tinyse.errors import UserError

BLOCK = 8
TINY = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(16,), sparsity_structure="block",
                             block_size=BLOCK, pruning=sparsity.TFMOT)
TINY_DATA = data.DataConfig(batch_size=4, segment_seconds=0.4)
TARGET = 0.5
# Masks at steps 4, 8, 10 (the end, which tfmot alone would skip: 4 does not divide 10).
SCHEDULE = sparsity.Schedule(target=TARGET, begin_step=0, end_step=10, frequency=4)
STEPS = 16


def _train(model_dir, steps, config=TINY, init_from=None):
  return train.train(config, TINY_DATA, data.discover_corpus(demo_data.path()), str(model_dir),
                     steps, checkpoint_every=4, validate_every=STEPS, max_validation_files=2,
                     log_every=4, progress=False, init_from=init_from,
                     # Constant: a cosine decay over `steps` would differ between a run to
                     # 6 steps resumed to STEPS and one to STEPS.
                     final_learning_rate_fraction=1.0, sparsity_schedule=SCHEDULE)


def _checkpoint_variables(model_dir):
  """{name: value} of the model's variables (weights, masks, pruning steps) in the newest
  checkpoint of `model_dir`."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      os.path.join(model_dir, model_lib.CHECKPOINTS)))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith("model/")}


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("tfmot_float")
  _train(model_dir, STEPS)
  return model_dir


def _random_features(config, frames=6, seed=0):
  return tf.random.stateless_uniform([2, frames, config.feature.num_bands], [seed, 1])


def _prune_once(config):
  """A wrapped model whose masks are updated once to TARGET (the schedule's end, step 1)."""
  plain = model_lib.build_mask_model(config)
  wrapped = tfmot_pruning.wrap(plain, config, sparsity.Schedule(target=TARGET, end_step=1,
                                                                 frequency=1))
  wrapped(_random_features(config), training=True)  # pruning_step 0 → 1: the masks update
  return plain, wrapped


def test_schedule_is_our_schedule_as_tfmot_polynomial_decay():
  tfmot_schedule = tfmot_pruning.pruning_schedule(SCHEDULE)
  config = tfmot_schedule.get_config()["config"]
  assert (config["initial_sparsity"], config["final_sparsity"], config["power"],
          config["begin_step"], config["end_step"], config["frequency"]) == (
              0.0, TARGET, 3, 0, 10, 4)
  updates = []
  for step in range(STEPS):
    update, target = tfmot_schedule(tf.constant(step, tf.int64))
    assert float(target) == pytest.approx(SCHEDULE.target_at(step), abs=1e-6)
    if bool(update):
      updates.append(step)
  assert updates == [0, 4, 8, 10]


def test_block_size_maps_1xb_onto_the_keras_in_out_layout():
  assert tfmot_pruning.block_size(TINY) == (BLOCK, 1)
  weight = model_lib.ModelConfig(sparsity_structure="weight", pruning=sparsity.TFMOT)
  assert tfmot_pruning.block_size(weight) == (1, 1)


@pytest.mark.parametrize("lstm_units", [(20, 16), (8, 16)])
def test_blocks_tfmot_cannot_tile_as_ours_are_refused(lstm_units):
  config = model_lib.ModelConfig(lstm_units=lstm_units, dense_units=(16,),
                                 sparsity_structure="block", block_size=BLOCK,
                                 pruning=sparsity.TFMOT)
  with pytest.raises(UserError, match=f"not {lstm_units[0]}") as error:
    train.check_sparsity_flags(config, None, 100)
  assert "\n" not in str(error.value)


def test_unit_pruning_with_tfmot_is_a_one_line_error():
  config = model_lib.ModelConfig(sparsity_structure="unit", pruning=sparsity.TFMOT)
  with pytest.raises(UserError, match="--pruning=tfmot cannot prune units") as error:
    train.check_sparsity_flags(config, None, 100)
  assert "\n" not in str(error.value)


def _matrices(layer):
  if isinstance(layer, keras.layers.Dense):
    return {"kernel": layer.kernel}
  cell = layer.cell
  return {"kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel}


@pytest.mark.parametrize("quantize", [False, True], ids=["float", "quantize"])
def test_tfmot_prunes_exactly_the_blocks_of_pruning_groups(quantize):
  config = dataclasses.replace(TINY, quantize=quantize)
  plain, wrapped = _prune_once(config)
  assert [type(layer.layer) for layer in tfmot_pruning.wrappers(wrapped)] == (
      [QuantizedLSTM] * 2 + [QuantizedDense] * 2 if quantize else
      [UnrollingLSTM] * 2 + [keras.layers.Dense] * 2)
  masks = tfmot_pruning.masks(wrapped)
  assert sorted(masks) == sorted(
      [f"lstm_{i}/{m}" for i in (0, 1) for m in ("kernel", "recurrent_kernel")] +
      ["dense_0/kernel", "mask/kernel"])
  stripped = tfmot_pruning.strip(wrapped, model_lib.build_mask_model(config))
  for name, mask in masks.items():
    layer_name, matrix = name.split("/")
    kept = pruning_groups._mean_square_blocks(mask, BLOCK).numpy()  # pylint: disable=protected-access
    # pruning_groups' 1xB blocks (B rows of one column of [in, out], LSTM gate columns too):
    # each is wholly kept or wholly pruned, and tfmot's mask is those blocks expanded.
    assert set(np.unique(kept)) <= {0.0, 1.0}, name
    np.testing.assert_array_equal(
        pruning_groups.expand_blocks(kept, mask.shape[0], BLOCK).numpy(), mask)
    assert kept.shape == pruning_groups.dense_scores(tf.constant(mask), "block", BLOCK).shape
    assert np.mean(kept == 0) == pytest.approx(TARGET, abs=0.02), name
    # The stripped (plain) matrix: pruned blocks are all zero, kept ones untouched.
    weights = _matrices(stripped.get_layer(layer_name))[matrix].numpy()
    raw = _matrices(plain.get_layer(layer_name))[matrix].numpy()
    np.testing.assert_array_equal(weights, raw * mask)
    assert np.all(weights[mask == 0] == 0)
  # The wrapper assigned the masked weights to the variables, so a quantized layer's
  # quantizers see them: its forward weights are zero where the mask is.
  for name, mask in masks.items():
    layer = stripped.get_layer(name.split("/")[0])
    index = 0 if name.endswith("/kernel") else 1
    assert np.all(model_lib.forward_weights(layer)[index][mask == 0] == 0)
  # Inference through the wrappers computes what the stripped model computes.
  z = _random_features(config, seed=1)
  np.testing.assert_allclose(wrapped(z, training=False).numpy(), stripped(z).numpy(),
                             atol=1e-6)
  report = sparsity.measure(stripped)
  assert report["overall"] >= TARGET - 0.02


def test_strip_matches_tfmot_strip_pruning_after_remasking():
  plain, wrapped = _prune_once(TINY)
  for variable in plain.trainable_variables:  # what an optimizer step does to pruned weights
    variable.assign_add(tf.fill(variable.shape, 0.01))
  ours = tfmot_pruning.strip(wrapped, model_lib.build_mask_model(TINY))
  assert plain.get_layer("mask").kernel.numpy().min() != 0  # training variables untouched
  tfmot_pruning.apply_masks(wrapped)
  import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
  theirs = tfmot.sparsity.keras.strip_pruning(wrapped)
  assert [layer.name for layer in theirs.layers] == [layer.name for layer in ours.layers]
  for a, b in zip(theirs.get_weights(), ours.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_training_step_follows_the_global_step():
  trainer = train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=4,
                          sparsity_schedule=SCHEDULE)
  assert set(tfmot_pruning.pruning_steps(trainer.train_model).values()) == {0}
  assert trainer.model.get_layer("lstm_0") is trainer.train_model.layers[2].layer
  noisy = tf.random.stateless_normal([4, 6400], [0, 2]) * 0.1
  trainer.step.assign(7)  # e.g. a resumed run
  trainer.train_step((noisy, noisy))
  assert int(trainer.step.numpy()) == 8
  assert set(tfmot_pruning.pruning_steps(trainer.train_model).values()) == {8}
  # Step 8 is an update step of SCHEDULE: the masks are at its target.
  sparsity_at_8 = np.mean([np.mean(m == 0) for m in tfmot_pruning.masks(
      trainer.train_model).values()])
  assert sparsity_at_8 == pytest.approx(SCHEDULE.target_at(8), abs=0.03)


def test_a_tfmot_run_ends_at_the_target_and_best_is_the_stripped_plain_model(float_run):
  info = train._read_best(float_run)  # pylint: disable=protected-access
  assert info["at_target"] and info["step"] == STEPS
  with open(os.path.join(float_run, sparsity.SPARSITY_FILE)) as f:
    report = json.load(f)
  assert report["strategy"] == sparsity.TFMOT and report["structure"] == "block"
  assert report["overall"] == pytest.approx(TARGET, abs=0.02)
  config, model = model_lib.load_trained(float_run)
  assert config == TINY
  assert [type(layer) for layer in model.layers[2:]] == (
      [UnrollingLSTM] * 2 + [keras.layers.Dense] * 2)
  measured = sparsity.measure(model)
  assert measured["overall"] == report["overall"]
  assert {n: l["sparsity"] for n, l in measured["layers"].items()} == {
      n: l["sparsity"] for n, l in report["layers"].items()}


def test_without_best_the_newest_checkpoint_loads_stripped(float_run, tmp_path):
  model_dir = tmp_path / "no_best"
  shutil.copytree(float_run, model_dir)
  shutil.rmtree(model_dir / "best")
  _, from_checkpoint = model_lib.load_trained(str(model_dir))
  _, from_best = model_lib.load_trained(float_run)
  # best/ is the final step, which is also the newest checkpoint.
  for a, b in zip(from_checkpoint.get_weights(), from_best.get_weights()):
    np.testing.assert_array_equal(a, b)
  _, streaming = model_lib.load_trained(str(model_dir), streaming=True)
  for a, b in zip(streaming.get_weights(), from_best.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_resume_keeps_masks_and_pruning_step(float_run, tmp_path):
  model_dir = tmp_path / "resumed"
  _train(model_dir, 6)  # checkpoints at 4 and 6; masks updated at steps 4
  halfway = _checkpoint_variables(model_dir)
  steps = {k: v for k, v in halfway.items() if "pruning_step" in k}
  assert len(steps) == 4 and set(steps.values()) == {6}
  assert any("mask" in k and np.mean(v == 0) > 0 for k, v in halfway.items())
  _train(model_dir, STEPS)
  resumed, uninterrupted = _checkpoint_variables(model_dir), _checkpoint_variables(float_run)
  assert resumed.keys() == uninterrupted.keys()
  for key in resumed:
    np.testing.assert_allclose(resumed[key], uninterrupted[key], atol=1e-6, err_msg=key)


def test_quantized_fine_tuning_from_a_trained_model(float_run, tmp_path):
  config = dataclasses.replace(TINY, quantize=True, sparsity_structure="weight")
  model_dir = tmp_path / "quantized"
  _train(model_dir, STEPS, config=config, init_from=str(float_run))
  loaded_config, model = model_lib.load_trained(str(model_dir))
  assert loaded_config.quantize
  assert [type(layer) for layer in model.layers[2:]] == [QuantizedLSTM] * 2 + [QuantizedDense] * 2
  report = sparsity.measure(model)
  # int8 rounding may zero a few more weights than the masks prune.
  assert TARGET - 0.02 <= report["overall"] <= TARGET + 0.05
  assert train._read_best(str(model_dir))["at_target"]  # pylint: disable=protected-access
