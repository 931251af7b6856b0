"""SparseDense: a QuantizedDense whose kernel is pruned in groups (weight, block or unit).

The same two modes as `keras_layers.sparse_lstm` ("learned": a trainable threshold per layer;
"fixed": mask variables `kernel_mask`, `bias_mask`), through the `transform_kernel` /
`transform_bias` hooks of QuantizedDense, before the kernel quantizer.

`structure=None` prunes no group of this layer itself: the network's output layer under unit
pruning, which keeps its 128 mask outputs but loses the kernel rows that read pruned units of
the layer before it (`read_inputs_from`).
"""
import tensorflow as tf
import tf_keras as keras

from keras_layers import learned_threshold
from keras_layers import pruning_groups
from keras_layers.quantized_dense import QuantizedDense
from keras_layers.sparse_lstm import FIXED
from keras_layers.sparse_lstm import LEARNED
from keras_layers.sparse_lstm import check_pruning_mode


@keras.utils.register_keras_serializable(package="keras_layers")
class SparseDense(QuantizedDense):
  """QuantizedDense with a group-sparse kernel; see the module docstring.

  Args:
    structure: "weight", "block", "unit" or None (only rows of pruned upstream units).
    block_size: inputs per block (1×B blocks along the MAC direction).
    pruning: "learned" (trainable threshold) or "fixed" (mask variables).
    temperature: straight-through band of the learned threshold.
    Other arguments: as QuantizedDense (kernel_quantizer=None trains in float).
  """

  def __init__(self, units, structure="weight", block_size=8, pruning=LEARNED,
               temperature=learned_threshold.DEFAULT_TEMPERATURE, **kwargs):
    super().__init__(units, **kwargs)
    if structure is not None:
      pruning_groups.check_structure(structure, block_size)
    check_pruning_mode(pruning)
    self.structure = structure
    self.block_size = int(block_size)
    self.pruning = pruning
    self.temperature = float(temperature)
    object.__setattr__(self, "_upstream", None)

  def build(self, input_shape):
    super().build(input_shape)
    if self.pruning == FIXED:
      ones = keras.initializers.Ones()
      self.kernel_mask = self.add_weight("kernel_mask", shape=self.kernel.shape,
                                         initializer=ones, trainable=False)
      self.bias_mask = self.add_weight("bias_mask", shape=(self.units,), initializer=ones,
                                       trainable=False)
    elif self.structure is not None:
      self.pruning_threshold = self.add_weight(
          "pruning_threshold", shape=(), initializer="zeros", trainable=True)

  def read_inputs_from(self, upstream):
    """Unit pruning: zero the kernel rows that read the pruned units of `upstream`."""
    object.__setattr__(self, "_upstream", upstream)

  def _group_masks(self, soft):
    scores = pruning_groups.dense_scores(self.kernel, self.structure, self.block_size)
    if soft:  # the sparsity loss moves the threshold only (see sparse_lstm.SparseLSTMCell.masks)
      scores = tf.stop_gradient(scores)
    return learned_threshold.threshold_mask(scores, self.pruning_threshold,
                                            self.temperature)[1 if soft else 0]

  def unit_mask(self):
    """[units] mask of the kept units (unit structure, learned pruning), else None."""
    if self.structure != pruning_groups.UNIT or self.pruning != LEARNED:
      return None
    return self._group_masks(soft=False)

  def masks(self, soft=False):
    """(kernel mask, bias mask) as the forward pass applies them (`soft`: the soft masks)."""
    if self.pruning == FIXED:
      return self.kernel_mask, self.bias_mask
    if self.structure is None:
      kernel_mask = keras.backend.ones_like(self.kernel)
      bias_mask = keras.backend.ones_like(self.bias) if self.use_bias else None
    else:
      kernel_mask, bias_mask = pruning_groups.dense_masks(
          self._group_masks(soft), self.kernel.shape, self.structure, self.block_size)
    upstream = self._upstream.unit_mask() if self._upstream is not None else None
    if upstream is not None and not soft:
      kernel_mask = pruning_groups.input_rows(kernel_mask, upstream)
    return kernel_mask, bias_mask

  def prunable_weights(self):
    return [self.kernel]

  def transform_kernel(self, kernel):
    return kernel * self.masks()[0]

  def transform_bias(self, bias):
    return bias * self.masks()[1]

  @property
  def learns_threshold(self):
    return self.pruning == LEARNED and self.structure is not None

  def get_config(self):
    config = super().get_config()
    config.update({"structure": self.structure, "block_size": self.block_size,
                   "pruning": self.pruning, "temperature": self.temperature})
    return config
