"""Export model: forward weights, the QAT grids pinned in the .tflite, TFLM equal to Keras QAT.

A small QAT model (QEQ, LSTM 32x2, Dense 32) with random weights, non-zero biases and a QEQ that
standardizes real features, converted with representative frames of real training mixtures and
compared with the Keras QAT streaming model over whole real test utterances. QEQ is not in the
int8 model: it runs in the front-end (`tflm_export.frontend`), so TFLM is fed
`frontend.model_input(features)` and the Keras model the features themselves.
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from keras_layers import quantizers
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import features
from tf_tinyse import model as model_lib
from tflm_export import convert
from tflm_export import export_model
from tflm_export import frontend
from tflm_export import tflite_graph
from tflm_export import tflm_runner

QAT_CONFIG = model_lib.ModelConfig(lstm_units=(32, 32), dense_units=(32,), quantize=True)
QAT_GRID = (np.float32(2.0) / np.float32(255.0), -1)
# The Dense pre-activation grids (`quantizers.activation_input_quantizer`): tanh [-2, 2], sigmoid
# [-4, 4], zero point as the fake-quant op nudges it.
TANH_INPUT_GRID = export_model.quantizer_int8_params(quantizers.FixedRangeQuantizer(8, -2.0, 2.0))
SIGMOID_INPUT_GRID = export_model.quantizer_int8_params(
    quantizers.FixedRangeQuantizer(8, -4.0, 4.0))
# The stated agreement of TFLM int8 with the Keras QAT model, in output LSBs (1/256): 99 % of the
# mask values within this, mean below half an LSB.
TOLERANCE_LSB = 2.0


def _features(wave, config):
  spectra = features.stft(np.asarray(wave, np.float32)[None], config.feature)
  return features.mel_features(spectra, config.feature).numpy()[0]


@pytest.fixture(scope="module")
def corpus():
  return data.discover_corpus(demo_data.path())


@pytest.fixture(scope="module")
def representative(corpus):
  examples = data.make_evaluation_set(corpus, "train", seed=0, max_files=3)
  return [_features(e.noisy, QAT_CONFIG) for e in examples]


@pytest.fixture(scope="module")
def test_utterances(corpus):
  """Two whole real test mixtures (~900 frames each)."""
  examples = data.make_evaluation_set(corpus, "test", seed=0, max_files=2)
  return [_features(e.noisy, QAT_CONFIG) for e in examples]


def _randomize(model, representative):
  """QEQ standardizes real features (as training starts); biases non-zero (as trained)."""
  frames = np.concatenate(representative)
  mean, std = frames.mean(axis=0), frames.std(axis=0) + 1e-3
  model.get_layer("qeq").set_weights([1.0 / std, -mean / std])
  rng = np.random.default_rng(1)
  for layer in model.layers:
    weights = layer.get_weights()
    if layer.name != "qeq" and len(weights) >= 2:
      weights[-1] = rng.normal(0.0, 0.3, weights[-1].shape).astype(np.float32)
      layer.set_weights(weights)


@pytest.fixture(scope="module")
def qat_model(representative):
  keras.utils.set_random_seed(0)
  model = model_lib.build_mask_model(QAT_CONFIG, streaming=True)
  _randomize(model, representative)
  return model


@pytest.fixture(scope="module")
def qat_frontend(qat_model):
  return frontend.Frontend.from_model(qat_model, QAT_CONFIG.feature)


@pytest.fixture(scope="module")
def calibrated_bytes(qat_model, qat_frontend, representative):
  """The converter's output before pinning (all activation ranges calibrated)."""
  export = export_model.build_export_model(qat_model, QAT_CONFIG)
  return convert.convert_to_int8(export, [qat_frontend.model_input(f) for f in representative])


@pytest.fixture(scope="module")
def pinned_bytes(qat_model, calibrated_bytes):
  return export_model.pin_fixed_ranges(calibrated_bytes,
                                       export_model.lstm_fixed_ranges(qat_model),
                                       export_model.dense_preactivation_ranges(qat_model))


@pytest.fixture(scope="module")
def tflm(pinned_bytes):
  return tflm_runner.TflmModel(pinned_bytes)


@pytest.mark.parametrize("range_min, range_max", [(-1.0, 1.0), (-1.0, 127.0 / 128.0),
                                                  (0.0, 255.0 / 256.0), (-0.5, 2.0)])
def test_int8_params_reproduce_the_fake_quant_grid(range_min, range_max):
  quantizer = quantizers.FixedRangeQuantizer(8, range_min, range_max)
  scale, zero_point = export_model.quantizer_int8_params(quantizer)
  # Random points (not a regular sweep, whose points can fall exactly on rounding ties,
  # where fake_quant rounds half up and the TFLite runner half to even).
  x = np.random.default_rng(0).uniform(range_min - 0.5, range_max + 0.5, 20000)
  x = x.astype(np.float32)
  want = quantizer(tf.constant(x)).numpy()
  got = tflm_runner.dequantize(tflm_runner.quantize(x, scale, zero_point, np.int8), scale,
                               zero_point)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_export_weights_are_the_forward_weights(qat_model):
  # A pruning-like hook on one layer: the export must carry the masked, quantized kernel.
  dense = qat_model.get_layer("dense_0")
  mask = np.ones(dense.kernel.shape, np.float32)
  mask[::2] = 0.0
  dense.transform_kernel = lambda kernel: kernel * mask
  try:
    export = export_model.build_export_model(qat_model, QAT_CONFIG)
    for layer in export.layers:
      if isinstance(layer, keras.layers.LSTM):
        source = qat_model.get_layer(layer.name)
        kernel, recurrent = source.cell.quantized_weights()
        np.testing.assert_array_equal(layer.cell.kernel.numpy(), kernel.numpy())
        np.testing.assert_array_equal(layer.cell.recurrent_kernel.numpy(), recurrent.numpy())
        np.testing.assert_array_equal(layer.cell.bias.numpy(), source.cell.bias.numpy())
        assert not getattr(layer, "input_quantizer", None)  # a plain Keras LSTM
      elif isinstance(layer, keras.layers.Dense):
        assert type(layer) is keras.layers.Dense
        source = qat_model.get_layer(layer.name)
        np.testing.assert_array_equal(layer.kernel.numpy(), source.quantized_kernel().numpy())
    kernel = export.get_layer("dense_0").kernel.numpy()
    assert not kernel[::2].any() and kernel[1::2].any()
    # Quantized values, not the float weights: at most 255 levels per output unit.
    assert max(len(np.unique(kernel[:, j])) for j in range(kernel.shape[1])) <= 255
    # QEQ runs in the front-end: the export model starts at the first LSTM.
    assert "qeq" not in [layer.name for layer in export.layers]
    assert [layer.name for layer in export.layers[1:]] == ["lstm_0", "lstm_1", "dense_0", "mask"]
    assert export.input_shape == (1, 1, QAT_CONFIG.feature.num_bands)
  finally:
    del dense.transform_kernel


def _fc_feeding(graph, activation):
  """The FULLY_CONNECTED ops whose output is the input of an `activation` op."""
  readers = {op.inputs[0].index for op in graph.operators if op.name == activation}
  return [op for op in graph.operators
          if op.name == "FULLY_CONNECTED" and op.outputs[0].index in readers]


def test_dense_preactivation_ranges_are_the_training_grids(qat_model):
  assert export_model.dense_preactivation_ranges(qat_model) == [TANH_INPUT_GRID,
                                                                SIGMOID_INPUT_GRID]
  assert TANH_INPUT_GRID[0] == pytest.approx(4.0 / 255.0, rel=1e-7)
  assert SIGMOID_INPUT_GRID[0] == pytest.approx(8.0 / 255.0, rel=1e-7)
  # The layers' quantizers are those grids (what training used).
  assert qat_model.get_layer("dense_0").preactivation_quantizer == \
      quantizers.activation_input_quantizer("tanh")
  assert qat_model.get_layer("mask").preactivation_quantizer == \
      quantizers.activation_input_quantizer("sigmoid")


def test_pinned_lstm_tensors_carry_the_qat_grid(calibrated_bytes, pinned_bytes):
  calibrated = tflite_graph.read_graph(calibrated_bytes)
  graph = tflite_graph.read_graph(pinned_bytes)
  lstms = [op for op in graph.operators if op.name == convert.FUSED_LSTM]
  assert len(lstms) == 2
  for op in lstms:
    state = op.inputs[18]
    assert state.is_variable and state.dtype == "INT8"
    for t in (op.inputs[0], op.outputs[0], state):
      assert t.scales == (pytest.approx(QAT_GRID[0], rel=1e-7),)
      assert t.zero_points == (QAT_GRID[1],)
    for w, b in zip(op.inputs[1:5], op.inputs[12:16]):
      assert b.scales[0] == pytest.approx(op.inputs[0].scales[0] * w.scales[0], rel=1e-6)
  # No QEQ in the graph: the model input is the first LSTM's input, on the QAT grid, so the
  # front-end's output is quantized exactly as the QAT model's first LSTM quantizes it.
  assert graph.operators[0].name == convert.FUSED_LSTM
  assert graph.inputs[0].index == lstms[0].inputs[0].index
  assert graph.inputs[0].scales == (pytest.approx(QAT_GRID[0], rel=1e-7),)
  assert graph.inputs[0].zero_points == (QAT_GRID[1],)
  assert "MUL" not in graph.op_names() and "ADD" not in graph.op_names()
  fc = next(op for op in graph.operators
            if op.name == "FULLY_CONNECTED" and op.inputs[0].index == lstms[1].outputs[0].index)
  np.testing.assert_allclose(fc.inputs[2].scales,
                             np.float32(QAT_GRID[0]) * np.asarray(fc.inputs[1].scales), rtol=1e-6)
  # The converter alone calibrates finer grids for these tensors; that is what pinning fixes.
  calibrated_lstms = [op for op in calibrated.operators if op.name == convert.FUSED_LSTM]
  assert any(op.outputs[0].scales[0] < 0.99 * QAT_GRID[0] for op in calibrated_lstms)
  convert.check_tflm_integer(pinned_bytes, 2)


def test_pinned_dense_preactivations_carry_the_fixed_grids(calibrated_bytes, pinned_bytes):
  graph = tflite_graph.read_graph(pinned_bytes)
  for activation, grid in (("TANH", TANH_INPUT_GRID), ("LOGISTIC", SIGMOID_INPUT_GRID)):
    (fc,) = _fc_feeding(graph, activation)
    preactivation = fc.outputs[0]
    assert preactivation.dtype == "INT8"
    assert preactivation.scales == (pytest.approx(grid[0], rel=1e-7),)
    assert preactivation.zero_points == (grid[1],)
  # The activation outputs keep TFLite's own fixed grids (TANH 1/128, LOGISTIC 1/256).
  outputs = {op.name: op.outputs[0] for op in graph.operators
             if op.name in ("TANH", "LOGISTIC")}
  assert outputs["TANH"].scales == (pytest.approx(1.0 / 128.0),)
  assert outputs["TANH"].zero_points == (0,)
  assert outputs["LOGISTIC"].scales == (pytest.approx(1.0 / 256.0),)
  assert outputs["LOGISTIC"].zero_points == (-128,)
  # Calibration alone gives these tensors other (data-dependent) grids.
  calibrated = tflite_graph.read_graph(calibrated_bytes)
  calibrated_scales = [_fc_feeding(calibrated, a)[0].outputs[0].scales[0]
                       for a in ("TANH", "LOGISTIC")]
  assert calibrated_scales != [pytest.approx(TANH_INPUT_GRID[0]),
                               pytest.approx(SIGMOID_INPUT_GRID[0])]


def _quantization(graph):
  return [(t.shape, t.dtype, t.scales, t.zero_points) for t in graph.tensors]


def test_convert_trained_model_is_frontend_convert_and_pin(qat_model, qat_frontend,
                                                           representative, pinned_bytes, tflm,
                                                           test_utterances):
  # One call does what the fixtures do step by step (front-end on the representative features,
  # convert, pin): the same tensors and grids, and the same int8 outputs frame for frame (the
  # bytes themselves differ in names the converter derives from the Keras model).
  tflite_bytes = export_model.convert_trained_model(qat_model, QAT_CONFIG, representative)
  assert _quantization(tflite_graph.read_graph(tflite_bytes)) == \
      _quantization(tflite_graph.read_graph(pinned_bytes))
  model_input = qat_frontend.model_input(test_utterances[0][:100])
  tflm.reset()
  np.testing.assert_array_equal(tflm_runner.TflmModel(tflite_bytes).run(model_input),
                                tflm.run(model_input))
  tflm.reset()


def test_requantized_biases_keep_their_values(calibrated_bytes, pinned_bytes):
  """The bias codes change with the scale; their float values stay within half a step."""
  import tensorflow.lite as tflite  # pylint: disable=g-import-not-at-top
  def biases(tflite_bytes):
    interpreter = tflite.Interpreter(model_content=tflite_bytes)
    return {d["name"]: (interpreter.get_tensor(d["index"]).astype(np.float64) *
                        d["quantization_parameters"]["scales"])
            for d in interpreter.get_tensor_details() if d["dtype"] == np.int32}
  before, after = biases(calibrated_bytes), biases(pinned_bytes)
  assert before.keys() == after.keys() and before
  for name in before:
    np.testing.assert_allclose(after[name], before[name], atol=1e-4)


def _mask_errors_lsb(tflm, fe, keras_streaming_model, utterances):
  """|TFLM − Keras| mask error in output LSBs over whole utterances, each from a reset state:
  TFLM behind the front-end `fe`, Keras (QEQ inside) on the features themselves."""
  errors = []
  for feats in utterances:
    tflm.reset()
    keras_streaming_model.reset_states()
    got = tflm.run(fe.model_input(feats))
    want = tflm_runner.run_keras_streaming(keras_streaming_model, feats)
    errors.append(np.abs(got - want).reshape(-1) / tflm.output_scale)
  tflm.reset()
  keras_streaming_model.reset_states()
  return np.concatenate(errors)


def test_tflm_equals_keras_qat_within_tolerance(tflm, qat_model, qat_frontend, test_utterances):
  err = _mask_errors_lsb(tflm, qat_frontend, qat_model, test_utterances)
  assert err.size > 1500 * QAT_CONFIG.feature.num_bands
  # Measured (TF 2.21, tflite-micro, these 2 utterances): mean 0.04 LSB, 99th percentile 2 LSB,
  # max 2 LSB. The non-zero errors are pre-activations that the integer LSTM (16-bit gates) and
  # the float QAT cell put on neighbouring steps of a pinned grid; one step of the sigmoid input
  # grid (8/255, slope <= 1/4) is up to 2 output LSBs. For comparison, pinning only the LSTM
  # grids gives mean 0.51 LSB; the calibrated model (nothing pinned) mean 1.2, max 9 LSB.
  assert err.mean() < 0.5
  assert np.percentile(err, 99) <= TOLERANCE_LSB
  # Without the front-end (raw features into the int8 model) the output is far off: the
  # front-end is what the QAT model's first LSTM saw.
  raw = tflm.run(test_utterances[0][:300])
  tflm.reset()
  qat_model.reset_states()
  want = tflm_runner.run_keras_streaming(qat_model, test_utterances[0][:300])
  qat_model.reset_states()
  assert np.abs(raw - want).mean() / tflm.output_scale > 10 * err.mean()


def test_reset_between_utterances_restarts_exactly(tflm, qat_frontend, test_utterances):
  first, second = (qat_frontend.model_input(u[:200]) for u in test_utterances)
  tflm.reset()
  fresh = tflm.run(second)
  tflm.reset()
  tflm.run(first)
  continued = tflm.run(second)
  tflm.reset()
  after_reset = tflm.run(second)
  np.testing.assert_array_equal(after_reset, fresh)
  assert np.abs(continued - fresh).max() > 0  # the state did carry over without reset


def test_float_model_exports_without_pinning(representative):
  config = model_lib.ModelConfig(lstm_units=(16,), dense_units=(), quantize=False)
  keras.utils.set_random_seed(0)
  trained = model_lib.build_mask_model(config)  # training form: weights move by layer name
  _randomize(trained, representative)
  export = export_model.build_export_model(trained, config)
  assert [layer.name for layer in export.layers[1:]] == ["lstm_0", "mask"]  # QEQ left out
  for name in ("lstm_0", "mask"):
    for a, b in zip(export.get_layer(name).get_weights(), trained.get_layer(name).get_weights()):
      np.testing.assert_array_equal(a, b)
  ranges = export_model.lstm_fixed_ranges(trained)
  assert ranges == [export_model.LstmRanges()]
  assert export_model.dense_preactivation_ranges(trained) == [None]
  tflite_bytes = export_model.convert_trained_model(trained, config, [representative[0][:300]])
  assert export_model.pin_fixed_ranges(tflite_bytes, ranges, [None]) == tflite_bytes
  graph = tflite_graph.read_graph(tflite_bytes)
  assert graph.op_names().count(convert.FUSED_LSTM) == 1
  streaming = model_lib.build_mask_model(config, streaming=True)
  streaming.set_weights(trained.get_weights())
  fe = frontend.Frontend.from_model(trained, config.feature)
  err = _mask_errors_lsb(tflm_runner.TflmModel(tflite_bytes), fe, streaming,
                         [representative[1][:300]])
  assert err.mean() < 2.0  # calibrated int8 near float, not bit-exact


def test_mismatched_model_and_config_are_refused(qat_model, pinned_bytes):
  other = dataclasses.replace(QAT_CONFIG, dense_units=(32, 16))
  with pytest.raises(convert.ConversionError, match="dense_1"):
    export_model.build_export_model(qat_model, other)
  with pytest.raises(convert.ConversionError, match="2 fused LSTM"):
    export_model.pin_fixed_ranges(pinned_bytes, [export_model.LstmRanges(input=QAT_GRID)])
  with pytest.raises(convert.ConversionError, match="2 FULLY_CONNECTED op.* 1 Dense"):
    export_model.pin_fixed_ranges(pinned_bytes, export_model.lstm_fixed_ranges(qat_model),
                                  [TANH_INPUT_GRID])
