"""Pruning groups: which weights are kept or removed together (weight, block, unit).

The paper's three structures (Stamenovic et al. 2021, Sec. 3.2), defined on the Keras weight
layouts, `kernel [in, out]` (Dense; LSTM with out = 4·units in gate order i, f, c, o) and
`recurrent_kernel [units, 4·units]`. The exported int8 layout is the transpose, `[out, in]`:
one row per output, and the hardware multiplies-accumulates along a row (the inputs).

- "weight": every weight is its own group, LSTM and Dense alike.
- "block": `1×B` blocks of B consecutive *input* weights of one output row of the `[out, in]`
  layout (B = 8 for 8-bit MACs, 4 for 16-bit), i.e. B consecutive rows of one column of the
  Keras `[in, out]` kernel; LSTM input and recurrent matrices (per gate) and Dense alike. An
  input size that B does not divide ends in one shorter block.
- "unit": a neuron. Dense: one output unit (a column of the Keras kernel, with its bias).
  LSTM: everything tied to one hidden index `h[k]`: columns k, u+k, 2u+k, 3u+k (the four gates)
  of the input and recurrent kernels and their four biases, plus the row k of the recurrent
  kernel, which reads `h[k]`. The row of the *next* layer's kernel that reads the unit is
  removed with it (`input_rows` below), so the unit disappears and a smaller dense model
  computes the same function (tests/keras_layers/test_sparse_layers.py). The output layer is
  never unit-pruned.

Why the biases belong to a unit: a unit whose weights are all zero still emits
σ(b_o)·tanh(c), with c fed by σ(b_i)·tanh(b_c), so its output is not zero unless its biases go
too. With them masked, z = 0, c stays 0 and h[k] = σ(0)·tanh(0) = 0 exactly.

A group's score is its root-mean-square weight (for "weight", |w|), divided by the RMS of all
prunable weights of the layer: dimensionless, near 1 whatever the layer's scale, so one learned
threshold per layer means the same thing in every layer and in every structure.
`norm="l1"` (the offline search's L1 norm) scores a group by its mean absolute weight instead,
divided by the layer's mean absolute weight: the L1 norm per weight, which ranks groups of one
size exactly as their L1 norm does and does not single out an input size's shorter last block.

All functions are plain TensorFlow on tensors (no Keras layers), used by the sparse layers
(`keras_layers.sparse_lstm`, `keras_layers.sparse_dense`), the TFMOT block mapping and the
offline search (`tf_tinyse.prune_offline`).
"""
import math

import tensorflow as tf

WEIGHT, BLOCK, UNIT = "weight", "block", "unit"
STRUCTURES = (WEIGHT, BLOCK, UNIT)


def check_structure(structure, block_size=8):
  if structure not in STRUCTURES:
    raise ValueError(f"sparsity structure must be one of {STRUCTURES}, got {structure!r}")
  if structure == BLOCK and int(block_size) < 2:
    raise ValueError(f"block pruning needs a block of at least 2 inputs, got {block_size}")


def _mean_square_blocks(kernel, block_size):
  """[in, out] → [ceil(in / B), out]: mean square of each 1×B block along the input axis."""
  kernel = tf.convert_to_tensor(kernel)
  inputs = kernel.shape[0]
  blocks = math.ceil(inputs / block_size)
  padded = tf.pad(tf.square(kernel), [[0, blocks * block_size - inputs], [0, 0]])
  sums = tf.reduce_sum(tf.reshape(padded, [blocks, block_size, -1]), axis=1)
  # The last block may be shorter: divide by the number of real inputs in each block.
  sizes = [min(block_size, inputs - b * block_size) for b in range(blocks)]
  return sums / tf.constant(sizes, kernel.dtype)[:, None]


def _mean_abs_blocks(kernel, block_size):
  """[in, out] → [ceil(in / B), out]: mean absolute weight (L1 norm per weight) of each block."""
  kernel = tf.convert_to_tensor(kernel)
  inputs = kernel.shape[0]
  blocks = math.ceil(inputs / block_size)
  padded = tf.pad(tf.abs(kernel), [[0, blocks * block_size - inputs], [0, 0]])
  sums = tf.reduce_sum(tf.reshape(padded, [blocks, block_size, -1]), axis=1)
  sizes = [min(block_size, inputs - b * block_size) for b in range(blocks)]
  return sums / tf.constant(sizes, kernel.dtype)[:, None]


NORMS = ("rms", "l1")


def _check_norm(norm):
  if norm not in NORMS:
    raise ValueError(f"group norm must be one of {NORMS}, got {norm!r}")


def layer_mean_abs(matrices):
  """Mean absolute weight of the given matrices (the unit of "l1" scores)."""
  matrices = [tf.convert_to_tensor(m) for m in matrices]
  total = tf.add_n([tf.reduce_sum(tf.abs(m)) for m in matrices])
  count = sum(int(m.shape.num_elements()) for m in matrices)
  return total / count + 1e-30


def expand_blocks(block_mask, inputs, block_size):
  """[ceil(in / B), out] → [in, out]: each block's value over its B inputs."""
  return tf.repeat(block_mask, block_size, axis=0)[:inputs]


def layer_scale(matrices):
  """RMS of all weights of the given matrices (the unit that scores are measured in)."""
  total = tf.add_n([tf.reduce_sum(tf.square(m)) for m in matrices])
  count = sum(int(m.shape.num_elements()) for m in matrices)
  return tf.sqrt(total / count + 1e-30)


def dense_scores(kernel, structure, block_size=8, norm="rms"):
  """Scores of a Dense kernel [in, out]: [in, out] (weight), [blocks, out] (block), [out] (unit).

  `norm`: "rms" (default, the learned thresholds' scores) or "l1" (mean |w| of each group over
  the layer's mean |w|).
  """
  check_structure(structure, block_size)
  _check_norm(norm)
  if norm == "l1":
    scale = tf.stop_gradient(layer_mean_abs([kernel]))
    if structure == WEIGHT:
      return tf.abs(kernel) / scale
    if structure == BLOCK:
      return _mean_abs_blocks(kernel, block_size) / scale
    return tf.reduce_mean(tf.abs(kernel), axis=0) / scale
  scale = tf.stop_gradient(layer_scale([kernel]))
  if structure == WEIGHT:
    return tf.abs(kernel) / scale
  if structure == BLOCK:
    return tf.sqrt(_mean_square_blocks(kernel, block_size) + 1e-30) / scale
  return tf.sqrt(tf.reduce_mean(tf.square(kernel), axis=0) + 1e-30) / scale


def dense_masks(group_mask, kernel_shape, structure, block_size=8):
  """(kernel mask [in, out], bias mask [out]) from a mask over the groups of `dense_scores`."""
  inputs, outputs = int(kernel_shape[0]), int(kernel_shape[1])
  if structure == WEIGHT:
    return group_mask, tf.ones([outputs], group_mask.dtype)
  if structure == BLOCK:
    return expand_blocks(group_mask, inputs, block_size), tf.ones([outputs], group_mask.dtype)
  return tf.broadcast_to(group_mask[None, :], [inputs, outputs]), group_mask


def _gate_columns(matrix, units):
  """[rows, 4u] → [rows, 4, u]: the gate matrices i, f, c, o side by side, unit index last."""
  return tf.reshape(matrix, [matrix.shape[0], 4, units])


def lstm_scores(kernel, recurrent_kernel, structure, block_size=8, norm="rms"):
  """Scores of an LSTM's kernels: (kernel scores, recurrent scores) for weight/block — one per
  weight or per block of each gate matrix — or one [units] vector for unit.

  `norm`: "rms" (default) or "l1" (mean |w| of each group over the layer's mean |w|).
  """
  check_structure(structure, block_size)
  _check_norm(norm)
  units = int(recurrent_kernel.shape[0])
  if norm == "l1":
    scale = tf.stop_gradient(layer_mean_abs([kernel, recurrent_kernel]))
    if structure == WEIGHT:
      return tf.abs(kernel) / scale, tf.abs(recurrent_kernel) / scale
    if structure == BLOCK:
      return (_mean_abs_blocks(kernel, block_size) / scale,
              _mean_abs_blocks(recurrent_kernel, block_size) / scale)
    sums = (tf.reduce_sum(tf.abs(_gate_columns(kernel, units)), axis=[0, 1]) +
            tf.reduce_sum(tf.abs(_gate_columns(recurrent_kernel, units)), axis=[0, 1]))
    return sums / (4 * (int(kernel.shape[0]) + units)) / scale
  scale = tf.stop_gradient(layer_scale([kernel, recurrent_kernel]))
  if structure == WEIGHT:
    return tf.abs(kernel) / scale, tf.abs(recurrent_kernel) / scale
  if structure == BLOCK:
    # Blocks run along the inputs of one output row, and the four gates are separate output
    # rows of the [4u, in] export layout, so Dense's blocking applies to the [in, 4u] kernel.
    return (tf.sqrt(_mean_square_blocks(kernel, block_size) + 1e-30) / scale,
            tf.sqrt(_mean_square_blocks(recurrent_kernel, block_size) + 1e-30) / scale)
  squares = (tf.reduce_sum(tf.square(_gate_columns(kernel, units)), axis=[0, 1]) +
             tf.reduce_sum(tf.square(_gate_columns(recurrent_kernel, units)), axis=[0, 1]))
  count = 4 * (int(kernel.shape[0]) + units)
  return tf.sqrt(squares / count + 1e-30) / scale


def lstm_masks(group_masks, kernel_shape, recurrent_shape, structure, block_size=8):
  """(kernel mask, recurrent mask, bias mask [4u]) from masks over `lstm_scores`' groups."""
  inputs, units = int(kernel_shape[0]), int(recurrent_shape[0])
  if structure == WEIGHT:
    kernel_mask, recurrent_mask = group_masks
    return kernel_mask, recurrent_mask, tf.ones([4 * units], kernel_mask.dtype)
  if structure == BLOCK:
    kernel_mask, recurrent_mask = group_masks
    return (expand_blocks(kernel_mask, inputs, block_size),
            expand_blocks(recurrent_mask, units, block_size),
            tf.ones([4 * units], kernel_mask.dtype))
  unit_mask = group_masks
  gates = tf.tile(unit_mask, [4])  # column j of [.., 4u] belongs to unit j mod u
  return (tf.broadcast_to(gates[None, :], [inputs, 4 * units]),
          gates[None, :] * unit_mask[:, None],  # and row k reads h[k]
          gates)


def input_rows(kernel_mask, upstream_unit_mask):
  """A kernel mask [in, out] with the rows of removed upstream units (inputs) zeroed too."""
  return kernel_mask * upstream_unit_mask[:, None]


def count_groups(scores):
  """Number of groups behind a score tensor (or a tuple of them)."""
  if isinstance(scores, (tuple, list)):
    return sum(count_groups(s) for s in scores)
  return int(scores.shape.num_elements())
