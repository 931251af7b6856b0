"""The moving average of the weights: its arithmetic, what training keeps, and resuming it."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import model as model_lib
from tf_tinyse import train
from tf_tinyse import weight_average

TINY = model_lib.ModelConfig(lstm_units=(8, 8), dense_units=(8,))
TINY_DATA = data.DataConfig(batch_size=4, segment_seconds=0.4)
DECAY = 0.9


def _train(model_dir, steps, decay=DECAY):
  # A constant learning rate: the cosine schedule's length is `steps`, so a shorter run
  # resumed to more steps would not be the longer run.
  return train.train(TINY, TINY_DATA, data.discover_corpus(demo_data.path()), str(model_dir),
                     steps, seed=0, checkpoint_every=5, validate_every=steps,
                     max_validation_files=1, log_every=5, progress=False,
                     final_learning_rate_fraction=1.0, weight_average_decay=decay)


def _checkpoint(model_dir):
  """{name: value} of everything in the newest checkpoint of `model_dir`."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir,
                                                                            "checkpoints")))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def _averages(model_dir):
  """The checkpointed averages, in the order of the model's trainable variables."""
  values = _checkpoint(model_dir)
  count = len(model_lib.build_mask_model(TINY).trainable_variables)
  return [values[f"weight_average/averages/{i}/.ATTRIBUTES/VARIABLE_VALUE"]
          for i in range(count)]


def test_the_average_follows_the_decay_after_a_shorter_start():
  variable = tf.Variable([0.0, 10.0])
  average = weight_average.WeightAverage([variable], decay=0.5)
  expected = variable.numpy().copy()
  for n, value in enumerate([[1.0, 2.0], [3.0, -4.0], [5.0, 6.0], [7.0, 8.0]], start=1):
    variable.assign(value)
    average.update()
    decay = min(0.5, (1 + n) / (10 + n))  # 0.18, 0.25, 0.31, then 0.5
    expected = decay * expected + (1 - decay) * np.array(value)
    np.testing.assert_allclose(average.averages[0].numpy(), expected, rtol=1e-6)
  assert int(average.updates.numpy()) == 4
  average.reset()
  np.testing.assert_array_equal(average.averages[0].numpy(), [7.0, 8.0])
  assert int(average.updates.numpy()) == 0


def test_swapped_in_holds_the_average_and_gives_the_raw_weights_back_even_after_an_error():
  variable = tf.Variable([1.0, 2.0])
  average = weight_average.WeightAverage([variable], decay=0.9)
  variable.assign([3.0, 4.0])
  average.update()
  inside = None
  with pytest.raises(RuntimeError):
    with average.swapped_in():
      inside = variable.numpy().copy()
      raise RuntimeError("validation failed")
  np.testing.assert_array_equal(inside, average.averages[0].numpy())
  assert not np.array_equal(inside, [3.0, 4.0])
  np.testing.assert_array_equal(variable.numpy(), [3.0, 4.0])


def test_the_decay_must_be_below_one():
  with pytest.raises(ValueError, match="decay"):
    weight_average.WeightAverage([tf.Variable(1.0)], decay=1.0)


def test_training_keeps_the_averaged_weights_as_best_and_scores_the_raw_ones_beside(tmp_path):
  result = _train(tmp_path, steps=10)
  best = result["best"]
  assert best["step"] == 10 and best["weight_average_decay"] == DECAY
  assert np.isfinite(best["raw_si_sdr_improvement"])
  _, model = model_lib.load_trained(str(tmp_path))
  saved = [v.numpy() for v in model.trainable_variables]
  averages = _averages(tmp_path)
  for kept, average in zip(saved, averages):
    np.testing.assert_array_equal(kept, average)
  # ... which are not the raw weights the optimizer left.
  raw = _checkpoint(tmp_path)
  kernel = raw["model/layer_with_weights-1/cell/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
  assert kernel.shape == saved[2].shape and np.max(np.abs(kernel - saved[2])) > 1e-4


def test_a_resumed_run_goes_on_with_its_average(tmp_path):
  _train(tmp_path / "whole", steps=10)
  _train(tmp_path / "resumed", steps=5)
  result = _train(tmp_path / "resumed", steps=10)
  assert result["resumed_from"] == 5
  for whole, resumed in zip(_averages(tmp_path / "whole"), _averages(tmp_path / "resumed")):
    np.testing.assert_allclose(resumed, whole, atol=1e-6)


def test_a_run_checkpointed_without_an_average_starts_one_when_resumed_with_it(tmp_path):
  _train(tmp_path, steps=5, decay=0.0)
  assert not weight_average.checkpoint_holds_average(
      tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints")))
  raw_at_5 = _checkpoint(tmp_path)
  result = _train(tmp_path, steps=6)
  assert result["resumed_from"] == 5
  # One update from the raw weights of step 5 with the first decay, 2/11.
  values = _checkpoint(tmp_path)
  name = "model/layer_with_weights-1/cell/kernel/.ATTRIBUTES/VARIABLE_VALUE"
  index = 2  # the first LSTM's kernel among the trainable variables (after QEQ's two)
  expected = 2 / 11 * raw_at_5[name] + 9 / 11 * values[name]
  np.testing.assert_allclose(_averages(tmp_path)[index], expected, atol=1e-6)


def test_a_pruned_model_keeps_its_raw_weights():
  pruned = dataclasses.replace(TINY, sparsity_structure="weight")
  trainer = train.Trainer(pruned, tf.distribute.get_strategy(), global_batch_size=2,
                          weight_average_decay=DECAY)
  assert trainer.weight_average is None
  dense = train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=2,
                        weight_average_decay=DECAY)
  assert dense.weight_average is not None


def test_which_checkpoints_hold_an_average(tmp_path):
  variable = tf.Variable([1.0, 2.0])
  average = weight_average.WeightAverage([variable], decay=0.9)
  with_average = tf.train.Checkpoint(
      variable=variable, **{weight_average.CHECKPOINT_KEY: average.checkpointed}).write(
          str(tmp_path / "with"))
  without = tf.train.Checkpoint(variable=variable).write(str(tmp_path / "without"))
  assert weight_average.checkpoint_holds_average(with_average)
  assert not weight_average.checkpoint_holds_average(without)
  # Unreadable: restoring skips it, so it does not decide whether the average starts anew.
  with open(without + ".index", "wb") as f:
    f.write(b"not a checkpoint index")
  assert weight_average.checkpoint_holds_average(without)


def test_training_with_a_mirrored_strategy_keeps_an_average(tmp_path):
  # Averages are created in the strategy's scope and updated in its cross-replica context.
  result = train.train(TINY, TINY_DATA, data.discover_corpus(demo_data.path()), str(tmp_path),
                       4, validate_every=4, checkpoint_every=4, max_validation_files=1,
                       progress=False, strategy=tf.distribute.MirroredStrategy(["/cpu:0"]),
                       weight_average_decay=DECAY)
  assert result["best"]["weight_average_decay"] == DECAY
  _, model = model_lib.load_trained(str(tmp_path))
  for kept, average in zip(model.trainable_variables, _averages(tmp_path)):
    np.testing.assert_array_equal(kept.numpy(), average)
