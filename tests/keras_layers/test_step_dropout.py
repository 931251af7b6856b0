"""StepDropout: inverted dropout in training only, with masks that are a function of the seed
its trainer attaches (so a resumed run draws the same masks) and of the layer."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from keras_layers.step_dropout import StepDropout

SHAPE = (4, 50, 64)


def _seeded(rate, name, seed_value, step):
  layer = StepDropout(rate, name=name)
  layer.use_seed(lambda: tf.stack([tf.constant(seed_value, tf.int64), step]))
  return layer


def test_outside_training_the_input_passes_unchanged():
  x = tf.random.stateless_normal(SHAPE, seed=[0, 1])
  layer = _seeded(0.5, "d", 0, tf.Variable(0, dtype=tf.int64))
  for training in (None, False):
    np.testing.assert_array_equal(layer(x, training=training).numpy(), x.numpy())


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_drops_about_rate_and_scales_the_kept_values(rate):
  x = tf.ones(SHAPE)
  y = _seeded(rate, "d", 3, tf.Variable(7, dtype=tf.int64))(x, training=True).numpy()
  kept = y != 0
  # 12,800 draws: the dropped fraction is within 0.02 of the rate (>5 standard deviations).
  assert abs((1 - kept.mean()) - rate) < 0.02
  np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)
  assert abs(y.mean() - 1) < 0.05  # the expected value is kept


def test_the_mask_follows_the_seed_and_the_step_and_differs_between_layers():
  x = tf.ones(SHAPE)
  step = tf.Variable(0, dtype=tf.int64)
  first = _seeded(0.5, "dropout_0", 0, step)
  again = first(x, training=True).numpy()
  np.testing.assert_array_equal(first(x, training=True).numpy(), again)
  # A new layer object with the same name and seed (a resumed run) draws the same mask.
  np.testing.assert_array_equal(_seeded(0.5, "dropout_0", 0, step)(x, training=True).numpy(),
                                again)
  other_layer = _seeded(0.5, "dropout_1", 0, step)(x, training=True).numpy()
  other_seed = _seeded(0.5, "dropout_0", 1, step)(x, training=True).numpy()
  step.assign_add(1)
  next_step = first(x, training=True).numpy()
  for other in (other_layer, other_seed, next_step):
    # Independent masks of rate 0.5 agree on about half the values.
    assert 0.4 < np.mean((other != 0) == (again != 0)) < 0.6


def test_the_step_moves_the_mask_inside_a_traced_function():
  step = tf.Variable(0, dtype=tf.int64)
  layer = _seeded(0.5, "d", 0, step)
  traced = tf.function(lambda x: layer(x, training=True))
  x = tf.ones(SHAPE)
  a = traced(x).numpy()
  step.assign_add(1)
  b = traced(x).numpy()
  step.assign(0)
  np.testing.assert_array_equal(traced(x).numpy(), a)
  assert not np.array_equal(a, b)


def test_without_a_seed_it_still_drops():
  y = StepDropout(0.5)(tf.ones(SHAPE), training=True).numpy()
  assert 0.45 < np.mean(y == 0) < 0.55


def test_gradient_flows_through_kept_values_only():
  x = tf.Variable(tf.ones(SHAPE))
  layer = _seeded(0.3, "d", 0, tf.Variable(0, dtype=tf.int64))
  with tf.GradientTape() as tape:
    y = layer(x, training=True)
    loss = tf.reduce_sum(y)
  grad = tape.gradient(loss, x).numpy()
  kept = y.numpy() != 0
  np.testing.assert_allclose(grad[kept], 1 / 0.7, rtol=1e-6)
  assert (grad[~kept] == 0).all()


def test_config_round_trip_and_rate_validation():
  layer = StepDropout(0.2, name="d")
  clone = StepDropout.from_config(layer.get_config())
  assert clone.rate == 0.2 and clone.name == "d"
  model = keras.Sequential([keras.Input((None, 3)), StepDropout(0.2)])
  assert model.output_shape == (None, None, 3) and not model.weights
  for rate in (-0.1, 1.0):
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
      StepDropout(rate)


# Runs in a fresh interpreter: logical devices must be configured before TF initializes.
_REPLICAS_SCRIPT = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from keras_layers.step_dropout import StepDropout
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    layer = StepDropout(0.5, name="d")
    layer.use_seed(lambda: tf.constant([0, 3], tf.int64))
    run = tf.function(lambda: strategy.run(lambda: layer(tf.ones([4, 50, 64]), training=True)))
    first, second = (v.numpy() for v in strategy.experimental_local_results(run()))
    again = strategy.experimental_local_results(run())[0].numpy()
    print("AGREE", np.mean((first != 0) == (second != 0)), np.array_equal(first, again))
""")


def test_replicas_draw_different_masks_each_the_same_every_time():
  proc = subprocess.run([sys.executable, "-c", _REPLICAS_SCRIPT], capture_output=True,
                        text=True, timeout=120,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  agree, same = proc.stdout.split("AGREE ", 1)[1].split()
  # Independent masks of rate 0.5 agree on about half the values; one replica's is repeatable.
  assert 0.4 < float(agree) < 0.6 and same == "True"
