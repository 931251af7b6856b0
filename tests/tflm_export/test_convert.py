"""int8 conversion: fused LSTMs, integer-only tensors, the quantization grid, refusals."""
import numpy as np
import pytest
import tf_keras as keras
from tensorflow.lite.python import schema_py_generated as schema

from tflm_export import convert
from tflm_export import export_model
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


# --- All-zero weight blocks (what pruning produces) through convert → pin → TFLM ---------------
# A QAT model (LSTM 32x2, Dense 32) with: the whole input kernel of lstm_0's input gate zero (its
# biases ±1.5, the gate then works from its bias and recurrent input alone; or 0), the whole recurrent
# kernel of lstm_1's forget gate zero, lstm_1's unit 5 fully zero (4 gate columns of both kernels
# and its 4 biases), dense_0's output channel 3 kernel column zero (bias kept) and channel 4
# column and bias zero, and the mask layer's channel 7 kernel column zero (bias kept).
# QAT's MaxAbsQuantizer gives such a block scale 1 (any scale gives code 0).
ZERO_UNITS = 32
ZERO_LSTM_UNIT = 5
DENSE_ZERO_CHANNELS = {"dense_0": (3, 4), "mask": (7,)}


@pytest.fixture(scope="module")
def zero_block_data():
  """(representative features, test features): real training and test mixtures."""
  from tests.tflm_export import test_export_model as tem  # pylint: disable=g-import-not-at-top
  from tf_tinyse import data, demo_data  # pylint: disable=g-import-not-at-top
  corpus = data.discover_corpus(demo_data.path())
  return ([tem._features(e.noisy, tem.QAT_CONFIG)  # pylint: disable=protected-access
           for e in data.make_evaluation_set(corpus, "train", seed=0, max_files=3)],
          [tem._features(e.noisy, tem.QAT_CONFIG)  # pylint: disable=protected-access
           for e in data.make_evaluation_set(corpus, "test", seed=0, max_files=2)])


def _zero_block_case(zero_block_data, input_gate_bias):
  """(QAT streaming model with the zero blocks, its front-end, int8 bytes, test features)."""
  from tests.tflm_export import test_export_model as tem  # pylint: disable=g-import-not-at-top
  from tf_tinyse import model as model_lib  # pylint: disable=g-import-not-at-top
  from tflm_export import export_model, frontend  # pylint: disable=g-import-not-at-top
  representative, test_features = zero_block_data
  keras.utils.set_random_seed(0)
  model = model_lib.build_mask_model(tem.QAT_CONFIG, streaming=True)
  tem._randomize(model, representative)  # pylint: disable=protected-access
  u = ZERO_UNITS
  lstm_0 = model.get_layer("lstm_0")
  kernel, recurrent, bias = lstm_0.get_weights()
  kernel[:, 0:u] = 0.0  # input gate i: no input weights at all
  bias[0:u] = np.where(np.arange(u) % 2, input_gate_bias, -input_gate_bias)
  lstm_0.set_weights([kernel, recurrent, bias])
  lstm_1 = model.get_layer("lstm_1")
  kernel, recurrent, bias = lstm_1.get_weights()
  recurrent[:, u:2 * u] = 0.0  # forget gate f: no recurrent weights
  columns = [gate * u + ZERO_LSTM_UNIT for gate in range(4)]
  kernel[:, columns] = recurrent[:, columns] = bias[columns] = 0.0  # unit 5 gone
  lstm_1.set_weights([kernel, recurrent, bias])
  for name, channels in DENSE_ZERO_CHANNELS.items():
    layer = model.get_layer(name)
    kernel, bias = layer.get_weights()
    kernel[:, list(channels)] = 0.0
    if name == "dense_0":
      bias[4] = 0.0  # channel 4: a fully pruned unit; channel 3 keeps its bias
    layer.set_weights([kernel, bias])
  tflite_bytes = export_model.convert_trained_model(model, tem.QAT_CONFIG, representative)
  return (model, frontend.Frontend.from_model(model, tem.QAT_CONFIG.feature), tflite_bytes,
          test_features)


@pytest.fixture(scope="module")
def zero_block_case(zero_block_data):
  return _zero_block_case(zero_block_data, input_gate_bias=1.5)


@pytest.fixture(scope="module")
def zero_block_case_unbiased(zero_block_data):
  return _zero_block_case(zero_block_data, input_gate_bias=0.0)


def _constant(tflite_bytes, tensor):
  """The integer codes of a constant tensor (weights, bias) of the model."""
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0))
  t = model.subgraphs[0].tensors[tensor.index]
  dtype = {"INT8": "<i1", "INT32": "<i4"}[tensor.dtype]
  return np.frombuffer(bytes(bytearray(model.buffers[t.buffer].data)), dtype).reshape(
      tensor.shape)


def test_all_zero_weight_blocks_convert_to_zero_codes_with_positive_scales(zero_block_case):
  model, _, tflite_bytes, _ = zero_block_case
  graph = convert.check_tflm_integer(tflite_bytes, 2)  # conversion and pinning succeeded
  lstm_0, lstm_1 = [op for op in graph.operators if op.name == convert.FUSED_LSTM]
  # Fused LSTM inputs 1-4: input-to-{i,f,c,o} weights, 5-8 recurrent-to-{i,f,c,o}, [units, in].
  for op, position in ((lstm_0, 1), (lstm_1, 6)):
    weights = op.inputs[position]
    assert len(weights.scales) == 1
    scale = weights.scales[0]
    # Measured (TF 2.21): the converter gives an all-zero gate matrix scale 3.937e-9 (5e-7/127),
    # not QAT's 1; the other gate matrices ~1.2e-3 to 2.6e-3. An all-zero *input* matrix (which
    # sets its gate bias's scale) gets export_model.ZERO_GATE_WEIGHT_SCALE instead.
    assert np.isfinite(scale) and scale > 0, scale
    if position == 1:
      assert scale == pytest.approx(export_model.ZERO_GATE_WEIGHT_SCALE)
    np.testing.assert_array_equal(_constant(tflite_bytes, weights), 0)
  for position in range(1, 9):  # unit 5 of lstm_1: its row of every gate matrix is zero
    weights = lstm_1.inputs[position]
    codes = _constant(tflite_bytes, weights)
    np.testing.assert_array_equal(codes[ZERO_LSTM_UNIT], 0)
    assert np.isfinite(weights.scales[0]) and weights.scales[0] > 0
    if position != 6:
      assert np.abs(codes).max() == 127  # the other units keep the max-abs scale of the gate
  for position in range(12, 16):
    np.testing.assert_array_equal(_constant(tflite_bytes, lstm_1.inputs[position])[
        ZERO_LSTM_UNIT], 0)
  dense_ops = [op for op in graph.operators if op.name == "FULLY_CONNECTED"]
  for op, (name, channels) in zip(dense_ops, DENSE_ZERO_CHANNELS.items()):
    weights, bias = op.inputs[1], op.inputs[2]
    codes = _constant(tflite_bytes, weights)  # [out, in], one scale per output channel
    scales = np.asarray(weights.scales)
    assert np.all(np.isfinite(scales)) and np.all(scales > 0), scales
    float_bias = model.get_layer(name).get_weights()[1]
    bias_values = _constant(tflite_bytes, bias) * np.asarray(bias.scales, np.float64)
    for channel in channels:
      np.testing.assert_array_equal(codes[channel], 0)
      # Measured: a zero channel gets a tiny scale, 3.9e-9 (5e-7/127) where its bias is 0, else
      # raised so that the bias is code +-2^30 (dense_0 channel 3: 1.9e-8 for the bias -0.069;
      # mask channel 7: 9.4e-9): the converter's bias-overflow guard keeps Dense biases exact.
      np.testing.assert_allclose(bias_values[channel], float_bias[channel], atol=1e-6)
    others = [c for c in range(codes.shape[0]) if c not in channels]
    assert np.all(np.abs(codes[others]).max(axis=1) == 127)


def test_zero_blocks_run_in_tflm_like_keras_qat(zero_block_case_unbiased):
  """Zero Dense channels, a zero unit, a zero recurrent gate matrix and a zero input gate matrix
  whose biases are 0: TFLM equals the Keras QAT model within the usual tolerance."""
  from tests.tflm_export import test_export_model as tem  # pylint: disable=g-import-not-at-top
  from tflm_export import tflm_runner  # pylint: disable=g-import-not-at-top
  model, fe, tflite_bytes, test_features = zero_block_case_unbiased
  err = tem._mask_errors_lsb(tflm_runner.TflmModel(tflite_bytes), fe, model,  # pylint: disable=protected-access
                             test_features)
  assert err.size > 1500 * tem.QAT_CONFIG.feature.num_bands
  # Measured: mean 0.047, 99th percentile 2, max 2 LSB (the same model without zero blocks: mean
  # 0.04, test_export_model).
  assert err.mean() < 0.5, err.mean()
  assert np.percentile(err, 99) <= tem.TOLERANCE_LSB, np.percentile(err, 99)


def test_all_zero_gate_block_keeps_its_bias_and_tflm_matches_keras_qat(zero_block_case):
  from tests.tflm_export import test_export_model as tem  # pylint: disable=g-import-not-at-top
  from tflm_export import tflm_runner  # pylint: disable=g-import-not-at-top
  model, fe, tflite_bytes, test_features = zero_block_case
  lstm_0 = next(op for op in tflite_graph.read_graph(tflite_bytes).operators
                if op.name == convert.FUSED_LSTM)
  bias = lstm_0.inputs[12]  # input gate bias, int32 at input scale x input-gate weight scale
  stored = _constant(tflite_bytes, bias) * np.float64(bias.scales[0])
  want = model.get_layer("lstm_0").get_weights()[2][:ZERO_UNITS]
  err = tem._mask_errors_lsb(tflm_runner.TflmModel(tflite_bytes), fe, model,  # pylint: disable=protected-access
                             test_features)
  # Before export_model.repair_zero_gate_matrices: the stored biases were +-0.066 instead of
  # +-1.5 (every code saturated at +-(2^31 - 1)) and TFLM was off by mean 0.80, 99th percentile
  # 4, max 6 LSB; the converter had given the all-zero matrix the scale 3.9e-9.
  np.testing.assert_allclose(stored, want, atol=float(bias.scales[0]))
  assert err.mean() < 0.5, err.mean()
  assert np.percentile(err, 99) <= tem.TOLERANCE_LSB, np.percentile(err, 99)


def test_a_bias_that_does_not_fit_int32_is_refused_not_clipped(zero_block_case):
  _, _, tflite_bytes, _ = zero_block_case
  fb = export_model._Flatbuffer(tflite_bytes)  # pylint: disable=protected-access
  lstm = next(op for op, code in zip(fb.ops, fb.codes) if code == export_model._LSTM)  # pylint: disable=protected-access
  bias = int(lstm.inputs[12])
  codes = fb.constant_codes(bias, "<i4")
  with pytest.raises(convert.ConversionError, match="does not fit int32"):
    fb.set_bias(bias, np.full(codes.shape, 1.0), [1e-12])
  with pytest.raises(convert.ConversionError, match="does not fit int32"):
    fb.requantize_bias(bias, 1e-20)
