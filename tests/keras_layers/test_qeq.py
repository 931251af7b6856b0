import numpy as np
import tensorflow as tf
import tf_keras as keras

from keras_layers.qeq import QEQ


def test_output_is_gain_times_input_plus_bias_per_band():
  layer = QEQ()
  x = np.random.default_rng(0).uniform(0, 3, (2, 5, 4)).astype(np.float32)
  layer.build(x.shape)
  gain, bias = np.array([1.0, 2.0, 0.5, -1.0], np.float32), np.array([0.0, -1.0, 0.2, 3.0],
                                                                       np.float32)
  layer.set_weights([gain, bias])
  np.testing.assert_allclose(layer(x).numpy(), x * gain + bias, rtol=1e-6)


def test_starts_as_identity():
  x = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)
  np.testing.assert_array_equal(QEQ()(x).numpy(), x)


def test_gradient_flows_to_gain_bias_and_input():
  layer = QEQ()
  x = tf.Variable(np.random.default_rng(2).uniform(0.5, 2, (2, 6, 3)).astype(np.float32))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(layer(x)))
  grad_gain, grad_bias, grad_x = tape.gradient(loss, [layer.gain, layer.bias, x])
  # d/dg sum((g x + b)^2) = sum(2 (g x + b) x) over batch and time, per band.
  np.testing.assert_allclose(grad_gain.numpy(), np.sum(2 * x.numpy() * x.numpy(), axis=(0, 1)),
                             rtol=1e-5)
  np.testing.assert_allclose(grad_bias.numpy(), np.sum(2 * x.numpy(), axis=(0, 1)), rtol=1e-5)
  assert np.all(grad_x.numpy() != 0)


def test_config_round_trip_in_a_saved_model_config():
  inputs = keras.Input(shape=(None, 4))
  model = keras.Model(inputs, QEQ(gain_initializer="zeros", name="qeq")(inputs))
  clone = keras.Model.from_config(model.get_config(), custom_objects={"QEQ": QEQ})
  assert isinstance(clone.get_layer("qeq"), QEQ)
  np.testing.assert_array_equal(clone.get_layer("qeq").gain.numpy(), np.zeros(4))
