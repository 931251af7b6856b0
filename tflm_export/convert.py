"""Full-integer conversion of the streaming mask network to a `.tflite` that TFLite Micro runs.

Why the model is rebuilt stateless first: the TFLite converter turns a `stateful=True` Keras
LSTM into a WHILE loop over resource variables (float, not fused, and the calibrator crashes
on it). A stateless copy with the same weights and the streaming input shape (1, 1, bands)
converts to one fused UNIDIRECTIONAL_SEQUENCE_LSTM per layer whose hidden and cell state are
*variable tensors*: they keep their values across `invoke()` calls and are cleared by the
interpreter's `reset()`. That is exactly the streaming behaviour of the Keras model.

What the int8 LSTM does with scales (the grid quantization-aware training must reproduce), as
read from the converted model (see tests/tflm_export/test_convert.py):
- the 8 weight matrices (input and recurrent, one per gate) are int8, symmetric (zero point 0),
  each with ONE scale for the whole matrix (per-tensor, per gate), not per channel;
- gate biases are int32 with scale = input scale × that gate's input-weight scale;
- the hidden state / layer output is int8 (asymmetric, calibrated range), the cell state is
  int16 with a power-of-two scale (2^-k, calibrated), gate pre-activations are computed as
  int16 Q3.12 inside the kernel, i.e. the gates themselves are 16-bit;
- Dense (FULLY_CONNECTED) weights are int8 symmetric per output channel; activations int8
  asymmetric with calibrated ranges; TANH outputs have scale 1/128, LOGISTIC 1/256.
"""
import collections

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_tinyse import console
from tf_tinyse.errors import UserError
from tflm_export import tflite_graph

FUSED_LSTM = "UNIDIRECTIONAL_SEQUENCE_LSTM"

# Builtin ops that TFLite Micro runs with int8/int16 kernels and that a mask network of this
# family can contain (QEQ becomes MUL+ADD, reshapes around Dense, requantization). Anything
# else is refused rather than discovered on the device.
TFLM_INTEGER_OPS = frozenset({
    FUSED_LSTM, "FULLY_CONNECTED", "BATCH_MATMUL", "SVDF",
    "ADD", "SUB", "MUL", "SQUARED_DIFFERENCE", "MAXIMUM", "MINIMUM", "ABS", "NEG", "RSQRT",
    "TANH", "LOGISTIC", "RELU", "RELU6", "LEAKY_RELU", "HARD_SWISH", "PRELU", "SOFTMAX",
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "CONCATENATION", "SPLIT", "SPLIT_V",
    "SLICE", "STRIDED_SLICE", "PACK", "UNPACK", "PAD", "PADV2", "MEAN", "SUM", "QUANTIZE",
    "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D",
})

INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32"})


class ConversionError(UserError):
  """The model cannot become an integer-only TFLite Micro model; the message says which part."""


def stateless_copy(streaming_model):
  """The streaming model with `stateful=False` LSTMs and the same weights and input shape."""

  def clone_layer(layer):
    config = layer.get_config()
    if isinstance(layer, keras.layers.LSTM):
      config["stateful"] = False
    return layer.__class__.from_config(config)

  copy = keras.models.clone_model(streaming_model, clone_function=clone_layer)
  copy.set_weights(streaming_model.get_weights())
  return copy


def _as_utterances(representative_features, num_bands):
  """One [T, bands] float32 array per utterance, from an array or a list of arrays."""
  if isinstance(representative_features, np.ndarray):
    utterances = [representative_features]
  else:
    utterances = list(representative_features)
  out = []
  for u in utterances:
    u = np.asarray(u, np.float32)
    if u.ndim != 2 or u.shape[1] != num_bands or u.shape[0] == 0:
      raise ConversionError(
          f"representative features have shape {u.shape}, expected [frames>0, {num_bands}] "
          "(compressed mel features of real audio, one row per frame)")
    if not np.all(np.isfinite(u)):
      raise ConversionError("representative features contain NaN or inf: "
                            "compute them from valid audio with tf_tinyse.features")
    out.append(u)
  if not out:
    raise ConversionError("no representative features given: pass frames of real audio")
  return out


def _count_lstm_layers(model):
  return sum(isinstance(layer, keras.layers.LSTM) for layer in model.layers)


def check_tflm_integer(tflite_bytes, expected_lstm_layers, *, io_type="INT8"):
  """Raises ConversionError unless the model is integer-only, fused and TFLM-runnable.

  Checks: every op is in `TFLM_INTEGER_OPS`; every tensor flowing between ops is
  int8/int16/int32; the model input and output have type `io_type`; there is one fused
  UNIDIRECTIONAL_SEQUENCE_LSTM per Keras LSTM layer; the model has a single subgraph (control
  flow such as WHILE means an LSTM was converted as a loop).
  """
  graph = tflite_graph.read_graph(tflite_bytes)
  names = graph.op_names()
  problems = []
  unsupported = collections.Counter(n for n in names if n not in TFLM_INTEGER_OPS)
  if unsupported:
    listed = ", ".join(f"{n} ×{c}" for n, c in sorted(unsupported.items()))
    problems.append(f"ops not in the TFLM integer allow-list: {listed}")
  float_tensors = [t for t in graph.activation_tensors() if t.dtype not in INTEGER_TYPES]
  if float_tensors:
    listed = ", ".join(f"'{t.name}' ({t.dtype})" for t in float_tensors[:5])
    more = f" and {len(float_tensors) - 5} more" if len(float_tensors) > 5 else ""
    problems.append(f"non-integer tensors between ops: {listed}{more}")
  fused = names.count(FUSED_LSTM)
  if fused != expected_lstm_layers or graph.num_subgraphs != 1:
    problems.append(f"LSTM not fused: {fused} {FUSED_LSTM} op(s) for {expected_lstm_layers} "
                    f"LSTM layer(s), {graph.num_subgraphs} subgraph(s)")
  for role, tensors in (("input", graph.inputs), ("output", graph.outputs)):
    for t in tensors:
      if t.dtype != io_type:
        problems.append(f"model {role} '{t.name}' is {t.dtype}, expected {io_type}")
  if problems:
    raise ConversionError("the converted model cannot run integer-only in TFLite Micro: " +
                          "; ".join(problems))
  return graph


def convert_to_int8(streaming_model, representative_features, *, int16_activations=False):
  """Converts a streaming mask model to full-integer `.tflite` bytes for TFLite Micro.

  Args:
    streaming_model: the `tf_keras.Model` in streaming form (input batch shape (1, 1, bands),
      stateful LSTMs), e.g. `tf_tinyse.model.build_mask_model(config, streaming=True)` with
      trained weights. It is not modified.
    representative_features: compressed mel features of real audio for calibrating the
      activation ranges: a float array [frames, bands] (one utterance) or a list of such
      arrays (several utterances). Frames are fed one at a time in temporal order, as the
      device sees them. The TFLite calibrator keeps the LSTM state across all samples and
      offers no reset, so several utterances are fed back to back (each starts from the state
      the previous one ended in) rather than from zero state as on the device; only the first
      frames of each utterance see a different state.
    int16_activations: 16x8 mode (int16 activations, int8 weights, int16 input/output). The
      installed TFLite converter refuses it for the fused LSTM, which then raises
      ConversionError; kept so the failure is explicit rather than a silent float fallback.

  Returns:
    The `.tflite` flatbuffer: int8 weights and activations, int8 input and output (int16 in
    16x8 mode), one fused UNIDIRECTIONAL_SEQUENCE_LSTM per LSTM layer with variable state.

  Raises:
    ConversionError: the converter failed, or the result holds ops TFLM cannot run in
      integer arithmetic, float tensors, or unfused LSTMs (the message lists them).
  """
  input_shape = tuple(streaming_model.input_shape)
  if len(input_shape) != 3 or input_shape[0] != 1 or input_shape[1] != 1:
    raise ConversionError(f"model input shape is {input_shape}, expected (1, 1, bands): pass "
                          "the streaming form (tf_tinyse.model.build_mask_model(..., "
                          "streaming=True))")
  num_bands = int(input_shape[2])
  utterances = _as_utterances(representative_features, num_bands)
  model = stateless_copy(streaming_model)

  def representative_dataset():
    for utterance in utterances:
      for frame in utterance:
        yield [frame[None, None, :]]

  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = representative_dataset
  if int16_activations:
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    io_type, io_name = tf.int16, "INT16"
  else:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io_type, io_name = tf.int8, "INT8"
  converter.inference_input_type = io_type
  converter.inference_output_type = io_type
  try:
    # The converter prints its settings from C++ whatever the log level; shown with -v 1.
    with console.native_stderr_filtered():
      tflite_bytes = converter.convert()
  except Exception as e:  # The converter raises ConverterError, RuntimeError, ValueError.
    message = " ".join(str(e).split())
    raise ConversionError(f"TFLite {'16x8' if int16_activations else 'int8'} conversion failed: "
                          f"{message[-400:]}") from e
  check_tflm_integer(tflite_bytes, _count_lstm_layers(streaming_model), io_type=io_name)
  return tflite_bytes
