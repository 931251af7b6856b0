"""QuantizedDense: a Dense layer that trains on the grid its int8 TFLite export will use.

Forward pass: input quantizer (optional) -> kernel quantizer on `transform_kernel(kernel)`
-> x @ kernel + bias -> activation -> activation quantizer. The variables are exactly a
tf_keras Dense's (`kernel` [in, units], `bias` [units]), so the export model takes them
with `plain_dense.set_weights(quantized_dense.get_weights())` and the converter
re-derives the same per-channel scales from them.

Pruning hooks: `transform_kernel(kernel)` and `transform_bias(bias)` are the identity here. A
sparse subclass (`keras_layers.sparse_dense`) overrides them to return the masked kernel (and,
for a pruned unit, the masked bias); the kernel quantizer then sees the masked matrix, like the
converter will. `forward_weights()` gives what the forward pass uses, in tf_keras Dense order.
"""
import tensorflow as tf
import tf_keras as keras

from keras_layers import quantizers


@keras.utils.register_keras_serializable(package="keras_layers")
class QuantizedDense(keras.layers.Dense):
  """Dense with fake-quantized kernel and activations (straight-through gradients).

  Args:
    units, activation, use_bias, initializers...: as tf_keras Dense.
    kernel_quantizer: default `MaxAbsQuantizer(8, axis=-1)`, the converter's per-channel
      int8 FULLY_CONNECTED weights. None trains the kernel in float.
    activation_quantizer: applied after the activation; e.g.
      `quantizers.activation_output_quantizer("tanh")` for TFLite's fixed TANH grid.
    input_quantizer: applied to the inputs (None when the previous layer already
      quantizes its output).
    preactivation_quantizer: applied to `x @ kernel + bias` before the activation. TFLite
      does not fuse tanh/sigmoid into FULLY_CONNECTED: the int8 model rounds the
      pre-activation to an int8 tensor first, which dominates its error at the output
      unless training sees the same grid (`quantizers.activation_input_quantizer`).
  """

  def __init__(self, units, activation=None, kernel_quantizer="default",
               activation_quantizer=None, input_quantizer=None, preactivation_quantizer=None,
               **kwargs):
    super().__init__(units, activation=activation, **kwargs)
    if isinstance(kernel_quantizer, str) and kernel_quantizer == "default":
      kernel_quantizer = quantizers.MaxAbsQuantizer(8, axis=-1)
    self.kernel_quantizer = quantizers.get(kernel_quantizer)
    self.activation_quantizer = quantizers.get(activation_quantizer)
    self.input_quantizer = quantizers.get(input_quantizer)
    self.preactivation_quantizer = quantizers.get(preactivation_quantizer)

  def transform_kernel(self, kernel):
    """Hook applied to the kernel before quantization (identity; pruning masks here)."""
    return kernel

  def transform_bias(self, bias):
    """Hook on the bias (identity; a pruned unit's bias is masked here)."""
    return bias

  def get_prunable_weights(self):
    """tfmot's `PrunableLayer` interface (`tf_tinyse.tfmot_pruning`): the kernel, which
    `prune_low_magnitude` masks by assigning the masked values to it."""
    return [self.kernel]

  def forward_weights(self):
    """[kernel(, bias)] as numpy, as the forward pass uses them (tf_keras Dense order)."""
    weights = [self.quantized_kernel()] + ([self.transform_bias(self.bias)] if self.use_bias
                                           else [])
    return [w.numpy() for w in weights]

  def quantized_kernel(self):
    """The kernel as the forward pass uses it (transformed, then fake-quantized)."""
    kernel = self.transform_kernel(self.kernel)
    return kernel if self.kernel_quantizer is None else self.kernel_quantizer(kernel)

  def call(self, inputs):
    inputs = tf.cast(inputs, self.compute_dtype)
    if self.input_quantizer is not None:
      inputs = self.input_quantizer(inputs)
    # matmul broadcasts a [in, units] kernel over [batch, time, in] inputs.
    outputs = tf.matmul(inputs, self.quantized_kernel())
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.transform_bias(self.bias))
    if self.preactivation_quantizer is not None:
      outputs = self.preactivation_quantizer(outputs)
    if self.activation is not None:
      outputs = self.activation(outputs)
    if self.activation_quantizer is not None:
      outputs = self.activation_quantizer(outputs)
    return outputs

  def get_config(self):
    config = super().get_config()
    config.update({
        "kernel_quantizer": quantizers.serialize(self.kernel_quantizer),
        "activation_quantizer": quantizers.serialize(self.activation_quantizer),
        "input_quantizer": quantizers.serialize(self.input_quantizer),
        "preactivation_quantizer": quantizers.serialize(self.preactivation_quantizer),
    })
    return config
