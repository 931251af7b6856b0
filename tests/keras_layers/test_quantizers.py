"""Tests for keras_layers.quantizers: grids, straight-through gradients, serialization."""
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import quantizers as Q


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32)


def test_max_abs_per_tensor_grid():
  w = _random((6, 5))
  q = Q.MaxAbsQuantizer(8)
  codes = q.codes(w).numpy()
  scale = float(np.max(np.abs(w))) / 127
  np.testing.assert_array_equal(codes, np.round(w / scale))
  assert np.abs(codes).max() == 127
  np.testing.assert_allclose(q(w).numpy(), codes * scale, rtol=1e-6)


def test_max_abs_per_channel_has_one_scale_per_output_unit():
  w = _random((6, 5)) * np.arange(1, 6, dtype=np.float32)  # columns of different sizes
  q = Q.MaxAbsQuantizer(8, axis=-1)
  np.testing.assert_allclose(q.scale(w).numpy().ravel(), np.abs(w).max(axis=0) / 127, rtol=1e-6)
  assert np.all(np.abs(q.codes(w).numpy()).max(axis=0) == 127)


def test_max_abs_splits_quantizes_each_gate_block_on_its_own():
  units = 3
  w = _random((4, 4 * units)) * np.repeat([1.0, 2.0, 3.0, 4.0], units).astype(np.float32)
  gates = Q.MaxAbsQuantizer(8, splits=4)(w).numpy()
  per_tensor = Q.MaxAbsQuantizer(8)
  for g in range(4):
    block = w[:, g * units:(g + 1) * units]
    np.testing.assert_allclose(gates[:, g * units:(g + 1) * units], per_tensor(block).numpy(),
                               rtol=1e-6)


def test_max_abs_all_zero_block_stays_zero():
  w = np.zeros((3, 8), np.float32)
  w[:, :2] = 0.5
  out = Q.MaxAbsQuantizer(8, splits=4)(w).numpy()
  np.testing.assert_array_equal(out, w)


def test_max_abs_gradient_is_identity():
  w = tf.Variable(_random((4, 8)))
  upstream = _random((4, 8), seed=1)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(Q.MaxAbsQuantizer(8, splits=2)(w) * upstream)
  np.testing.assert_allclose(tape.gradient(loss, w).numpy(), upstream)


def test_fixed_range_grid_and_saturation():
  x = np.linspace(-1.5, 1.5, 301).astype(np.float32)
  y = Q.FixedRangeQuantizer(8, -1.0, 1.0)(x).numpy()
  step = 2.0 / 255
  codes = y / step
  np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
  assert len(np.unique(np.round(codes))) <= 256
  # The nudged [-1, 1] range is codes -127..128 of 2/255 (TFLite's zero point -1).
  assert np.round(codes).min() == -127 and np.round(codes).max() == 128
  assert np.abs(y - np.clip(x, -1, 1)).max() <= step / 2 + 1e-6


def test_fixed_range_straight_through_inside_zero_outside():
  x = tf.constant([-1.4, -0.7, 0.0, 0.33, 0.9, 1.3])
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = Q.FixedRangeQuantizer(8, -1.0, 1.0)(x)
  grad = tape.gradient(y, x).numpy()
  np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 0])


@pytest.mark.parametrize("activation,bits,scale,lo,hi", [
    ("tanh", 8, 1 / 128, -128, 127),
    ("sigmoid", 8, 1 / 256, 0, 255),
    ("sigmoid", 16, 1 / 32768, 0, 32767),
])
def test_activation_output_grids_are_tflite_fixed_grids(activation, bits, scale, lo, hi):
  fn = tf.tanh if activation == "tanh" else tf.sigmoid
  x = tf.linspace(-12.0, 12.0, 2001)
  y = Q.activation_output_quantizer(activation, bits)(fn(x)).numpy().astype(np.float64)
  codes = y / scale
  np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
  assert np.round(codes).min() == lo and np.round(codes).max() == hi


def test_activation_output_quantizer_rejects_unknown_activation():
  with pytest.raises(ValueError, match="relu"):
    Q.activation_output_quantizer("relu")


@pytest.mark.parametrize("quantizer", [
    Q.MaxAbsQuantizer(8, axis=-1), Q.MaxAbsQuantizer(6, splits=4),
    Q.FixedRangeQuantizer(16, -2.0, 2.0, narrow_range=True), None])
def test_serialize_round_trip(quantizer):
  restored = Q.deserialize(Q.serialize(quantizer))
  assert restored == quantizer
  assert Q.get(Q.serialize(quantizer)) == quantizer


def test_deserialize_unknown_name_fails():
  with pytest.raises(ValueError, match="unknown quantizer"):
    Q.deserialize({"class_name": "Nope", "config": {}})


@pytest.mark.parametrize("activation,limit", [("tanh", 2.0), ("sigmoid", 4.0)])
def test_activation_input_quantizer_is_a_fixed_symmetric_int8_range(activation, limit):
  quantizer = Q.activation_input_quantizer(activation)
  assert quantizer == Q.FixedRangeQuantizer(8, -limit, limit)
  x = tf.linspace(-3.0 * limit, 3.0 * limit, 4001)
  y = quantizer(x).numpy().astype(np.float64)
  codes = (y - y.min()) / (2.0 * limit / 255.0)
  np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
  assert len(np.unique(np.round(codes))) == 256  # the whole int8 grid is used, then saturates
  assert y.min() == pytest.approx(-limit, abs=2.0 * limit / 255.0)
  assert y.max() == pytest.approx(limit, abs=2.0 * limit / 255.0)


def test_activation_input_quantizer_rejects_unknown_activation():
  with pytest.raises(ValueError, match="relu"):
    Q.activation_input_quantizer("relu")
