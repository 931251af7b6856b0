"""The model the converter sees, and the QAT ranges it must keep: trained → int8 `.tflite`.

Two steps turn a trained (float or quantization-aware) mask model into the int8 model TFLite
Micro runs, so that the int8 model computes what the QAT model computed:

1. `build_export_model`: a plain tf_keras streaming model (Keras LSTM and Dense, which the
   converter fuses and quantizes) holding the weights *as the trained forward pass uses them*:
   `QuantizedLSTMCell.quantized_weights()` and `QuantizedDense.quantized_kernel()`, i.e. after
   the `transform_*` hooks (pruning masks) and on the int8 grid. The converter re-derives the
   same max-abs scales from these values, so the int8 weight codes are the QAT codes.

2. `pin_fixed_ranges`: the converter calibrates every activation range from representative data,
   so the LSTM input (QEQ output) and each LSTM output, which QAT trains on the fixed [-1, 1]
   8-bit grid (scale 2/255), come out with narrower calibrated ranges (finer grids, e.g. scale
   0.0047). The int8 model then rounds differently from the QAT model at every step
   (measured: up to ~8 output LSBs at 256x2). After conversion those tensors are set to the QAT
   grid in the flatbuffer: the LSTM input, the LSTM output together with the LSTM's output-state
   variable tensor and its `effective_hidden_scale_intermediate` (the kernel writes h with the
   state's scale and copies it to the output, so the three must agree), plus any tensor tied to
   them by a RESHAPE-like op; the int32 biases of the ops that read them (fused LSTM gate biases,
   FULLY_CONNECTED) are requantized to their new scale (input scale x weight scale).
   All other ranges stay calibrated; the kernels derive their rescaling from tensor parameters
   when the interpreter prepares the model.

Why not `tf.quantization.fake_quant_with_min_max_args` ops in the Keras graph (measured with
TF 2.21): the converter honours a FakeQuant *before* the first LSTM, but a FakeQuant *after* an
LSTM gives the LSTM output scale 2/255 while the output-state variable keeps its calibrated
scale (an inconsistent model), and FakeQuants on both sides of an LSTM make the conversion fail
("Failed to duplicate values for the stateful op"). Even where it works, the converter derives
zero point 0 for [-1, 1], while the op itself (and so QAT) uses zero point -1 (below). Rewriting
the converted flatbuffer is one mechanism for all of these tensors and is checked by the tests
(scales in the file, TFLM output against the QAT Keras model).

The grid: `FixedRangeQuantizer(8, -1, 1)` is `fake_quant_with_min_max_args`, which nudges the
range so that 0 is exact, in float32: scale = float32(2/255), zero point round(1 / scale) =
round(127.49999) = 127 of [0, 255], i.e. int8 zero point -1 and values -127/127.5 .. 128/127.5
(the same grid the calibrator gives a tensor whose range is exactly [-1, 1]).
`quantizer_int8_params` computes this.
"""
import dataclasses

import numpy as np
import tf_keras as keras
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from keras_layers import quantizers
from keras_layers.quantized_lstm import QuantizedLSTM
from tf_tinyse import model as model_lib
from tflm_export import convert
from tflm_export import frontend
from tflm_export import tflite_graph

_OP_CODES = {name: code for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
_LSTM = _OP_CODES["UNIDIRECTIONAL_SEQUENCE_LSTM"]
_FULLY_CONNECTED = _OP_CODES["FULLY_CONNECTED"]
# Ops that move int8 data without rescaling it: their input and output must share one scale.
_SAME_SCALE_OPS = frozenset(_OP_CODES[n] for n in ("RESHAPE", "SQUEEZE", "EXPAND_DIMS"))
# Ops whose int32 bias is quantized with (input scale x weight scale); other consumers of a
# pinned tensor (ADD, MUL, TANH, ...) rescale from tensor parameters at prepare time.
_BIASED_OPS = frozenset(_OP_CODES[n] for n in ("CONV_2D", "DEPTHWISE_CONV_2D", "SVDF"))

# Input tensor positions of the fused LSTM (TFLite's lstm_shared.h).
_LSTM_INPUT_WEIGHTS = (1, 2, 3, 4)  # input-to-{input, forget, cell, output} weights
_LSTM_GATE_BIASES = (12, 13, 14, 15)  # {input, forget, cell, output} gate biases
_LSTM_OUTPUT_STATE = 18
_LSTM_HIDDEN_INTERMEDIATE = 4  # effective_hidden_scale_intermediate


@dataclasses.dataclass(frozen=True)
class LstmRanges:
  """The fixed int8 grids of one LSTM layer's input and output, as (scale, zero_point) or None
  (None: keep the converter's calibrated range)."""
  input: tuple = None
  output: tuple = None


def quantizer_int8_params(quantizer):
  """(scale, int8 zero point) of the grid of an 8-bit `FixedRangeQuantizer`, or None.

  Mirrors the range nudging of `fake_quant_with_min_max_args` (TensorFlow's `Nudge`, float32):
  scale = (max - min) / 255, zero point = round(0 - min / scale) clamped to [0, 255], then
  shifted by -128 for int8.
  """
  if not isinstance(quantizer, quantizers.FixedRangeQuantizer):
    return None
  if quantizer.bits != 8 or quantizer.narrow_range:
    raise convert.ConversionError(
        f"{quantizer!r}: only 8-bit, full-range fixed activation grids can be exported to int8")
  range_min, range_max = np.float32(quantizer.range_min), np.float32(quantizer.range_max)
  scale = (range_max - range_min) / np.float32(255.0)
  zero_point = np.float32(0.0) - range_min / scale
  # std::round (half away from zero), as Nudge does; the clamped value is >= 0.
  zero_point = int(np.floor(np.clip(zero_point, 0.0, 255.0) + 0.5))
  return float(scale), zero_point - 128


def lstm_fixed_ranges(trained_model):
  """One `LstmRanges` per LSTM layer of `trained_model`, in layer order."""
  ranges = []
  for layer in trained_model.layers:
    if isinstance(layer, QuantizedLSTM):
      ranges.append(LstmRanges(input=quantizer_int8_params(layer.input_quantizer),
                               output=quantizer_int8_params(layer.cell.output_quantizer)))
    elif isinstance(layer, keras.layers.LSTM):
      ranges.append(LstmRanges())
  return ranges


def dense_preactivation_ranges(trained_model):
  """One (scale, int8 zero point) or None per Dense layer of `trained_model`, in layer order:
  the fixed grid of its pre-activation (the int8 FULLY_CONNECTED output before TANH/LOGISTIC)."""
  return [quantizer_int8_params(getattr(layer, "preactivation_quantizer", None))
          for layer in trained_model.layers if isinstance(layer, keras.layers.Dense)]


def forward_weights(layer):
  """The weights of `layer` as its forward pass uses them, in tf_keras LSTM/Dense order."""
  return model_lib.forward_weights(layer)


def removable_units(trained_model, config):
  """{hidden layer name: bool array [units] of the units that can be removed exactly}.

  A unit can go when all of its own forward weights are zero: for an LSTM unit k the four gate
  columns of its input and recurrent kernels and its four gate biases (then z = 0, its cell
  state stays 0 and h[k] = σ(0)·tanh(0) = 0 in every frame), for a Dense tanh unit its kernel
  column and bias (tanh(0) = 0). Its output is exactly zero, so the rows that read it can go
  too, whatever they hold. The mask layer's outputs are never removed. One unit of a layer is
  always kept (all zero if need be), as a layer cannot have no units.
  """
  removable = {}
  names = [f"lstm_{i}" for i in range(len(config.lstm_units))] + [
      f"dense_{i}" for i in range(len(config.dense_units))]
  for name in names:
    weights = forward_weights(trained_model.get_layer(name))
    if name.startswith("lstm"):
      units = weights[1].shape[0]
      columns = [np.abs(w).reshape(-1, 4, units).sum(axis=(0, 1)) for w in weights]
    else:
      columns = [np.abs(w).reshape(-1, w.shape[-1]).sum(axis=0) for w in weights]
    zero = np.sum(columns, axis=0) == 0
    if zero.all():
      zero[0] = False
    removable[name] = zero
  return removable


def _shrunk_weights(trained_model, config, keep):
  """Forward weights of every layer with the removed units' columns, rows and biases cut."""
  weights, previous = {}, None
  for i in range(len(config.lstm_units)):
    name = f"lstm_{i}"
    kernel, recurrent, bias = forward_weights(trained_model.get_layer(name))
    gates = np.tile(keep[name], 4)
    rows = slice(None) if previous is None else previous
    weights[name] = [kernel[rows][:, gates], recurrent[keep[name]][:, gates], bias[gates]]
    previous = keep[name]
  for i in range(len(config.dense_units)):
    name = f"dense_{i}"
    kernel, bias = forward_weights(trained_model.get_layer(name))
    weights[name] = [kernel[previous][:, keep[name]], bias[keep[name]]]
    previous = keep[name]
  kernel, bias = forward_weights(trained_model.get_layer("mask"))
  weights["mask"] = [kernel[previous], bias]
  return weights


def build_export_model(trained_model, config, shrink_units=None):
  """A plain streaming model (batch shape (1, 1, bands)) with `trained_model`'s forward weights.

  Args:
    trained_model: the trained mask model, training or streaming form, float or QAT
      (`tf_tinyse.model.build_mask_model(config, ...)` with its weights loaded).
    config: its `tf_tinyse.model.ModelConfig`.
    shrink_units: remove the units that `removable_units` finds (their weights all pruned),
      so the model is physically smaller and computes the same output; default: for
      unit-pruned models.

  Returns:
    A `tf_keras.Model` built by `build_mask_model(config without QEQ, quantization and
    sparsity, streaming=True)` (with fewer units where units were removed): tf_keras LSTMs
    (stateful) and Dense layers, which the converter fuses into UNIDIRECTIONAL_SEQUENCE_LSTM
    and FULLY_CONNECTED. Its input is the QEQ output: QEQ runs in the front-end
    (`tflm_export.frontend`). Quantized layers contribute their transformed (masked),
    fake-quantized weights; float layers their weights as they are. Removing units keeps the
    int8 codes: every per-gate / per-channel max|w| scale of the kept weights is unchanged.
  """
  if shrink_units is None:
    shrink_units = config.sparsity_structure == "unit"
  export_config = dataclasses.replace(config.dense(), quantize=False, use_qeq=False)
  weights = None
  if shrink_units:
    keep = {name: ~zero for name, zero in removable_units(trained_model, config).items()}
    export_config = dataclasses.replace(
        export_config,
        lstm_units=tuple(int(keep[f"lstm_{i}"].sum()) for i in range(len(config.lstm_units))),
        dense_units=tuple(int(keep[f"dense_{i}"].sum()) for i in range(len(config.dense_units))))
    weights = _shrunk_weights(trained_model, config, keep)
  export = model_lib.build_mask_model(export_config, streaming=True)
  for layer in export.layers:
    if not layer.weights:
      continue
    try:
      source = trained_model.get_layer(layer.name)
    except ValueError as e:
      raise convert.ConversionError(f"the trained model has no layer '{layer.name}': it was not "
                                    f"built from this ModelConfig ({config.to_dict()})") from e
    layer.set_weights(weights[layer.name] if weights else forward_weights(source))
  return export


class _Flatbuffer:
  """The mutable object tree of a `.tflite` (main subgraph) with the lookups pinning needs."""

  def __init__(self, tflite_bytes):
    self.model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    if any(getattr(b, "offset", 0) for b in self.model.buffers or []):
      raise convert.ConversionError("the .tflite stores buffers outside the flatbuffer "
                                    "(> 2 GB model); fixed ranges cannot be pinned")
    self.graph = self.model.subgraphs[0]
    self.ops = list(self.graph.operators)
    self.codes = [self._code(op) for op in self.ops]

  def _code(self, op):
    opcode = self.model.operatorCodes[op.opcodeIndex]
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)

  def tensor(self, index):
    return self.graph.tensors[index]

  def consumers(self, index):
    return [k for k, op in enumerate(self.ops) if index in list(op.inputs)]

  def producers(self, index):
    return [k for k, op in enumerate(self.ops) if index in list(op.outputs)]

  def same_scale_group(self, indices):
    """`indices` and every tensor tied to them through RESHAPE-like ops, either direction."""
    group, todo = set(), list(indices)
    while todo:
      index = todo.pop()
      if index in group:
        continue
      group.add(index)
      for k in self.consumers(index) + self.producers(index):
        if self.codes[k] in _SAME_SCALE_OPS:
          todo += [int(i) for i in list(self.ops[k].inputs)[:1] + list(self.ops[k].outputs)]
    return group

  def params(self, index):
    q = self.tensor(index).quantization
    return float(q.scale[0]), int(q.zeroPoint[0])

  def set_params(self, index, scale, zero_point):
    q = self.tensor(index).quantization
    if q is None or q.scale is None or len(q.scale) != 1:
      raise convert.ConversionError(f"tensor '{self.tensor(index).name.decode()}' is not "
                                    "per-tensor quantized; cannot pin its range")
    q.scale = np.array([scale], np.float32)
    q.zeroPoint = np.array([zero_point], np.int64)

  def requantize_bias(self, bias_index, new_scales):
    """Re-encodes an int32 bias (float value = code x old scale) at `new_scales`."""
    t = self.tensor(bias_index)
    old_scales = np.asarray(t.quantization.scale, np.float64)
    buffer = self.model.buffers[t.buffer]
    codes = np.frombuffer(bytes(bytearray(buffer.data)), "<i4").astype(np.float64)
    new_scales = np.broadcast_to(np.asarray(new_scales, np.float64), codes.shape)
    values = codes * np.broadcast_to(old_scales, codes.shape)
    per_tensor = len(old_scales) == 1 and np.all(new_scales == new_scales.flat[0])
    self.set_bias(bias_index, values, new_scales[:1] if per_tensor else new_scales)

  def set_bias(self, bias_index, values, scales):
    """Stores the float bias `values` as int32 codes at `scales` (one, or one per channel).

    Raises ConversionError when a code does not fit int32: a clipped bias would run as a
    different bias, silently.
    """
    t = self.tensor(bias_index)
    values = np.asarray(values, np.float64)
    scales = np.asarray(scales, np.float64)
    codes = np.round(values / np.broadcast_to(scales, values.shape))
    if np.abs(codes).max(initial=0) > 2**31 - 1:
      raise convert.ConversionError(
          f"bias '{t.name.decode()}' does not fit int32 at scale {scales.min():.3g} "
          f"(largest |bias| {np.abs(values).max():.3g}); its weights' scale is too small")
    data = np.frombuffer(codes.astype("<i4").tobytes(), np.uint8)
    shared = sum(1 for other in self.graph.tensors if other.buffer == t.buffer) > 1
    if shared:  # The converter deduplicates equal constants; give this bias its own buffer.
      new_buffer = schema.BufferT()
      new_buffer.data = data
      self.model.buffers.append(new_buffer)
      t.buffer = len(self.model.buffers) - 1
    else:
      self.model.buffers[t.buffer].data = data
    t.quantization.scale = np.asarray(scales, np.float32).reshape(-1)

  def constant_codes(self, index, dtype):
    return np.frombuffer(bytes(bytearray(self.model.buffers[self.tensor(index).buffer].data)),
                         dtype)

  def to_bytes(self):
    return bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))


def _pin(fb, indices, scale, zero_point):
  """Sets the grid of `indices` (and their same-scale group); fixes the readers' biases."""
  group = fb.same_scale_group(indices)
  for index in group:
    fb.set_params(index, scale, zero_point)
  for index in group:
    for k in fb.consumers(index):
      op, code = fb.ops[k], fb.codes[k]
      inputs = [int(i) for i in op.inputs]
      if code == _LSTM and inputs[0] == index:
        for w, b in zip(_LSTM_INPUT_WEIGHTS, _LSTM_GATE_BIASES):
          if inputs[b] >= 0:
            fb.requantize_bias(inputs[b], scale * fb.params(inputs[w])[0])
      elif code == _FULLY_CONNECTED and inputs[0] == index:
        if len(inputs) > 2 and inputs[2] >= 0:
          weight_scales = np.asarray(fb.tensor(inputs[1]).quantization.scale, np.float64)
          fb.requantize_bias(inputs[2], scale * weight_scales)
      elif code in _BIASED_OPS:
        raise convert.ConversionError("a pinned LSTM tensor feeds an op with a bias that "
                                      "cannot be requantized here; keep the mask network form")


# The scale given to an all-zero LSTM gate matrix (its codes stay 0): that of weights up to
# |w| = 1, where the gate bias (int32 at input scale x this scale) has a fine step (about
# 6e-5 on the [-1, 1] input grid) and room for any trained bias.
ZERO_GATE_WEIGHT_SCALE = 1.0 / 127


def repair_zero_gate_matrices(tflite_bytes, export_model):
  """Gives every all-zero input-to-gate matrix of the fused LSTMs a usable scale and re-encodes
  that gate's bias from the float bias of `export_model` (`build_export_model`).

  Pruning zeroes whole gate matrices. The converter gives such a matrix the scale 5e-7/127,
  and TFLite's integer LSTM stores the gate bias as int32 at input scale x that scale, so any
  bias above about 0.3 saturates at 2^31 - 1 in conversion: the gate would run with a wrong
  bias. The codes of the matrix are 0 at any scale, so only the bias changes.
  """
  fb = _Flatbuffer(tflite_bytes)
  lstm_ops = [op for op, code in zip(fb.ops, fb.codes) if code == _LSTM]
  layers = [layer for layer in export_model.layers
            if isinstance(layer, keras.layers.LSTM)]
  if len(lstm_ops) != len(layers):
    raise convert.ConversionError(f"the .tflite has {len(lstm_ops)} fused LSTM op(s) for "
                                  f"{len(layers)} LSTM layer(s)")
  repaired = 0
  for op, layer in zip(lstm_ops, layers):
    inputs = [int(i) for i in op.inputs]
    bias = layer.get_weights()[2]
    units = layer.units
    input_scale = fb.params(inputs[0])[0]
    for gate, (w, b) in enumerate(zip(_LSTM_INPUT_WEIGHTS, _LSTM_GATE_BIASES)):
      if inputs[w] < 0 or inputs[b] < 0 or np.any(fb.constant_codes(inputs[w], np.int8)):
        continue
      fb.tensor(inputs[w]).quantization.scale = np.array([ZERO_GATE_WEIGHT_SCALE], np.float32)
      fb.set_bias(inputs[b], bias[gate * units:(gate + 1) * units],
                  [input_scale * ZERO_GATE_WEIGHT_SCALE])
      repaired += 1
  return fb.to_bytes() if repaired else bytes(tflite_bytes)


def pin_fixed_ranges(tflite_bytes, ranges, dense_ranges=()):
  """Sets the LSTM inputs/outputs and Dense pre-activations of a converted model to the QAT
  grids.

  Args:
    tflite_bytes: an int8 model from `convert.convert_to_int8` of `build_export_model(...)`.
    ranges: `lstm_fixed_ranges(trained_model)`, one `LstmRanges` per fused LSTM in order.
    dense_ranges: `dense_preactivation_ranges(trained_model)`, one per FULLY_CONNECTED in
      order (its output tensor, the input of TANH/LOGISTIC, gets the grid).

  Returns:
    The rewritten `.tflite` bytes (unchanged content when no range is fixed).
  """
  if not any(r.input or r.output for r in ranges) and not any(dense_ranges):
    return bytes(tflite_bytes)
  fb = _Flatbuffer(tflite_bytes)
  fc_ops = [op for op, code in zip(fb.ops, fb.codes) if code == _FULLY_CONNECTED]
  if any(dense_ranges):
    if len(fc_ops) != len(dense_ranges):
      raise convert.ConversionError(f"the .tflite has {len(fc_ops)} FULLY_CONNECTED op(s) for "
                                    f"{len(dense_ranges)} Dense layer(s); cannot pin them")
    for op, r in zip(fc_ops, dense_ranges):
      if r is not None:
        _pin(fb, [int(op.outputs[0])], *r)
  lstm_ops = [op for op, code in zip(fb.ops, fb.codes) if code == _LSTM]
  if len(lstm_ops) != len(ranges):
    raise convert.ConversionError(f"the .tflite has {len(lstm_ops)} fused LSTM op(s) for "
                                  f"{len(ranges)} LSTM layer(s); cannot pin their ranges")
  for op, r in zip(lstm_ops, ranges):
    inputs = [int(i) for i in op.inputs]
    if r.input is not None:
      _pin(fb, [inputs[0]], *r.input)
    if r.output is not None:
      tied = [int(op.outputs[0]), inputs[_LSTM_OUTPUT_STATE]]
      intermediates = [int(i) for i in (op.intermediates if op.intermediates is not None else [])]
      if len(intermediates) > _LSTM_HIDDEN_INTERMEDIATE:
        tied.append(intermediates[_LSTM_HIDDEN_INTERMEDIATE])
      _pin(fb, tied, *r.output)
  return fb.to_bytes()


def check_cell_clips(tflite_bytes, trained_model):
  """Raises ConversionError unless each fused LSTM clips its cell state where the trained
  QuantizedLSTM of the same position does (`QuantizedLSTMCell.cell_clip`).

  The converter chooses the clip itself (`CONVERTER_CELL_CLIP`); a trained layer that clips
  elsewhere or not at all would run another recurrence in TFLM than in Keras. A plain
  tf_keras LSTM (a float model exported without QAT) does not clip and is not checked: the
  TFLM-vs-Keras validation measures what the clip costs it.
  """
  written = tflite_graph.fused_lstm_cell_clips(tflite_bytes)
  trained = [layer for layer in trained_model.layers if isinstance(layer, keras.layers.RNN)]
  for layer, clip in zip(trained, written):
    if isinstance(layer, QuantizedLSTM) and (layer.cell.cell_clip or 0.0) != clip:
      raise convert.ConversionError(
          f"the converter wrote cell_clip={clip:g} into the fused LSTM of '{layer.name}', "
          f"which trained with cell_clip={layer.cell.cell_clip}: TFLM would clip its cell "
          "state elsewhere than the trained model (see keras_layers.quantized_lstm)")


def unmasked_model(trained_model, config, streaming=True):
  """The pruned `trained_model` with its pruning masks lifted, as the dense model of its run.

  `build_mask_model(config.dense(), streaming)` (same sizes, features and quantization, no
  sparse layers) with every weight of `trained_model` copied by name
  (`tf_tinyse.model.copy_weights`): the raw kernels, which the masks zero only in the forward
  pass. Converted with `convert_trained_model(model, config.dense(), ...)`, it is the dense
  int8 reference a pruned export's speed is compared with.

  Returns (model, dense config), or None where the zeros are in the weights themselves
  (`--pruning=tfmot`: its stripped layers hold no mask to lift) or the config is dense.
  """
  if not config.has_masks:
    return None
  dense_config = config.dense()
  model = model_lib.build_mask_model(dense_config, streaming=streaming)
  model_lib.copy_weights(trained_model, model)
  return model, dense_config


def convert_trained_model(trained_model, config, representative_features):
  """Trained (float or QAT) mask model → int8 streaming `.tflite` bytes for TFLite Micro.

  `build_export_model`, `convert.convert_to_int8` with the front-end output of
  `representative_features` (mel features, one array [frames, bands] per utterance), then
  `pin_fixed_ranges` with the trained model's fixed LSTM grids, then the integer-only and
  cell-clip checks.
  """
  export = build_export_model(trained_model, config)
  fe = frontend.Frontend.from_model(trained_model, config.feature)
  tflite_bytes = convert.convert_to_int8(
      export, [fe.model_input(f) for f in representative_features])
  # Before pinning (whose re-encoding would overflow the saturated biases) and after it (the
  # bias encoded once from its float value at the final input scale, not rounded twice).
  tflite_bytes = repair_zero_gate_matrices(tflite_bytes, export)
  ranges = lstm_fixed_ranges(trained_model)
  tflite_bytes = pin_fixed_ranges(tflite_bytes, ranges, dense_preactivation_ranges(trained_model))
  tflite_bytes = repair_zero_gate_matrices(tflite_bytes, export)
  convert.check_tflm_integer(tflite_bytes, len(ranges))
  check_cell_clips(tflite_bytes, trained_model)
  return tflite_bytes
