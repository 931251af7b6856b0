"""Tests for QuantizedDense: converter grid, straight-through gradients, config, export."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_layers import quantizers as Q
from keras_layers.quantized_dense import QuantizedDense


def convert_int8_bytes(model, samples):
  """Full-integer int8 conversion (what tflm_export does): the `.tflite` bytes."""
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([s[None].astype(np.float32)] for s in samples)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.int8
  converter.inference_output_type = tf.int8
  return converter.convert()


def convert_int8(model, samples):
  """`convert_int8_bytes`, returned as a ready Interpreter."""
  interpreter = tf.lite.Interpreter(model_content=convert_int8_bytes(model, samples))
  interpreter.allocate_tensors()
  return interpreter


def op_input(interpreter, op_name, position):
  """(int codes, scales) of input `position` of the first op named `op_name`."""
  op = next(o for o in interpreter._get_ops_details() if o["op_name"] == op_name)  # pylint: disable=protected-access
  index = op["inputs"][position]
  details = next(d for d in interpreter.get_tensor_details() if d["index"] == index)
  return interpreter.get_tensor(index), details["quantization_parameters"]["scales"]


def run_int8(interpreter, x):
  """Quantizes x like the converter's input, runs, returns (dequantized out, x on grid, out scale)."""
  inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
  (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], out["quantization"]
  x_int = np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)
  interpreter.set_tensor(inp["index"], x_int[None])
  interpreter.invoke()
  y = (interpreter.get_tensor(out["index"])[0].astype(np.float32) - out_zero) * out_scale
  return y, (x_int.astype(np.float32) - in_zero) * in_scale, out_scale


def _dense_pair(features=12, units=5, time=8):
  """A QuantizedDense (sigmoid, TFLite's output grid) with random weights, and its plain twin."""
  rng = np.random.default_rng(0)
  layer = QuantizedDense(units, "sigmoid",
                         activation_quantizer=Q.activation_output_quantizer("sigmoid"),
                         input_quantizer=Q.FixedRangeQuantizer(8, -1.0, 1.0))
  layer.build((None, time, features))
  layer.set_weights([rng.normal(0, 0.5, (features, units)).astype(np.float32)
                     * np.linspace(0.2, 2.0, units).astype(np.float32),
                     rng.normal(0, 0.3, units).astype(np.float32)])
  inputs = keras.Input((time, features), batch_size=1)
  plain = keras.Model(inputs, keras.layers.Dense(units, "sigmoid")(inputs))
  plain.layers[-1].set_weights(layer.get_weights())
  samples = [rng.uniform(-1, 1, (time, features)) for _ in range(10)]
  return layer, plain, samples


def test_kernel_grid_equals_converter_per_channel_grid():
  layer, plain, samples = _dense_pair()
  interpreter = convert_int8(plain, samples)
  codes, scales = op_input(interpreter, "FULLY_CONNECTED", 1)  # TFLite stores [units, in]
  kernel = layer.kernel.numpy()
  np.testing.assert_allclose(scales, layer.kernel_quantizer.scale(kernel).numpy().ravel(),
                             rtol=1e-6)
  np.testing.assert_array_equal(codes.T, layer.kernel_quantizer.codes(kernel).numpy())
  np.testing.assert_allclose(codes.T * scales, layer.quantized_kernel().numpy(), atol=1e-7)


def test_output_matches_int8_model_within_two_lsb():
  layer, plain, samples = _dense_pair()
  interpreter = convert_int8(plain, samples)
  x = np.random.default_rng(5).uniform(-1, 1, samples[0].shape).astype(np.float32)
  y_int8, x_grid, out_scale = run_int8(interpreter, x)
  assert out_scale == 1 / 256  # the fixed LOGISTIC grid the quantizer reproduces
  lsb = np.abs(layer(x_grid[None]).numpy()[0] - y_int8) / out_scale
  # Weights, input and output grids agree exactly; what is left is TFLite's int8
  # pre-sigmoid tensor (calibrated, not simulated) and integer rounding inside the op.
  assert lsb.max() <= 2.0 + 1e-4, lsb.max()
  assert lsb.mean() <= 0.75, lsb.mean()


def test_straight_through_gradients():
  layer = QuantizedDense(3, kernel_quantizer=Q.MaxAbsQuantizer(8, axis=-1),
                         input_quantizer=Q.FixedRangeQuantizer(8, -1.0, 1.0))
  x = tf.constant(np.random.default_rng(1).uniform(-0.9, 0.9, (4, 6)).astype(np.float32))
  layer.build(x.shape)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    loss = tf.reduce_sum(layer(x))
  # d sum(Q(x) Q(K) + b) / dK = column sums of Q(x): the kernel quantizer passes the
  # gradient unchanged, and so does the input quantizer inside its range.
  # The sums are over signed terms that can cancel, and TensorFlow's reduction order differs
  # from numpy's, so the tolerance is absolute at float32 resolution of the summands.
  x_grid = layer.input_quantizer(x).numpy()
  np.testing.assert_allclose(tape.gradient(loss, layer.kernel).numpy(),
                             np.repeat(x_grid.sum(0)[:, None], 3, axis=1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(tape.gradient(loss, x).numpy(),
                             np.repeat(layer.quantized_kernel().numpy().sum(1)[None], 4, axis=0),
                             rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_plain_dense_takes_weights():
  layer, _, _ = _dense_pair()
  config = layer.get_config()
  clone = QuantizedDense.from_config(config)
  assert clone.get_config() == config
  clone.build(layer.kernel.shape[:1])
  clone.set_weights(layer.get_weights())
  x = np.random.default_rng(2).uniform(-1, 1, (3, layer.kernel.shape[0])).astype(np.float32)
  np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
  plain = keras.layers.Dense(layer.units)
  plain.build((None, layer.kernel.shape[0]))
  plain.set_weights(layer.get_weights())
  assert [w.name.split("/")[-1] for w in plain.weights] == \
         [w.name.split("/")[-1] for w in layer.weights]


class _MaskedDense(QuantizedDense):
  """Pruning through the hook: the mask is applied before quantization."""

  def transform_kernel(self, kernel):
    return kernel * tf.cast(tf.abs(kernel) > 0.2, kernel.dtype)


def test_transform_kernel_runs_before_quantization():
  layer = _MaskedDense(4)
  layer.build((None, 8))
  kernel = layer.kernel.numpy()
  masked = np.where(np.abs(kernel) > 0.2, kernel, 0)
  quantized = layer.quantized_kernel().numpy()
  assert np.all(quantized[masked == 0] == 0)
  np.testing.assert_allclose(quantized, Q.MaxAbsQuantizer(8, axis=-1)(masked).numpy())


def _sigmoid_layer_with_preactivation_grid(features=6, units=4):
  """A QuantizedDense(sigmoid) on the fixed pre-activation grid, weights spreading x@W+b well
  beyond the grid's [-4, 4]."""
  layer = QuantizedDense(units, activation="sigmoid",
                         preactivation_quantizer=Q.activation_input_quantizer("sigmoid"))
  layer.build((None, features))
  rng = np.random.default_rng(3)
  layer.set_weights([rng.normal(0, 3.0, (features, units)).astype(np.float32),
                     rng.normal(0, 1.0, units).astype(np.float32)])
  return layer


def test_preactivation_grid_is_applied_before_the_activation():
  layer = _sigmoid_layer_with_preactivation_grid()
  x = np.random.default_rng(4).uniform(-1, 1, (200, 6)).astype(np.float32)
  preactivation = x @ layer.quantized_kernel().numpy() + layer.bias.numpy()
  assert preactivation.min() < -4.5 and preactivation.max() > 4.5  # the range saturates
  grid = Q.FixedRangeQuantizer(8, -4.0, 4.0)(tf.constant(preactivation)).numpy()
  # The grid values: 8/255 steps (the int8 tensor TFLite rounds the FULLY_CONNECTED output to).
  steps = (grid.astype(np.float64) - grid.min()) / (8.0 / 255.0)
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
  assert len(np.unique(grid)) <= 256 and np.abs(grid).max() <= 4.0 + 8.0 / 255.0
  outputs = layer(x).numpy()
  np.testing.assert_allclose(outputs, tf.sigmoid(grid).numpy(), rtol=0, atol=1e-6)
  # ... and not the sigmoid of the float pre-activation.
  assert np.abs(outputs - tf.sigmoid(preactivation).numpy()).max() > 1e-3


def test_config_round_trip_keeps_the_preactivation_quantizer():
  layer = _sigmoid_layer_with_preactivation_grid()
  config = layer.get_config()
  assert config["preactivation_quantizer"] == Q.serialize(Q.FixedRangeQuantizer(8, -4.0, 4.0))
  clone = QuantizedDense.from_config(config)
  assert clone.preactivation_quantizer == Q.activation_input_quantizer("sigmoid")
  assert clone.get_config() == config
  clone.build((None, 6))
  clone.set_weights(layer.get_weights())
  x = np.random.default_rng(5).uniform(-1, 1, (50, 6)).astype(np.float32)
  np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
  # A whole model with the layer reloads from its config with the same quantizer.
  inputs = keras.Input((6,))
  model = keras.Model(inputs, layer(inputs))
  reloaded = keras.Model.from_config(model.get_config())
  assert reloaded.layers[-1].preactivation_quantizer == layer.preactivation_quantizer
