"""Unrolled training recurrence: the same outputs and gradients as the loop, only where it is
meant to apply (training, static and short sequences), and layers that stay tf_keras LSTMs."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

from keras_layers import unrolling
from keras_layers.quantized_lstm import QuantizedLSTM
from keras_layers.sparse_lstm import SparseLSTM
from keras_layers.unrolling import UnrollingLSTM

FEATURES, UNITS, FRAMES = 12, 8, 20


def _inputs(frames=FRAMES, batch=3, seed=0):
  return tf.constant(np.random.default_rng(seed).normal(size=(batch, frames, FEATURES)),
                     tf.float32)


def _built_pair(make_reference, make_candidate):
  """Two layers with the same random weights (biases included)."""
  reference, candidate = make_reference(), make_candidate()
  reference.build((None, None, FEATURES))
  candidate.build((None, None, FEATURES))
  rng = np.random.default_rng(1)
  weights = [rng.normal(0, 0.4, w.shape).astype(np.float32) for w in reference.get_weights()]
  reference.set_weights(weights)
  candidate.set_weights(weights)
  return reference, candidate


def _graph_op_types(layer, inputs, training):
  """The op types of a traced training forward and backward pass of `layer` on `inputs`."""

  @tf.function
  def forward_backward(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(layer(x, training=training)))
    return tape.gradient(loss, layer.trainable_variables)

  return _op_types(forward_backward.get_concrete_function(
      tf.TensorSpec(inputs.shape, tf.float32)))


def _op_types(concrete_function):
  """The op types of a traced function and of every function it calls (tf_keras runs its LSTM
  loop inside a function of its own)."""
  graph_def = concrete_function.graph.as_graph_def()
  types = {node.op for node in graph_def.node}
  for function in graph_def.library.function:
    types.update(node.op for node in function.node_def)
  return types


def _loops(op_types):
  return bool(op_types & {"While", "StatelessWhile"})


def _outputs_and_gradients(layer, inputs):
  @tf.function
  def run(x):
    with tf.GradientTape() as tape:
      outputs = layer(x, training=True)
      loss = tf.reduce_sum(tf.square(outputs - 0.1))
    return outputs, tape.gradient(loss, layer.trainable_variables)

  outputs, gradients = run(inputs)
  return outputs.numpy(), [g.numpy() for g in gradients]


@pytest.mark.parametrize("options", [
    {"return_sequences": True}, {"return_sequences": False},
    {"return_sequences": True, "go_backwards": True}])
def test_unrolling_lstm_equals_the_tf_keras_lstm_outputs_and_gradients(options):
  reference, candidate = _built_pair(lambda: keras.layers.LSTM(UNITS, **options),
                                     lambda: UnrollingLSTM(UNITS, **options))
  inputs = _inputs()
  assert not _loops(_graph_op_types(candidate, inputs, training=True))
  assert _loops(_graph_op_types(reference, inputs, training=True))
  expected, expected_gradients = _outputs_and_gradients(reference, inputs)
  outputs, gradients = _outputs_and_gradients(candidate, inputs)
  np.testing.assert_allclose(outputs, expected, atol=1e-6)
  for got, want in zip(gradients, expected_gradients):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Not training: tf_keras's own call, and the same numbers.
  np.testing.assert_allclose(candidate(inputs).numpy(), reference(inputs).numpy(), atol=1e-6)
  assert not candidate.unroll  # the flag is back


@pytest.mark.parametrize("layer_class", [UnrollingLSTM, QuantizedLSTM, SparseLSTM])
def test_unrolled_lstms_multiply_the_inputs_of_all_frames_at_once(layer_class):
  # One input product for the sequence and one recurrent product per frame (tf_keras's cell
  # multiplies the input inside each step: two products per frame).
  layer = layer_class(UNITS, return_sequences=True)
  layer.build((None, None, FEATURES))

  @tf.function
  def forward(x):
    return layer(x, training=True)

  graph = forward.get_concrete_function(tf.TensorSpec((3, FRAMES, FEATURES))).graph
  products = [node for node in graph.as_graph_def().node if node.op == "MatMul"]
  assert len(products) == FRAMES + 1


@pytest.mark.parametrize("layer_class", [QuantizedLSTM, SparseLSTM])
def test_quantized_and_sparse_lstms_unroll_to_the_same_numbers(layer_class, monkeypatch):
  layer = layer_class(UNITS, return_sequences=True)
  layer.build((None, None, FEATURES))
  inputs = _inputs(seed=2)
  assert not _loops(_graph_op_types(layer, inputs, training=True))
  unrolled, unrolled_gradients = _outputs_and_gradients(layer, inputs)
  monkeypatch.setattr(unrolling, "MAX_UNROLLED_FRAMES", FRAMES - 1)
  assert _loops(_graph_op_types(layer, inputs, training=True))
  looped, looped_gradients = _outputs_and_gradients(layer, inputs)
  np.testing.assert_allclose(unrolled, looped, atol=1e-6)
  for got, want in zip(unrolled_gradients, looped_gradients):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer_class", [UnrollingLSTM, QuantizedLSTM])
def test_only_short_static_training_sequences_unroll(layer_class):
  layer = layer_class(UNITS, return_sequences=True)
  layer.build((None, None, FEATURES))
  limit = unrolling.MAX_UNROLLED_FRAMES
  assert not _loops(_graph_op_types(layer, _inputs(frames=limit), training=True))
  assert _loops(_graph_op_types(layer, _inputs(frames=limit + 1), training=True))
  assert _loops(_graph_op_types(layer, _inputs(), training=False))

  @tf.function(input_signature=[tf.TensorSpec([None, None, FEATURES], tf.float32)])
  def any_length(x):
    return layer(x, training=True)

  assert _loops(_op_types(any_length.get_concrete_function()))
  np.testing.assert_allclose(any_length(_inputs()).numpy(),
                             layer(_inputs(), training=True).numpy(), atol=1e-6)


def test_stateful_layers_keep_the_loop():
  layer = UnrollingLSTM(UNITS, return_sequences=True, stateful=True)
  inputs = _inputs(frames=1, batch=1)
  layer(inputs)
  assert not unrolling.unrolls(layer, inputs, training=True)


def test_unrolled_restores_the_flag_after_an_error():
  layer = QuantizedLSTM(UNITS)
  with pytest.raises(RuntimeError):
    with unrolling.unrolled(layer):
      assert layer.unroll
      raise RuntimeError("boom")
  assert not layer.unroll


def test_unrolling_lstm_has_the_weight_names_of_a_tf_keras_lstm():
  # What checkpoints, .h5 weights and model.copy_weights go by.
  def names(layer_class):
    inputs = keras.Input((None, FEATURES))
    model = keras.Model(inputs, layer_class(UNITS, return_sequences=True, name="lstm_0")(inputs))
    return [w.name for w in model.weights]

  assert names(UnrollingLSTM) == names(keras.layers.LSTM)


def test_unrolling_lstm_round_trips_its_config_and_stays_an_lstm():
  layer = UnrollingLSTM(UNITS, return_sequences=True, name="lstm_0")
  clone = keras.layers.deserialize(keras.layers.serialize(layer))
  assert type(clone) is UnrollingLSTM and clone.units == UNITS and clone.return_sequences
  assert isinstance(layer, keras.layers.LSTM)  # what the export and tfmot code look for


def test_tfmot_prunes_the_kernel_and_recurrent_kernel():
  inputs = keras.Input((FRAMES, FEATURES))
  layer = UnrollingLSTM(UNITS, return_sequences=True)
  wrapped = tfmot.sparsity.keras.prune_low_magnitude(
      layer, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
  model = keras.Model(inputs, wrapped(inputs))
  pruned = [weight.name for weight, _, _ in model.layers[-1].pruning_vars]
  assert [name.split("/")[-1] for name in pruned] == ["kernel:0", "recurrent_kernel:0"]
  model.layers[-1].pruning_step.assign(0)  # what tfmot's UpdatePruningStep does first
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(_inputs(), training=True))
  assert all(g is not None for g in tape.gradient(loss, layer.trainable_variables))
