"""Export model: forward weights, the QAT grid pinned in the .tflite, TFLM equal to Keras QAT.

A small QAT model (LSTM 32x2, Dense 32) with random weights, non-zero biases and a QEQ that
standardizes real features, converted with representative frames of real training mixtures and
compared with the Keras QAT streaming model over whole real test utterances.
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
from tflm_export import tflite_graph
from tflm_export import tflm_runner

QAT_CONFIG = model_lib.ModelConfig(lstm_units=(32, 32), dense_units=(32,), quantize=True)
QAT_GRID = (np.float32(2.0) / np.float32(255.0), -1)
# The stated agreement of TFLM int8 with the Keras QAT model, in output LSBs (1/256).
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
def calibrated_bytes(qat_model, representative):
  """The converter's output before pinning (all activation ranges calibrated)."""
  export = export_model.build_export_model(qat_model, QAT_CONFIG)
  return convert.convert_to_int8(export, representative)


@pytest.fixture(scope="module")
def pinned_bytes(qat_model, calibrated_bytes):
  return export_model.pin_fixed_ranges(calibrated_bytes,
                                       export_model.lstm_fixed_ranges(qat_model))


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
    assert export.input_shape == (1, 1, QAT_CONFIG.feature.num_bands)
  finally:
    del dense.transform_kernel


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
  fc = next(op for op in graph.operators if op.name == "FULLY_CONNECTED")
  assert fc.inputs[0].index == lstms[1].outputs[0].index
  np.testing.assert_allclose(fc.inputs[2].scales,
                             np.float32(QAT_GRID[0]) * np.asarray(fc.inputs[1].scales), rtol=1e-6)
  # The converter alone calibrates finer grids for these tensors; that is what pinning fixes.
  calibrated_lstms = [op for op in calibrated.operators if op.name == convert.FUSED_LSTM]
  assert any(op.outputs[0].scales[0] < 0.99 * QAT_GRID[0] for op in calibrated_lstms)
  convert.check_tflm_integer(pinned_bytes, 2)


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


def test_tflm_equals_keras_qat_within_tolerance(tflm, qat_model, test_utterances):
  report = tflm_runner.compare_with_keras(tflm, qat_model, test_utterances)
  assert report["utterances"] == 2 and report["frames"] > 1500
  assert report["max_abs_error_lsb"] <= TOLERANCE_LSB
  assert report["mean_abs_error_lsb"] < 0.5


def test_reset_between_utterances_restarts_exactly(tflm, test_utterances):
  first, second = test_utterances[0][:200], test_utterances[1][:200]
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
  for a, b in zip(export.get_weights(), trained.get_weights()):
    np.testing.assert_array_equal(a, b)
  ranges = export_model.lstm_fixed_ranges(trained)
  assert ranges == [export_model.LstmRanges()]
  tflite_bytes = export_model.convert_trained_model(trained, config, representative[0][:300])
  assert export_model.pin_fixed_ranges(tflite_bytes, ranges) == tflite_bytes
  graph = tflite_graph.read_graph(tflite_bytes)
  assert graph.op_names().count(convert.FUSED_LSTM) == 1
  streaming = model_lib.build_mask_model(config, streaming=True)
  streaming.set_weights(trained.get_weights())
  report = tflm_runner.compare_with_keras(tflm_runner.TflmModel(tflite_bytes), streaming,
                                          representative[1][:300])
  assert report["mean_abs_error_lsb"] < 2.0  # calibrated int8 near float, not bit-exact


def test_mismatched_model_and_config_are_refused(qat_model, pinned_bytes):
  other = dataclasses.replace(QAT_CONFIG, dense_units=(32, 16))
  with pytest.raises(convert.ConversionError, match="dense_1"):
    export_model.build_export_model(qat_model, other)
  with pytest.raises(convert.ConversionError, match="2 fused LSTM"):
    export_model.pin_fixed_ranges(pinned_bytes, [export_model.LstmRanges(input=QAT_GRID)])
