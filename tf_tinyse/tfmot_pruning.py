"""`--pruning=tfmot`: tfmot's `prune_low_magnitude` on the mask network, in our training loop.

The model is the plain network of the config (`tf_keras` LSTM/Dense, or `QuantizedLSTM` /
`QuantizedDense` with `--quantize`); `wrap` puts a `PruneLowMagnitude` wrapper around every
LSTM and Dense layer (QEQ is not pruned). The wrappers hold the *same* layer objects, so the
plain model and the wrapped one share their weights: the plain model is what tfmot's
`strip_pruning` returns (tfmot's strip also just unwraps the same layers).

What tfmot does, read from its source (0.8.1, `sparsity/keras/`):
- `PruneLowMagnitude.call` in training mode adds 1 to its `pruning_step`, then (when the
  schedule says so for that step) recomputes each mask from the current weights, then
  *assigns* `weight * mask` to the weight variables and runs the layer on them; in inference
  mode it only does the assignment. So a quantized layer's weight quantizers see the masked
  weights. The optimizer then updates all weights, pruned ones too: between steps the
  variables are not exactly sparse (tfmot issue #206), the next forward pass masks them again.
- Which weights: `get_prunable_weights()` of the layer (the registry's LSTMCell/Dense for the
  plain layers; `QuantizedLSTM` / `QuantizedDense` implement it and are registered here as
  `PrunableLayer`s): LSTM `kernel` [in, 4u] and `recurrent_kernel` [u, 4u], Dense `kernel`
  [in, out]. Each matrix has its own mask and threshold and is pruned to the scheduled
  sparsity on its own (the four gates of an LSTM matrix share one threshold).
- Blocks: `block_size=(h, w)` average-pools |W| over h×w tiles of the rank-2 matrix, prunes
  whole tiles and expands the tile mask back. `--block_shape=1xB` (B consecutive input weights
  of one output row of the [out, in] export layout) is `block_size=(B, 1)` on the Keras
  [in, out] layout: B consecutive rows of one column, for Dense and for each gate column of the
  LSTM matrices alike, i.e. exactly `keras_layers.pruning_groups`' blocks. tfmot pools with
  SAME padding split before *and* after, so for an input size B does not divide its scores come
  from tiles shifted against the tiles it masks (rows -2..5, 6..13, 14..21 scored, 0..7, 8..15,
  16..19 masked, for 20 rows and B = 8), and a matrix of exactly B rows fails (its pooled
  scores are squeezed to rank 1). `check_config` refuses both.
- `UpdatePruningStep` (its `model.fit` callback) sets `pruning_step` to 0 on a fresh model at
  the start of training and re-masks the weights at the end of each epoch; `PruningSummaries`
  logs `1 - mean(mask)` and the threshold of every mask. Our loop does the same with the
  global step: `set_step(model, step)` before every train step (so after the step's forward
  pass `pruning_step` == the global step after it, as in `fit`, also after a resume), the
  summaries in `summarize`, and `strip` for everything saved or measured.

`strip` copies the weights into a separate plain model with the masks applied, instead of
re-masking the training variables: what is validated, logged and saved is the stripped model,
and the training run does not depend on how often that happens (a resumed run is the same as an
uninterrupted one). Checkpoints hold the wrapped model (weights, masks, thresholds,
`pruning_step`).

The schedule is `sparsity.Schedule` as tfmot's `PolynomialDecay` (initial 0, final = target,
power 3, begin/end step, frequency), with one mask update added at `end_step`: tfmot only
updates at `begin_step + k·frequency` up to `end_step`, so when `frequency` does not divide
`end_step - begin_step` it would stop short of the target for good.
"""
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import prunable_layer
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
import tf_keras as keras

from keras_layers import pruning_groups
from keras_layers.quantized_dense import QuantizedDense
from keras_layers.quantized_lstm import QuantizedLSTM
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse.errors import UserError

# Our layers implement `get_prunable_weights`; registering them makes them tfmot
# `PrunableLayer`s without keras_layers importing tfmot (seconds of import time).
prunable_layer.PrunableLayer.register(QuantizedLSTM)
prunable_layer.PrunableLayer.register(QuantizedDense)

PruneLowMagnitude = pruning_wrapper.PruneLowMagnitude


class PolynomialDecay(tfmot.sparsity.keras.PolynomialDecay):
  """tfmot's PolynomialDecay that also updates the masks at `end_step`."""

  def _should_prune_in_step(self, step, begin_step, end_step, frequency):
    return tf.math.logical_or(
        super()._should_prune_in_step(step, begin_step, end_step, frequency),
        tf.math.equal(step, end_step))


def pruning_schedule(schedule):
  """`sparsity.Schedule` → the tfmot schedule (its sparsity equals `schedule.target_at`)."""
  return PolynomialDecay(initial_sparsity=0.0, final_sparsity=schedule.target,
                         begin_step=schedule.begin_step, end_step=schedule.end_step, power=3,
                         frequency=schedule.frequency)


def block_size(config):
  """tfmot's `block_size` (rows, columns of the Keras [in, out] kernel) for the config."""
  if config.sparsity_structure == pruning_groups.BLOCK:
    return (int(config.block_size), 1)
  return (1, 1)


def _kernel_input_sizes(config):
  """Input (row) sizes of every pruned matrix: first LSTM kernel, LSTM recurrent kernels and
  later kernels."""
  units = list(config.lstm_units) + list(config.dense_units)
  return sorted({config.feature.num_bands, *units})


def check_config(config):
  """UserError for a config tfmot cannot prune as asked (unit; blocks that do not tile)."""
  if config.sparsity_structure == pruning_groups.UNIT:
    raise UserError("--pruning=tfmot cannot prune units: tfmot's prune_low_magnitude prunes "
                    "weights or blocks only; use --pruning=online or offline for "
                    "--sparsity_structure=unit")
  if config.sparsity_structure == pruning_groups.BLOCK:
    size = int(config.block_size)
    bad = [n for n in _kernel_input_sizes(config) if n % size or n < 2 * size]
    if bad:
      raise UserError(
          f"--pruning=tfmot --block_shape=1x{size} needs every layer input size "
          f"(--num_bands, --lstm_units, --dense_units) to be a multiple of {size} of at least "
          f"{2 * size}, not {', '.join(map(str, bad))}: tfmot's blocks would not be the 1x{size} "
          "blocks of the export layout; change the sizes or use --pruning=online")


def _is_pruned(layer):
  return isinstance(layer, (keras.layers.LSTM, keras.layers.Dense, QuantizedLSTM))


def wrap(model, config, schedule):
  """The model with every LSTM and Dense layer in a `PruneLowMagnitude` wrapper (named
  `prune_low_magnitude_<name>`), sharing the layers (and so the weights) of `model`; the
  wrappers' `pruning_step` is 0."""
  check_config(config)
  params = {"pruning_schedule": pruning_schedule(schedule), "block_size": block_size(config),
            "block_pooling_type": "AVG"}

  def clone(layer):
    if _is_pruned(layer):
      return tfmot.sparsity.keras.prune_low_magnitude(layer, **params)
    return layer  # QEQ (and the input) are not pruned

  wrapped = keras.models.clone_model(model, clone_function=clone)
  set_step(wrapped, 0)  # what UpdatePruningStep.on_train_begin does for a fresh model
  return wrapped


def wrappers(model):
  """The `PruneLowMagnitude` layers of `model`, in model order."""
  return pruning_wrapper.collect_prunable_layers(model)


def set_step(model, step):
  """Sets every wrapper's `pruning_step` to `step` (works inside a tf.function)."""
  for layer in wrappers(model):
    layer.pruning_step.assign(tf.cast(step, tf.int64))


def pruning_steps(model):
  """{wrapper name: pruning_step}."""
  return {layer.name: int(layer.pruning_step.numpy()) for layer in wrappers(model)}


def masks(model):
  """{'<layer>/<kernel|recurrent_kernel>': mask as numpy} of every pruned matrix."""
  result = {}
  for layer in wrappers(model):
    for weight, mask, _ in layer.pruning_vars:
      result[f"{layer.layer.name}/{model_lib.short_name(weight)}"] = mask.numpy()
  return result


def apply_masks(model):
  """Assigns `weight * mask` to every pruned weight (UpdatePruningStep.on_epoch_end); after
  it, the layers of `model` hold exactly what `tfmot.sparsity.keras.strip_pruning` keeps."""
  for layer in wrappers(model):
    layer.pruning_obj.weight_mask_op()


def strip(wrapped, target):
  """Copies the weights of `wrapped` into `target`, a plain model of the same config (as
  `model.build_mask_model` makes it), with the pruned weights multiplied by their masks: the
  stripped model, made without touching the training variables. Returns `target`."""
  sources = {}
  for layer in wrapped.layers:
    inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
    masked = ({weight.ref(): mask for weight, mask, _ in layer.pruning_vars}
              if isinstance(layer, PruneLowMagnitude) else {})
    sources[inner.name] = (inner, masked)
  for layer in target.layers:
    if not layer.weights:
      continue
    inner, masked = sources[layer.name]
    values = {model_lib.short_name(v): v for v in inner.weights}
    for variable in layer.weights:
      source = values[model_lib.short_name(variable)]
      mask = masked.get(source.ref())
      variable.assign(source if mask is None else source * mask)
  return target


def summarize(model, step):
  """What tfmot's PruningSummaries logs: per mask `1 - mean(mask)` and its threshold (inside
  a summary writer's default); the per-layer sparsity of the stripped model is logged by
  `sparsity.summarize_to_tensorboard`."""
  for layer in wrappers(model):
    for weight, mask, threshold in layer.pruning_vars:
      name = f"tfmot/{layer.layer.name}/{model_lib.short_name(weight)}"
      tf.summary.scalar(f"{name}/mask_sparsity", 1.0 - float(np.mean(mask.numpy())), step=step)
      tf.summary.scalar(f"{name}/threshold", float(threshold.numpy()), step=step)
