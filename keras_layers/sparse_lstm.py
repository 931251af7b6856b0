"""SparseLSTM: a QuantizedLSTM whose weights are pruned in groups (weight, block or unit).

Two ways to hold the pruning, chosen by `pruning`:
- "learned" (online, the paper's method): one trainable threshold per layer
  (`pruning_threshold`); the mask is recomputed from the weights in every forward pass
  (`keras_layers.learned_threshold`), so it persists through checkpoints and `best/` with the
  weights and the threshold, and training moves it.
- "fixed": non-trainable mask variables (`kernel_mask`, `recurrent_kernel_mask`, `bias_mask`)
  set from outside (offline pruning, or fine-tuning with frozen masks).

The masks go through the `transform_weights` / `transform_bias` hooks of QuantizedLSTMCell,
before the weight quantizers: the per-gate int8 scales are those of the pruned matrices, as
in the export. Groups are `keras_layers.pruning_groups`'; for unit pruning the next layer reads
this layer's unit mask (`SparseDense.read_inputs_from` / `SparseLSTM.read_inputs_from`) to
remove the row that reads a pruned unit, and this layer removes rows of its own kernel for the
pruned units of the layer before it.

Extra variables come after the Keras LSTM's `kernel`, `recurrent_kernel`, `bias`; code that
moves weights between models matches them by name (`tf_tinyse.model.copy_weights`).
"""
import tensorflow as tf
import tf_keras as keras

from keras_layers import learned_threshold
from keras_layers import pruning_groups
from keras_layers.quantized_lstm import QuantizedLSTM
from keras_layers.quantized_lstm import QuantizedLSTMCell

LEARNED, FIXED = "learned", "fixed"
PRUNING_MODES = (LEARNED, FIXED)


def check_pruning_mode(pruning):
  if pruning not in PRUNING_MODES:
    raise ValueError(f"pruning must be one of {PRUNING_MODES}, got {pruning!r}")


@keras.utils.register_keras_serializable(package="keras_layers")
class SparseLSTMCell(QuantizedLSTMCell):
  """QuantizedLSTMCell with group-sparse kernels (see the module docstring)."""

  def __init__(self, units, structure="weight", block_size=8, pruning=LEARNED,
               temperature=learned_threshold.DEFAULT_TEMPERATURE, **kwargs):
    super().__init__(units, **kwargs)
    pruning_groups.check_structure(structure, block_size)
    check_pruning_mode(pruning)
    self.structure = structure
    self.block_size = int(block_size)
    self.pruning = pruning
    self.temperature = float(temperature)
    # The layer whose pruned units this layer's inputs are (unit pruning); not tracked by
    # Keras: it is another layer of the same model, set by the model builder.
    object.__setattr__(self, "_upstream", None)

  def build(self, input_shape):
    super().build(input_shape)
    if self.pruning == LEARNED:
      self.pruning_threshold = self.add_weight(
          "pruning_threshold", shape=(), initializer="zeros", trainable=True)
    else:
      ones = keras.initializers.Ones()
      self.kernel_mask = self.add_weight("kernel_mask", shape=self.kernel.shape,
                                         initializer=ones, trainable=False)
      self.recurrent_kernel_mask = self.add_weight(
          "recurrent_kernel_mask", shape=self.recurrent_kernel.shape, initializer=ones,
          trainable=False)
      self.bias_mask = self.add_weight("bias_mask", shape=(4 * self.units,), initializer=ones,
                                       trainable=False)

  def read_inputs_from(self, upstream):
    """Unit pruning: zero the kernel rows that read the pruned units of `upstream`."""
    object.__setattr__(self, "_upstream", upstream)

  def _scores(self):
    return pruning_groups.lstm_scores(self.kernel, self.recurrent_kernel, self.structure,
                                      self.block_size)

  def unit_mask(self):
    """[units] mask of the kept units (unit structure, learned pruning), else None."""
    if self.structure != pruning_groups.UNIT or self.pruning != LEARNED:
      return None
    return learned_threshold.threshold_mask(self._scores(), self.pruning_threshold,
                                            self.temperature)[0]

  def masks(self, soft=False):
    """(kernel mask, recurrent mask, bias mask) as the forward pass applies them.

    `soft=True`: the soft masks instead (learned pruning; the sparsity loss uses them), with
    gradients to the threshold only.
    """
    if self.pruning == FIXED:
      return self.kernel_mask, self.recurrent_kernel_mask, self.bias_mask
    scores = self._scores()
    if soft:
      # The sparsity loss moves the threshold only: the weights answer to the enhancement loss
      # alone (through the hard mask's straight-through gradient), so which groups survive is
      # decided by what they do for the output, not by how close they are to the threshold.
      scores = tf.nest.map_structure(tf.stop_gradient, scores)
    if isinstance(scores, tuple):
      pairs = [learned_threshold.threshold_mask(s, self.pruning_threshold, self.temperature)
               for s in scores]
      group_masks = tuple(p[1 if soft else 0] for p in pairs)
    else:
      group_masks = learned_threshold.threshold_mask(scores, self.pruning_threshold,
                                                     self.temperature)[1 if soft else 0]
    kernel_mask, recurrent_mask, bias_mask = pruning_groups.lstm_masks(
        group_masks, self.kernel.shape, self.recurrent_kernel.shape, self.structure,
        self.block_size)
    upstream = self._upstream.unit_mask() if self._upstream is not None else None
    if upstream is not None and not soft:
      kernel_mask = pruning_groups.input_rows(kernel_mask, upstream)
    return kernel_mask, recurrent_mask, bias_mask

  def prunable_weights(self):
    return [self.kernel, self.recurrent_kernel]

  def transform_weights(self, kernel, recurrent_kernel):
    kernel_mask, recurrent_mask, _ = self.masks()
    return kernel * kernel_mask, recurrent_kernel * recurrent_mask

  def transform_bias(self, bias):
    return bias * self.masks()[2]

  def get_config(self):
    config = super().get_config()
    config.update({"structure": self.structure, "block_size": self.block_size,
                   "pruning": self.pruning, "temperature": self.temperature})
    return config


@keras.utils.register_keras_serializable(package="keras_layers")
class SparseLSTM(QuantizedLSTM):
  """QuantizedLSTM with group-sparse weights; see the module docstring.

  Args:
    structure: "weight", "block" or "unit" (`keras_layers.pruning_groups`).
    block_size: inputs per block (1×B blocks along the MAC direction).
    pruning: "learned" (trainable threshold) or "fixed" (mask variables).
    temperature: straight-through band of the learned threshold.
    Other arguments: as QuantizedLSTM (None quantizers train in float).
  """

  cell_class = SparseLSTMCell

  def __init__(self, units, structure="weight", block_size=8, pruning=LEARNED,
               temperature=learned_threshold.DEFAULT_TEMPERATURE, **kwargs):
    kwargs.pop("cell_options", None)
    super().__init__(units, cell_options={"structure": structure, "block_size": block_size,
                                          "pruning": pruning, "temperature": temperature},
                     **kwargs)

  def read_inputs_from(self, upstream):
    self.cell.read_inputs_from(upstream)

  def unit_mask(self):
    return self.cell.unit_mask()

  def masks(self, soft=False):
    return self.cell.masks(soft)

  def prunable_weights(self):
    return self.cell.prunable_weights()

  @property
  def pruning_threshold(self):
    return getattr(self.cell, "pruning_threshold", None)


def effective_masks(layer):
  """The (kernel, [recurrent,] bias) masks of a sparse layer as numpy arrays."""
  return [tf.convert_to_tensor(m).numpy() for m in layer.masks()]
