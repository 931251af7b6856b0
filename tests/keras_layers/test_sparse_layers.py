"""Sparse LSTM and Dense layers: the forward pass uses the masked weights, the straight-through
gradient reaches the threshold, a pruned unit can be removed without changing the output, and
the layers round-trip through their config."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from keras_layers import learned_threshold
from keras_layers.sparse_dense import SparseDense
from keras_layers.sparse_lstm import SparseLSTM
from tf_tinyse import model as model_lib


def _set_threshold(layer, tau):
  """Sets the threshold τ (in score units) of a learned-threshold layer."""
  layer.pruning_threshold.assign(tau / learned_threshold.THRESHOLD_SCALE)


def test_the_forward_pass_uses_the_masked_weights():
  layer = SparseDense(6, structure="weight", kernel_quantizer=None)
  x = tf.constant(np.random.default_rng(0).normal(size=(3, 10)), tf.float32)
  layer(x)
  _set_threshold(layer, 1.0)
  kernel_mask, _ = layer.masks()
  expected = x.numpy() @ (layer.kernel.numpy() * kernel_mask.numpy()) + layer.bias.numpy()
  np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)
  assert 0 < kernel_mask.numpy().mean() < 1


def test_the_threshold_gets_a_straight_through_gradient():
  layer = SparseLSTM(8, structure="block", kernel_quantizer=None, recurrent_quantizer=None,
                     output_quantizer=None)
  x = tf.constant(np.random.default_rng(1).normal(size=(2, 5, 16)), tf.float32)
  layer(x)
  _set_threshold(layer, 1.0)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(layer(x)))
  grad = tape.gradient(loss, layer.pruning_threshold)
  assert grad is not None and abs(float(grad)) > 0


def test_a_soft_mask_follows_the_hard_one():
  scores = tf.constant([0.5, 0.95, 1.05, 2.0])
  hard, soft = learned_threshold.threshold_mask(scores, 1.0 / learned_threshold.THRESHOLD_SCALE)
  np.testing.assert_array_equal(hard.numpy(), [0, 0, 1, 1])
  assert np.all(np.diff(soft.numpy()) > 0) and soft.numpy()[0] < 0.01


def _unit_pruned_model(config, rng):
  model = model_lib.build_mask_model(config)
  x = rng.normal(size=(2, 7, config.feature.num_bands)).astype(np.float32)
  model(x)
  for layer in model.layers:
    for w in layer.trainable_weights:
      if "threshold" not in w.name:
        w.assign(rng.normal(0, 0.3, w.shape).astype(np.float32))
  for name, tau in (("lstm_0", 1.0), ("lstm_1", 0.98), ("dense_0", 1.0)):
    _set_threshold(model.get_layer(name), tau)
  return model, x


def _shrink(model, config):
  """A dense model with the pruned units removed (rows and columns cut out)."""
  kept = {name: np.asarray(model.get_layer(name).unit_mask()) > 0
          for name in ("lstm_0", "lstm_1", "dense_0")}
  small = model_lib.ModelConfig(
      lstm_units=(int(kept["lstm_0"].sum()), int(kept["lstm_1"].sum())),
      dense_units=(int(kept["dense_0"].sum()),), use_qeq=config.use_qeq)
  shrunk = model_lib.build_mask_model(small)
  shrunk.get_layer("qeq").set_weights(model.get_layer("qeq").get_weights())
  previous = None
  for name in ("lstm_0", "lstm_1"):
    kernel, recurrent, bias = model.get_layer(name).forward_weights()
    gates = np.tile(kept[name], 4)
    rows = slice(None) if previous is None else previous
    shrunk.get_layer(name).set_weights([kernel[rows][:, gates], recurrent[kept[name]][:, gates],
                                        bias[gates]])
    previous = kept[name]
  kernel, bias = model.get_layer("dense_0").forward_weights()
  shrunk.get_layer("dense_0").set_weights([kernel[previous][:, kept["dense_0"]],
                                           bias[kept["dense_0"]]])
  kernel, bias = model.get_layer("mask").forward_weights()
  shrunk.get_layer("mask").set_weights([kernel[kept["dense_0"]], bias])
  return shrunk, kept


def test_removing_pruned_units_gives_the_output_of_masking_them():
  config = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(12,),
                                 sparsity_structure="unit")
  model, x = _unit_pruned_model(config, np.random.default_rng(3))
  shrunk, kept = _shrink(model, config)
  for name, mask in kept.items():
    assert 0 < mask.sum() < mask.size, f"{name}: the test needs some but not all units pruned"
  np.testing.assert_allclose(shrunk(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_masked_unit_outputs_exactly_zero():
  config = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(12,),
                                 sparsity_structure="unit")
  model, x = _unit_pruned_model(config, np.random.default_rng(4))
  hidden = keras.Model(model.input, model.get_layer("lstm_0").output)(x).numpy()
  pruned = np.asarray(model.get_layer("lstm_0").unit_mask()) == 0
  assert pruned.any()
  np.testing.assert_array_equal(hidden[..., pruned], 0.0)


def test_the_output_layer_keeps_its_units_but_loses_the_rows_of_pruned_inputs():
  config = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(12,),
                                 sparsity_structure="unit")
  model, _ = _unit_pruned_model(config, np.random.default_rng(5))
  mask_layer = model.get_layer("mask")
  assert mask_layer.structure is None and mask_layer.unit_mask() is None
  kernel_mask, bias_mask = [np.asarray(m) for m in mask_layer.masks()]
  pruned_inputs = np.asarray(model.get_layer("dense_0").unit_mask()) == 0
  np.testing.assert_array_equal(kernel_mask[pruned_inputs], 0.0)
  np.testing.assert_array_equal(kernel_mask[~pruned_inputs], 1.0)
  np.testing.assert_array_equal(bias_mask, 1.0)


@pytest.mark.parametrize("layer", [
    SparseDense(4, structure="block", block_size=4, pruning="fixed"),
    SparseLSTM(4, structure="unit", temperature=0.2),
])
def test_config_round_trip(layer):
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()


def test_fixed_masks_are_variables_that_are_not_trained():
  layer = SparseDense(3, structure="weight", pruning="fixed", kernel_quantizer=None)
  layer(tf.ones((1, 4)))
  assert [w.name.split("/")[-1] for w in layer.non_trainable_weights] == [
      "kernel_mask:0", "bias_mask:0"]
  mask = np.ones((4, 3), np.float32)
  mask[0] = 0.0
  layer.kernel_mask.assign(mask)
  np.testing.assert_array_equal(layer.forward_weights()[0][0], 0.0)


def test_the_export_model_of_a_unit_pruned_model_is_smaller_and_computes_the_same():
  from tflm_export import export_model  # pylint: disable=g-import-not-at-top
  config = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(12,),
                                 sparsity_structure="unit", use_qeq=False)
  rng = np.random.default_rng(6)
  model = model_lib.build_mask_model(config, streaming=True)
  frames = rng.normal(size=(20, 1, 1, config.feature.num_bands)).astype(np.float32)
  model(frames[0])
  for layer in model.layers:
    for w in layer.trainable_weights:
      if "threshold" not in w.name:
        w.assign(rng.normal(0, 0.3, w.shape).astype(np.float32))
  for name, tau in (("lstm_0", 1.0), ("lstm_1", 0.98), ("dense_0", 1.0)):
    _set_threshold(model.get_layer(name), tau)
  model.reset_states()
  export = export_model.build_export_model(model, config)
  # The export's plain LSTMs sum their gates in float (the int16 gate grid is TFLM's, applied
  # when it runs them): compare the same arithmetic, so that only the removal of units differs.
  for name in ("lstm_0", "lstm_1"):
    model.get_layer(name).cell.saturate_gates = False
  kept = {name: int(np.sum(np.asarray(model.get_layer(name).unit_mask())))
          for name in ("lstm_0", "lstm_1", "dense_0")}
  assert export.get_layer("lstm_0").units == kept["lstm_0"] < 16
  assert export.get_layer("dense_0").units == kept["dense_0"] < 12
  for frame in frames:  # frame by frame, state carried: the streaming form
    np.testing.assert_allclose(export(frame).numpy(), model(frame).numpy(), rtol=1e-5, atol=1e-6)
