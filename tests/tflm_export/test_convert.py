"""int8 conversion: fused LSTMs, integer-only tensors, the quantization grid, refusals."""
import numpy as np
import pytest
import tf_keras as keras

from tflm_export import convert
from tflm_export import tflite_graph


def test_conversion_fuses_each_lstm_with_int8_io(int8_bytes):
  graph = tflite_graph.read_graph(int8_bytes)
  names = graph.op_names()
  assert names.count(convert.FUSED_LSTM) == 2
  assert "WHILE" not in names and graph.num_subgraphs == 1
  assert graph.inputs[0].dtype == "INT8" and graph.outputs[0].dtype == "INT8"
  assert graph.inputs[0].shape == (1, 1, 128)
  # The recurrent state lives in variable tensors (hidden int8, cell int16) per layer.
  assert sorted(t.dtype for t in graph.tensors if t.is_variable) == ["INT16"] * 2 + ["INT8"] * 2
  assert all(t.dtype in convert.INTEGER_TYPES for t in graph.activation_tensors())


def test_quantization_grid_of_lstm_and_dense(int8_bytes):
  """Pins down the grid QAT must reproduce (see the convert module docstring)."""
  graph = tflite_graph.read_graph(int8_bytes)
  for op in graph.operators:
    if op.name == convert.FUSED_LSTM:
      data_input = op.inputs[0]
      weights = [t for t in op.inputs[1:9]]
      assert all(t.dtype == "INT8" and len(t.scales) == 1 and t.zero_points == (0,)
                 for t in weights)  # per-tensor, symmetric, one matrix per gate
      biases = [t for t in op.inputs[12:16]]
      for bias, w in zip(biases, weights[:4]):
        assert bias.dtype == "INT32"
        assert bias.scales[0] == pytest.approx(data_input.scales[0] * w.scales[0], rel=1e-5)
      cell = [t for t in op.inputs if t is not None and t.is_variable and t.dtype == "INT16"][0]
      assert np.log2(cell.scales[0]) == pytest.approx(round(np.log2(cell.scales[0])))
    if op.name == "FULLY_CONNECTED":
      w = op.inputs[1]
      assert w.dtype == "INT8" and len(w.scales) == w.shape[0]  # per output channel
      assert set(w.zero_points) == {0}


def test_unsupported_op_is_listed():
  inputs = keras.Input(batch_shape=(1, 1, 16))
  x = keras.layers.LSTM(8, return_sequences=True, stateful=True)(inputs)
  outputs = keras.layers.Dense(16, activation="gelu")(x)
  model = keras.Model(inputs, outputs)
  features = np.random.default_rng(0).uniform(0.0, 2.0, (40, 16)).astype(np.float32)
  with pytest.raises(convert.ConversionError, match="GELU"):
    convert.convert_to_int8(model, features)


def test_non_streaming_model_is_refused():
  inputs = keras.Input(shape=(None, 16))
  outputs = keras.layers.LSTM(8, return_sequences=True)(inputs)
  with pytest.raises(convert.ConversionError, match="streaming"):
    convert.convert_to_int8(keras.Model(inputs, outputs), np.ones((4, 16), np.float32))


@pytest.mark.parametrize("features", [np.ones((10, 15), np.float32),
                                      np.full((10, 128), np.nan, np.float32), []])
def test_bad_representative_features_are_refused(streaming_model, features):
  with pytest.raises(convert.ConversionError):
    convert.convert_to_int8(streaming_model, features)


def test_16x8_mode_is_refused_for_the_fused_lstm(streaming_model, utterances):
  """The installed converter has no 16x8 fused LSTM; the failure must be explicit."""
  with pytest.raises(convert.ConversionError, match="16x8"):
    convert.convert_to_int8(streaming_model, utterances[1][:20], int16_activations=True)


def test_stateless_copy_keeps_weights_and_drops_state(streaming_model):
  copy = convert.stateless_copy(streaming_model)
  assert not any(getattr(layer, "stateful", False) for layer in copy.layers)
  for a, b in zip(copy.get_weights(), streaming_model.get_weights()):
    np.testing.assert_array_equal(a, b)
