"""Fake quantizers for training-aware quantization that reproduce the TFLite int8 grid.

A quantizer is a small object, `quantizer(x) -> x_on_grid`, with straight-through
gradients; layers take quantizers as arguments instead of carrying quantization flags.
Each quantizer here reproduces one thing that `tf.lite.TFLiteConverter` does when it
converts a plain tf_keras model with full-integer quantization
(`optimizations=[DEFAULT]`, a representative dataset, `TFLITE_BUILTINS_INT8`).
Measured with TF 2.21 by converting small models and reading
`Interpreter.get_tensor_details()` against the float weights:

Weights (`MaxAbsQuantizer`): symmetric int8 in [-127, 127], zero point 0,
scale = max|w| / 127, code = round(w / scale) (dequantized codes equal this to ~1e-8).
- FULLY_CONNECTED (Keras Dense): one scale per output unit (per channel).
  Dense kernel [in, out] -> `MaxAbsQuantizer(axis=-1)`.
- UNIDIRECTIONAL_SEQUENCE_LSTM: the fused op holds eight separate matrices (input and
  recurrent, for each gate i, f, c, o), each with ONE per-tensor scale. The Keras
  kernel [in, 4*units] is these four gate matrices side by side, so
  `MaxAbsQuantizer(splits=4)` (one scale per gate block of the last axis).
- Biases become int32 with scale = input_scale * weight_scale (LSTM: input scale times
  that gate's input-kernel scale), a step of ~6e-5 at our sizes, so biases stay float.

Activations (`FixedRangeQuantizer`, i.e. `tf.quantization.fake_quant_with_min_max_args`,
whose nudging of the range so that 0 is exact is the same as the converter's):
- int8 activations are asymmetric: scale = (max - min) / 255 and a zero point, with
  min/max from calibration. A tensor calibrated to [-1, 1] gets scale 2/255, zero
  point -1 (codes -128..127 mean -127/127.5 .. 128/127.5), exactly the grid of
  `FixedRangeQuantizer(8, -1, 1)`. The LSTM output h (which is also the recurrent
  state, same scale) lies in (-1, 1); its calibrated range is at most [-1, 1], so the
  exported grid is this one or finer.
- TANH and LOGISTIC outputs are NOT calibrated: TFLite fixes int8 TANH to scale 1/128,
  zero point 0 (grid k/128, k in [-128, 127]) and int8 LOGISTIC to scale 1/256, zero
  point -128 (grid k/256, k in [0, 255]); in 16x8 mode both are int16, scale 1/32768,
  zero point 0. `activation_output_quantizer(activation, bits)` returns these grids,
  which the QAT model then reproduces exactly.
- Inside the int8 LSTM TFLite computes in 16 bits (the "8x8->16" LSTM): gate
  pre-activations int16 at scale 2^-12 (range [-8, 8)), gate outputs int16 at 2^-15,
  cell state int16 with a power-of-two scale 2^-15 * 2^ceil(log2(max|c|)) from
  calibration (measured: max|c| <= 1 -> 3.05e-5 = 2^-15, max|c| <= 2 -> 2^-14). These
  steps are >= 128x finer than the 8-bit grids, so they need no fake quantization;
  a cell-state quantizer can still be given to QuantizedLSTM (16 bits, power of two).

The converter's min/max of the other calibrated tensors (model input, QEQ output, LSTM
h, Dense pre-activations) follow the representative data, not training; where the
calibrated range is narrower than [-1, 1] the exported grid is finer than the QAT grid.
16 bits: whole-model 16x8 conversion fails ("Quantization to 16x8-bit not yet supported
for op: 'UNIDIRECTIONAL_SEQUENCE_LSTM'") and the converter has no per-layer 16-bit
option, so the exported output layer is int8 (LOGISTIC grid 1/256).
"""
import tensorflow as tf

_REGISTRY = {}


def register(cls):
  """Class decorator: makes a Quantizer subclass reachable by name for `deserialize`."""
  _REGISTRY[cls.__name__] = cls
  return cls


class Quantizer:
  """Base class: `__call__(x)` returns x fake-quantized, with straight-through gradient."""

  def __call__(self, inputs):
    raise NotImplementedError

  def get_config(self):
    return {}

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  def __eq__(self, other):
    return type(self) is type(other) and self.get_config() == other.get_config()

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


def _round_half_away(x):
  # TFLite quantizes weights with std::round (half away from zero); tf.round rounds
  # half to even, which would differ on exact ties.
  return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


@register
class MaxAbsQuantizer(Quantizer):
  """Symmetric weight quantizer, scale = max|w| / (2^(bits-1) - 1), as the converter does.

  Args:
    bits: bit width; codes lie in [-(2^(bits-1) - 1), 2^(bits-1) - 1] (narrow range).
    axis: None for one scale per block (per tensor), or the axis that keeps its own
      scale per index (per channel; -1 for a Dense kernel's output units).
    splits: the last axis is cut into this many equal contiguous blocks, each with its
      own scale (4 for an LSTM kernel: the gate matrices i, f, c, o). Only with axis=None.
  """

  def __init__(self, bits=8, axis=None, splits=1):
    if axis is not None and splits != 1:
      raise ValueError("MaxAbsQuantizer: use either axis (per channel) or splits, not both")
    self.bits = int(bits)
    self.axis = axis
    self.splits = int(splits)

  @property
  def max_code(self):
    return 2 ** (self.bits - 1) - 1

  def scale(self, weights):
    """The scale(s), broadcastable against `weights`."""
    weights = tf.convert_to_tensor(weights)
    rank = weights.shape.rank
    if self.axis is not None:
      axis = self.axis % rank
      reduce_axes = [a for a in range(rank) if a != axis]
      max_abs = tf.reduce_max(tf.abs(weights), axis=reduce_axes, keepdims=True)
    else:
      blocks = tf.reshape(tf.abs(weights), [-1, self.splits, weights.shape[-1] // self.splits])
      max_abs = tf.reduce_max(blocks, axis=[0, 2], keepdims=True)  # [1, splits, 1]
      max_abs = tf.repeat(tf.reshape(max_abs, [self.splits]), weights.shape[-1] // self.splits)
    # An all-zero block (e.g. fully pruned) has no range; any scale gives code 0.
    return tf.where(max_abs > 0, max_abs / self.max_code, tf.ones_like(max_abs))

  def codes(self, weights):
    """The integer codes (as floats) that the converter stores for `weights`."""
    weights = tf.convert_to_tensor(weights)
    return _round_half_away(weights / self.scale(weights))

  def __call__(self, inputs):
    quantized = self.codes(inputs) * self.scale(inputs)
    # Straight-through: forward is the grid value, gradient is identity (every weight
    # lies inside its own max-abs range, so there is no clipping to mask).
    return inputs + tf.stop_gradient(quantized - inputs)

  def get_config(self):
    return {"bits": self.bits, "axis": self.axis, "splits": self.splits}


@register
class FixedRangeQuantizer(Quantizer):
  """Uniform fake quantization on a fixed range, `fake_quant_with_min_max_args`.

  The range is nudged so that 0 is exactly representable, as the converter does, and
  the gradient is straight-through inside the range and zero outside (values there
  saturate). `FixedRangeQuantizer(8, -1.0, 1.0)` is the paper's fixed [-1, 1] range.
  """

  def __init__(self, bits=8, range_min=-1.0, range_max=1.0, narrow_range=False):
    if not 2 <= int(bits) <= 16:
      raise ValueError(f"FixedRangeQuantizer: bits must be in [2, 16], got {bits}")
    if not range_min <= 0.0 <= range_max or range_min == range_max:
      raise ValueError(f"FixedRangeQuantizer: range [{range_min}, {range_max}] must contain 0")
    self.bits = int(bits)
    self.range_min = float(range_min)
    self.range_max = float(range_max)
    self.narrow_range = bool(narrow_range)

  def __call__(self, inputs):
    return tf.quantization.fake_quant_with_min_max_args(
        inputs, min=self.range_min, max=self.range_max, num_bits=self.bits,
        narrow_range=self.narrow_range)

  def get_config(self):
    return {"bits": self.bits, "range_min": self.range_min, "range_max": self.range_max,
            "narrow_range": self.narrow_range}


def activation_output_quantizer(activation, bits=8):
  """The fixed output grid TFLite gives `activation` ("tanh" or "sigmoid").

  int8: tanh -> k/128, k in [-128, 127]; sigmoid -> k/256, k in [0, 255].
  int16 (16x8 mode): both k/32768, k in [-32768, 32767].
  """
  if bits == 16:
    return FixedRangeQuantizer(16, -1.0, 1.0 - 2.0 ** -15)
  if bits != 8:
    raise ValueError(f"activation_output_quantizer: bits must be 8 or 16, got {bits}")
  if activation == "tanh":
    return FixedRangeQuantizer(8, -1.0, 127.0 / 128.0)
  if activation == "sigmoid":
    return FixedRangeQuantizer(8, 0.0, 255.0 / 256.0)
  raise ValueError(f"activation_output_quantizer: no fixed TFLite grid for {activation!r}; "
                   "use FixedRangeQuantizer with the range you train for")


# Pre-activation ranges: a trade of range against resolution. The int8 grid step is
# 2 * limit / 255, and one step moves the output by up to slope * step: sigmoid (slope 1/4)
# over [-4, 4] moves at most 2 LSB of its 1/256 output grid, tanh (slope 1) over [-2, 2] at most
# 2 LSB of its 1/128 grid, where wider ranges (±8, ±4) cost 4 LSB per step (measured: TFLM vs
# QAT disagreement then 7.4 % of mask values above 2 LSB, instead of 0.5 %). The price: the
# outputs saturate earlier, sigmoid within [0.018, 0.982] and tanh within ±0.964, which the
# network learns to live with during quantization-aware training.
_ACTIVATION_INPUT_RANGE = {"tanh": 2.0, "sigmoid": 4.0}


def activation_input_quantizer(activation, bits=8):
  """A fixed int8 grid for the input of `activation` ("tanh" or "sigmoid").

  The int8 export rounds a FULLY_CONNECTED's output to int8 before TANH/LOGISTIC; a fixed
  range, pinned in the exported model, makes that grid the one training used (see
  `_ACTIVATION_INPUT_RANGE` for the range chosen).
  """
  if activation not in _ACTIVATION_INPUT_RANGE:
    raise ValueError(f"activation_input_quantizer: no fixed range for {activation!r}")
  limit = _ACTIVATION_INPUT_RANGE[activation]
  return FixedRangeQuantizer(bits, -limit, limit)


def serialize(quantizer):
  """Quantizer (or None) -> a JSON-able dict (or None), for layer get_config."""
  if quantizer is None:
    return None
  return {"class_name": type(quantizer).__name__, "config": quantizer.get_config()}


def deserialize(config):
  """Inverse of `serialize`."""
  if config is None:
    return None
  name = config["class_name"]
  if name not in _REGISTRY:
    raise ValueError(f"unknown quantizer {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name].from_config(config["config"])


def get(identifier):
  """None, a Quantizer, or a serialized dict -> None or a Quantizer."""
  if identifier is None or isinstance(identifier, Quantizer):
    return identifier
  if isinstance(identifier, dict):
    return deserialize(identifier)
  raise ValueError(f"cannot interpret {identifier!r} as a quantizer")


__all__ = ["Quantizer", "MaxAbsQuantizer", "FixedRangeQuantizer", "activation_output_quantizer",
           "register", "serialize", "deserialize", "get"]
