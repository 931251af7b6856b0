"""QuantizedLSTM: an LSTM that trains on the grid of TFLite's int8 fused LSTM.

The int8 UNIDIRECTIONAL_SEQUENCE_LSTM the converter makes from a tf_keras LSTM holds
eight int8 weight matrices, each with one symmetric scale max|W|/127 (input and
recurrent, per gate i, f, c, o); it computes gates and the cell state in int16 (fine
grids, see `quantizers`) and emits h in int8, and that same int8 h is fed back as the
recurrent state. The cell here mirrors that:

    x (optional input quantizer) -> z = sat(sat(x @ Q_k(K) + b) + sat(h_prev @ Q_r(R)))
    i, f, o = sigmoid, g = tanh, c = clip(f * c_prev + i * g, ±cell_clip)
    (optional cell quantizer), h = output_quantizer(o * tanh(c))  # output AND next state

The clip is the converter's: it writes `cell_clip=10.0` into every UNIDIRECTIONAL_SEQUENCE_LSTM
it makes from a tf_keras LSTM (TF 2.21, read back from the flatbuffer), and TFLite and TFLM
clip c to it at every step, in float and in int8. A tf_keras LSTM does not clip, so a model
whose cells integrate past 10 (seen: |c| up to 519) runs another recurrence once deployed;
training with the same clip makes the QAT model the one that runs.

`sat` is the int16 gate grid of the same op: TFLM's int8 LSTM kernel computes each gate's
pre-activation in int16 at the fixed scale 2^-12 (Q3.12, [-8, 8)) as two fully-connected
products - input (with the gate bias) and recurrent - each saturated to that range, then added
with saturation. A float sum does not saturate: a 256-unit layer whose input product reached
±38 while the recurrent product pulled the sum back inside ±6 (0.5 % of its gate values on
test speech) ran another recurrence in TFLM, and the int8 mask drifted from the QAT mask by
p99 12 LSB, max 61 (measured, paper-size model; `tf_tinyse.export` validates every export
against the QAT model). TFLite's own interpreter differs here: it adds the recurrent product
to the saturated input product unsaturated (one saturation less); the grid above is TFLM's.

Weights have the layout and names of a tf_keras LSTM (`kernel` [in, 4u],
`recurrent_kernel` [u, 4u], `bias` [4u], gate order i, f, c, o), so an export model's
plain `tf_keras.layers.LSTM` takes them with `set_weights(get_weights())`.

Pruning hooks: `QuantizedLSTMCell.transform_weights(kernel, recurrent_kernel)` and
`transform_bias(bias)` are the identity here; a sparse subclass (`keras_layers.sparse_lstm`)
overrides them to return the masked matrices and bias. The quantizers then see the masked
weights, so the per-gate scales are those the converter will compute from the pruned weights.
`forward_weights()` gives the weights as the forward pass uses them, in tf_keras LSTM order:
what the export and parameter counts read, whatever extra (mask, threshold) variables a
subclass holds.
"""
import tensorflow as tf
import tf_keras as keras

from keras_layers import quantizers
from keras_layers import unrolling

# What the TFLite converter writes into a fused LSTM converted from a tf_keras LSTM
# (UnidirectionalSequenceLSTMOptions.cellClip); `tflm_export.convert` checks every export.
CONVERTER_CELL_CLIP = 10.0
# The saturating range of the int8 fused LSTM's int16 gate pre-activations in TFLM (Q3.12:
# scale 2^-12, codes -32768..32767), fixed in the kernel whatever the calibration saw.
INT16_GATE_RANGE = (-32768 / 4096, 32767 / 4096)


def _default_gate_quantizer():
  # The converter gives each gate's matrix one per-tensor int8 scale.
  return quantizers.MaxAbsQuantizer(8, splits=4)


def _default_output_quantizer():
  # h = o * tanh(c) lies in (-1, 1): the paper's fixed [-1, 1] range at 8 bits.
  return quantizers.FixedRangeQuantizer(8, -1.0, 1.0)


def _saturate(z):
  return tf.clip_by_value(z, *INT16_GATE_RANGE)


def _quantizer_arg(value, default_factory):
  if isinstance(value, str) and value == "default":
    return default_factory()
  return quantizers.get(value)


@keras.utils.register_keras_serializable(package="keras_layers")
class QuantizedLSTMCell(keras.layers.LSTMCell):
  """LSTMCell with fake-quantized weights, hidden output/state and (optionally) cell state.

  `"default"` quantizers: kernel and recurrent kernel `MaxAbsQuantizer(8, splits=4)`,
  output `FixedRangeQuantizer(8, -1, 1)`; cell state None (TFLite keeps it in int16 with
  a power-of-two scale, a grid >= 128x finer than h's). None disables a quantizer.

  cell_clip: |c| is clipped to this after each update, as the deployed op does
  (`CONVERTER_CELL_CLIP`); None or 0 for no clip (not what TFLite runs).
  saturate_gates: the input and recurrent products and their sum saturate to
  `INT16_GATE_RANGE`, as the deployed op's int16 gate arithmetic in TFLM does; False: float
  sums (not what TFLM runs).
  """

  def __init__(self, units, kernel_quantizer="default", recurrent_quantizer="default",
               output_quantizer="default", cell_quantizer=None, cell_clip=CONVERTER_CELL_CLIP,
               saturate_gates=True, **kwargs):
    super().__init__(units, **kwargs)
    self.cell_clip = float(cell_clip) if cell_clip else None
    self.saturate_gates = bool(saturate_gates)
    self.kernel_quantizer = _quantizer_arg(kernel_quantizer, _default_gate_quantizer)
    self.recurrent_quantizer = _quantizer_arg(recurrent_quantizer, _default_gate_quantizer)
    self.output_quantizer = _quantizer_arg(output_quantizer, _default_output_quantizer)
    self.cell_quantizer = quantizers.get(cell_quantizer)
    if self.dropout or self.recurrent_dropout:
      raise ValueError("QuantizedLSTMCell does not implement dropout")
    # Set by QuantizedLSTM for the duration of one call, so that the weights are
    # quantized once per sequence rather than once per time step. object.__setattr__
    # keeps Keras from tracking these tensors as layer state.
    object.__setattr__(self, "_weights_for_call", None)
    # True while QuantizedLSTM feeds the steps input products it computed for every frame at
    # once (unrolled training): the step's `inputs` are then z_input itself.
    object.__setattr__(self, "_inputs_are_products", False)

  def transform_weights(self, kernel, recurrent_kernel):
    """Hook applied before quantization (identity; pruning masks go here)."""
    return kernel, recurrent_kernel

  def transform_bias(self, bias):
    """Hook on the gate biases (identity; a pruned unit's biases are masked here)."""
    return bias

  def forward_bias(self):
    """The bias as the forward pass uses it (None without a bias)."""
    return self.transform_bias(self.bias) if self.use_bias else None

  def quantized_weights(self):
    """(kernel, recurrent_kernel) as the forward pass uses them."""
    kernel, recurrent_kernel = self.transform_weights(self.kernel, self.recurrent_kernel)
    if self.kernel_quantizer is not None:
      kernel = self.kernel_quantizer(kernel)
    if self.recurrent_quantizer is not None:
      recurrent_kernel = self.recurrent_quantizer(recurrent_kernel)
    return kernel, recurrent_kernel

  def call(self, inputs, states, training=None):
    h_prev, c_prev = states[0], states[1]
    kernel, recurrent_kernel, bias = (self._weights_for_call or
                                      (*self.quantized_weights(), self.forward_bias()))
    if self._inputs_are_products:
      z_input = inputs
    else:
      z_input = unrolling.input_product(inputs, kernel, bias)
    z_recurrent = tf.matmul(h_prev, recurrent_kernel)
    if self.saturate_gates:
      z = _saturate(_saturate(z_input) + _saturate(z_recurrent))
    else:
      z = z_input + z_recurrent
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    i = self.recurrent_activation(z_i)
    f = self.recurrent_activation(z_f)
    o = self.recurrent_activation(z_o)
    c = f * c_prev + i * self.activation(z_c)
    if self.cell_clip is not None:
      c = tf.clip_by_value(c, -self.cell_clip, self.cell_clip)
    if self.cell_quantizer is not None:
      c = self.cell_quantizer(c)
    h = o * self.activation(c)
    if self.output_quantizer is not None:
      h = self.output_quantizer(h)
    return h, [h, c]

  def get_config(self):
    config = super().get_config()
    for key in ("dropout", "recurrent_dropout", "implementation"):
      config.pop(key, None)
    config.update({
        "kernel_quantizer": quantizers.serialize(self.kernel_quantizer),
        "recurrent_quantizer": quantizers.serialize(self.recurrent_quantizer),
        "output_quantizer": quantizers.serialize(self.output_quantizer),
        "cell_quantizer": quantizers.serialize(self.cell_quantizer),
        "cell_clip": self.cell_clip,
        "saturate_gates": self.saturate_gates,
    })
    return config


@keras.utils.register_keras_serializable(package="keras_layers")
class QuantizedLSTM(keras.layers.RNN):
  """RNN of a QuantizedLSTMCell; training (sequences) and streaming (stateful) forms.

  Args:
    units: hidden size.
    return_sequences, return_state, stateful: as tf_keras LSTM. The streaming form is
      `stateful=True` with a fixed batch input shape (1, 1, features); `reset_states()`
      zeroes h and c.
    kernel_quantizer, recurrent_quantizer, output_quantizer, cell_quantizer, cell_clip,
      saturate_gates: see QuantizedLSTMCell.
    input_quantizer: applied to the whole input sequence (e.g. the first LSTM's
      `FixedRangeQuantizer(8, -1, 1)` after QEQ); None when the input is already on a grid.
    activation, recurrent_activation, use_bias, initializers, regularizers,
      constraints, unit_forget_bias: as tf_keras LSTM.
  """

  cell_class = QuantizedLSTMCell

  def __init__(self, units, return_sequences=True, return_state=False, stateful=False,
               kernel_quantizer="default", recurrent_quantizer="default",
               output_quantizer="default", cell_quantizer=None, input_quantizer=None,
               cell_clip=CONVERTER_CELL_CLIP, saturate_gates=True, activation="tanh",
               recurrent_activation="sigmoid",
               use_bias=True,
               kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
               bias_initializer="zeros", unit_forget_bias=True, kernel_regularizer=None,
               recurrent_regularizer=None, bias_regularizer=None, kernel_constraint=None,
               recurrent_constraint=None, bias_constraint=None, cell_options=None, **kwargs):
    # cell_options: extra keyword arguments of a subclass's `cell_class` (e.g. sparsity).
    cell = self.cell_class(
        units, **(cell_options or {}), kernel_quantizer=kernel_quantizer, recurrent_quantizer=recurrent_quantizer,
        output_quantizer=output_quantizer, cell_quantizer=cell_quantizer, cell_clip=cell_clip,
        saturate_gates=saturate_gates, activation=activation,
        recurrent_activation=recurrent_activation, use_bias=use_bias,
        kernel_initializer=kernel_initializer, recurrent_initializer=recurrent_initializer,
        bias_initializer=bias_initializer, unit_forget_bias=unit_forget_bias,
        kernel_regularizer=kernel_regularizer, recurrent_regularizer=recurrent_regularizer,
        bias_regularizer=bias_regularizer, kernel_constraint=kernel_constraint,
        recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint,
        dtype=kwargs.get("dtype"), trainable=kwargs.get("trainable", True),
        name="lstm_cell")
    super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                     stateful=stateful, **kwargs)
    self.input_quantizer = quantizers.get(input_quantizer)
    self.input_spec = [keras.layers.InputSpec(ndim=3)]

  @property
  def units(self):
    return self.cell.units

  def get_prunable_weights(self):
    """tfmot's `PrunableLayer` interface (`tf_tinyse.tfmot_pruning`): the matrices that
    `prune_low_magnitude` masks, by assigning the masked values to these variables."""
    return [self.cell.kernel, self.cell.recurrent_kernel]

  def forward_weights(self):
    """[kernel, recurrent_kernel(, bias)] as numpy, as the forward pass uses them (masked,
    on the int8 grid), in the order a tf_keras LSTM's `set_weights` takes."""
    kernel, recurrent_kernel = self.cell.quantized_weights()
    bias = self.cell.forward_bias()
    return [w.numpy() for w in (kernel, recurrent_kernel, bias) if w is not None]

  def call(self, inputs, mask=None, training=None, initial_state=None):
    if self.input_quantizer is not None:
      inputs = self.input_quantizer(inputs)
    # Quantize the weights once for the whole sequence; the cell's step reads them.
    kernel, recurrent_kernel, bias = (*self.cell.quantized_weights(), self.cell.forward_bias())
    object.__setattr__(self.cell, "_weights_for_call", (kernel, recurrent_kernel, bias))
    # A training batch of a fixed, short length runs the recurrence without a loop (faster on
    # a CPU; the same arithmetic): keras_layers.unrolling. Unrolled, the input products of all
    # frames are one matmul, before the steps (as UnrollingLSTM's).
    unroll = unrolling.unrolls(self, inputs, training, mask, initial_state)
    if unroll and not (self.go_backwards or self.time_major):
      inputs = unrolling.input_product(inputs, kernel, bias)
      object.__setattr__(self.cell, "_inputs_are_products", True)
    try:
      with unrolling.unrolled(self, enabled=unroll):
        return super().call(inputs, mask=mask, training=training, initial_state=initial_state)
    finally:
      object.__setattr__(self.cell, "_weights_for_call", None)
      object.__setattr__(self.cell, "_inputs_are_products", False)

  def get_config(self):
    config = super().get_config()
    cell_config = self.cell.get_config()
    del config["cell"]
    for key in ("name", "trainable", "dtype"):
      cell_config.pop(key, None)
    config.update(cell_config)
    config["input_quantizer"] = quantizers.serialize(self.input_quantizer)
    return config

  @classmethod
  def from_config(cls, config):
    return cls(**config)
