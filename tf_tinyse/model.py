"""The TinyLSTM mask network, in a training form and a streaming form that share weights.

features Z [batch, frames, bands] → QEQ → LSTM ×N → Dense(tanh) ×K → Dense(sigmoid) → mel mask.

- Training form: any batch, any number of frames, stateless (`build_mask_model`). Its LSTMs
  unroll the recurrence in training batches of a short, static length (faster on a CPU, the
  same arithmetic: `keras_layers.unrolling`); the float form's is `UnrollingLSTM`.
- Streaming form: batch 1, one frame per call, stateful LSTMs whose state
  persists across calls until `reset_states()` (`build_mask_model(...,
  streaming=True)`); this is the form exported to TFLite Micro.

Both forms create the same layers with the same names in the same order, so
`streaming.set_weights(training.get_weights())` moves a trained model over; the training form's
dropout layers (`--dropout`) hold no weights and are the only layers the streaming form lacks.
Layers are made by `_make_lstm` / `_make_dense`, the one place that decides
which layer class implements a unit; quantized and sparse variants plug in there.

Sparse variants (`keras_layers.sparse_lstm`, `sparse_dense`) hold extra variables (a learned
threshold or masks) after the usual ones, so weights move between models of different
variants by name (`copy_weights`), never by `get_weights()` order.
"""
import dataclasses
import json
import os

from absl import flags
from absl import logging
import numpy as np
import tf_keras as keras

from keras_layers import quantizers
from keras_layers.qeq import QEQ
from keras_layers.quantized_dense import QuantizedDense
from keras_layers.quantized_lstm import QuantizedLSTM
from keras_layers.sparse_dense import SparseDense
from keras_layers.sparse_lstm import FIXED
from keras_layers.sparse_lstm import LEARNED
from keras_layers.sparse_lstm import SparseLSTM
from keras_layers.step_dropout import StepDropout
from keras_layers.unrolling import UnrollingLSTM
from tf_tinyse import features
from tf_tinyse import sparsity
from tf_tinyse.errors import UserError

flags.DEFINE_string("model_dir", None, "Folder of a model: config.json, checkpoints/, best/, "
                    "logs/ (written by tf_tinyse.train, read by evaluate/enhance/export).")
flags.DEFINE_list("lstm_units", ["256", "256"], "Units of each LSTM layer, in order.")
flags.DEFINE_list("dense_units", ["128"], "Units of each hidden tanh Dense layer after the "
                  "LSTMs; the sigmoid output layer always has one unit per mel band.")
flags.DEFINE_bool("qeq", True, "Learnable per-band gain and bias on the input features (QEQ).")
flags.DEFINE_integer("num_bands", 128, "Mel bands of the input features and of the mask.")
flags.DEFINE_float("mask_floor", 0.0, "Lowest gain of the mask: the model's mask M is applied as "
                   "floor + (1 - floor) * M in validation and every deployed form (saved in "
                   "config.json and the front-end JSON), but not in the training loss, where "
                   "the network would learn to undo it. 0: the paper's mask.",
                   lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_float("low_cut_hz", 0.0, "STFT bins centred below this frequency get gain 0, "
                   "whatever the mask: a high-pass on the output against rumble and drift that "
                   "speech hardly holds (saved and applied like --mask_floor, and like it not "
                   "in the training loss). 0: off, the paper's path.", lower_bound=0.0,
                   upper_bound=7999.0)
flags.DEFINE_float("dropout", 0.0, "Dropout rate on the output of each LSTM layer in "
                   "training steps only: validation, the streaming and exported forms compute "
                   "without it, and tf_tinyse.pipeline's QAT fine-tune turns it off. 0: none, "
                   "the paper's model.", lower_bound=0.0, upper_bound=0.9)
flags.DEFINE_bool("quantize", False, "Quantization-aware training: 8-bit fake quantization of "
                  "the QEQ output, the weights and the activations on the grid of the int8 "
                  "export (fixed [-1, 1] range for the LSTM inputs/outputs).")


def _validate_units(values):
  try:
    return all(int(v) > 0 for v in values)
  except ValueError:
    return False


for _name in ("lstm_units", "dense_units"):
  flags.register_validator(_name, _validate_units,
                           message=f"--{_name} must be a comma-separated list of positive integers")

CONFIG_FILE = "config.json"
BEST_WEIGHTS = os.path.join("best", "weights.h5")
CHECKPOINTS = "checkpoints"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything needed to rebuild a trained model (saved as `config.json`)."""
  lstm_units: tuple = (256, 256)
  dense_units: tuple = (128,)
  use_qeq: bool = True
  quantize: bool = False
  feature: features.FeatureConfig = features.FeatureConfig()
  # None: dense. Else "weight" / "block" / "unit" (`keras_layers.pruning_groups`), reached by
  # `pruning` ("online": learned thresholds; "offline": fixed masks; "tfmot": plain layers whose
  # zeros tfmot's wrapper makes during training).
  sparsity_structure: str = None
  block_size: int = 8
  pruning: str = sparsity.ONLINE
  # Dropout on each LSTM layer's output in training (`keras_layers.step_dropout`); no weights.
  dropout: float = 0.0

  def __post_init__(self):
    if self.quantize and not self.use_qeq:
      # The first LSTM quantizes its input to the fixed [-1, 1] grid of the int8 export, and
      # only QEQ is fitted into it: raw compressed mel features are never negative and reach
      # about 3, so half the grid would go unused and the loudest bands would clip.
      raise UserError("--quantize needs --qeq: without QEQ the compressed mel features "
                      "(0 to about 3) do not fit the fixed [-1, 1] input grid of the int8 "
                      "model; drop --noqeq or train in float")

  @classmethod
  def from_flags(cls, flag_values=flags.FLAGS):
    return cls(lstm_units=tuple(int(u) for u in flag_values.lstm_units),
               dense_units=tuple(int(u) for u in flag_values.dense_units),
               use_qeq=flag_values.qeq, quantize=flag_values.quantize,
               feature=features.FeatureConfig(num_bands=flag_values.num_bands,
                                               mask_floor=flag_values.mask_floor,
                                               low_cut_hz=flag_values.low_cut_hz),
               sparsity_structure=flag_values.sparsity_structure,
               block_size=sparsity.block_size_from_shape(flag_values.block_shape),
               pruning=flag_values.pruning, dropout=flag_values.dropout)

  @property
  def has_masks(self):
    """Whether the layers are sparse variants (online thresholds or offline masks)."""
    return self.sparsity_structure is not None and self.pruning != sparsity.TFMOT

  def to_dict(self):
    return {"lstm_units": list(self.lstm_units), "dense_units": list(self.dense_units),
            "use_qeq": self.use_qeq, "quantize": self.quantize,
            "feature": self.feature.to_dict(), "sparsity_structure": self.sparsity_structure,
            "block_size": self.block_size, "pruning": self.pruning, "dropout": self.dropout}

  @classmethod
  def from_dict(cls, d):
    return cls(lstm_units=tuple(d["lstm_units"]), dense_units=tuple(d["dense_units"]),
               use_qeq=bool(d["use_qeq"]), quantize=bool(d.get("quantize", False)),
               feature=features.FeatureConfig.from_dict(d["feature"]),
               sparsity_structure=d.get("sparsity_structure"),
               block_size=int(d.get("block_size", 8)),
               pruning=d.get("pruning", sparsity.ONLINE),
               dropout=float(d.get("dropout", 0.0)))

  def dense(self):
    """The same network without sparsity (what the export model and TFMOT start from)."""
    return dataclasses.replace(self, sparsity_structure=None, pruning=sparsity.ONLINE)


def _sparse_args(config, output_layer=False):
  structure = config.sparsity_structure
  if output_layer and structure == "unit":
    structure = None  # the output layer keeps its units; only rows of pruned inputs go
  return {"structure": structure, "block_size": config.block_size,
          "pruning": LEARNED if config.pruning == sparsity.ONLINE else FIXED}


def _make_lstm(config, units, streaming, name, first):
  if not config.quantize and not config.has_masks:
    if streaming:  # the export's form: the plain layer the TFLite converter fuses
      return keras.layers.LSTM(units, return_sequences=True, stateful=True, name=name)
    return UnrollingLSTM(units, return_sequences=True, name=name)
  if config.quantize:
    # The first LSTM quantizes its input (the QEQ output) to the fixed [-1, 1] range; later
    # layers receive an already-quantized hidden state.
    input_quantizer = quantizers.FixedRangeQuantizer(8, -1.0, 1.0) if first else None
    args = {"input_quantizer": input_quantizer}
  else:  # a float sparse LSTM: the quantized layer with every quantizer off
    args = {"kernel_quantizer": None, "recurrent_quantizer": None, "output_quantizer": None}
  if config.has_masks:
    return SparseLSTM(units, return_sequences=True, stateful=streaming, name=name,
                      **_sparse_args(config), **args)
  return QuantizedLSTM(units, return_sequences=True, stateful=streaming, name=name, **args)


def _make_dense(config, units, activation, name):
  if not config.quantize and not config.has_masks:
    return keras.layers.Dense(units, activation=activation, name=name)
  if config.quantize:
    args = {"preactivation_quantizer": quantizers.activation_input_quantizer(activation),
            "activation_quantizer": quantizers.activation_output_quantizer(activation)}
  else:
    args = {"kernel_quantizer": None}
  if config.has_masks:
    return SparseDense(units, activation=activation, name=name,
                       **_sparse_args(config, output_layer=name == "mask"), **args)
  return QuantizedDense(units, activation=activation, name=name, **args)


def build_mask_model(config, streaming=False):
  """Returns the tf_keras mask network: features → mel mask in [0, 1]."""
  bands = config.feature.num_bands
  if streaming:
    inputs = keras.Input(batch_shape=(1, 1, bands), name="features")
  else:
    inputs = keras.Input(shape=(None, bands), name="features")
  x = inputs
  if config.use_qeq:
    x = QEQ(name="qeq")(x)
  layers = [_make_lstm(config, units, streaming, name=f"lstm_{i}", first=i == 0)
            for i, units in enumerate(config.lstm_units)]
  layers += [_make_dense(config, units, "tanh", name=f"dense_{i}")
             for i, units in enumerate(config.dense_units)]
  layers.append(_make_dense(config, bands, "sigmoid", name="mask"))
  if config.has_masks and config.sparsity_structure == "unit":
    # A pruned unit disappears: the next layer's kernel rows that read it go with it.
    for upstream, layer in zip(layers, layers[1:]):
      layer.read_inputs_from(upstream)
  for i, layer in enumerate(layers):
    x = layer(x)
    if i < len(config.lstm_units) and config.dropout > 0 and not streaming:
      x = StepDropout(config.dropout, name=f"dropout_{i}")(x)
  return keras.Model(inputs, x, name="tinylstm_streaming" if streaming else "tinylstm")


def forward_weights(layer):
  """The weights of `layer` as its forward pass uses them (masked, on the training grid), in
  the tf_keras LSTM/Dense/QEQ order; pruning variables (thresholds, masks) are not weights."""
  if hasattr(layer, "forward_weights"):
    return layer.forward_weights()
  return layer.get_weights()


def parameter_counts(model):
  """(parameters, non-zero parameters) of the network as it computes: kernels, biases and
  QEQ, after pruning masks; thresholds and mask variables are not parameters."""
  total = nonzero = 0
  for layer in model.layers:
    for w in forward_weights(layer):
      total += int(np.size(w))
      nonzero += int(np.count_nonzero(w))
  return total, nonzero


def count_parameters(model):
  return parameter_counts(model)[0]


def short_name(variable):
  """'lstm_0/lstm_cell/kernel:0' → 'kernel'."""
  return variable.name.split("/")[-1].split(":")[0]


def copy_weights(source, target, strict=True):
  """Copies the weights of `source` into the layers of the same name in `target`, each
  variable matched by its own name (kernel, recurrent_kernel, bias, gain, ...).

  Variables that only one side has (a learned threshold, masks) are left as they are, so a
  dense model initializes a sparse one and back. `strict`: a layer of `target` with weights
  but no namesake in `source`, or a variable of another shape, is an error (UserError).
  """
  for layer in target.layers:
    if not layer.weights:
      continue
    try:
      source_layer = source.get_layer(layer.name)
    except ValueError:
      if strict:
        raise UserError(f"the source model has no layer '{layer.name}' to initialize from")
      continue
    available = {short_name(v): v for v in source_layer.weights}
    for variable in layer.weights:
      value = available.get(short_name(variable))
      if value is None:
        continue
      if tuple(value.shape) != tuple(variable.shape):
        raise UserError(f"layer '{layer.name}' variable '{short_name(variable)}' has shape "
                        f"{tuple(variable.shape)}, the source's {tuple(value.shape)}: the "
                        "models have other layer sizes")
      variable.assign(value)


def save_config(model_dir, config):
  from tf_tinyse import fileio  # pylint: disable=g-import-not-at-top
  fileio.write_json_atomic(os.path.join(model_dir, CONFIG_FILE), config.to_dict())


def load_config(model_dir):
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise UserError(f"model_dir '{model_dir}' holds no {CONFIG_FILE}: "
                    "pass the --model_dir of a training run (python -m tf_tinyse.train)")
  try:
    with open(path) as f:
      return ModelConfig.from_dict(json.load(f))
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"'{path}' is not a valid model config ({e}); "
                    "it was not written by tf_tinyse.train or was edited") from e


def _one_line(error):
  return " ".join(str(error).split()) or type(error).__name__


def restore_newest_checkpoint(checkpoint, folder, partial=False):
  """Restores `checkpoint` from the newest checkpoint in `folder` that reads.

  A checkpoint cut short (a full disk, a killed copy) fails deep in TF
  (`IndexError: Read less bytes than requested`, `DataLossError: Checksum does
  not match`); each one that fails is skipped with a warning naming it, and the
  one before it is tried. TF reads all values before it assigns any, and the
  next restore assigns every value of its checkpoint, so nothing of a bad
  checkpoint survives (tested).

  Args:
    checkpoint: a `tf.train.Checkpoint`.
    folder: a `tf.train.CheckpointManager` folder (its `checkpoint` file lists
      the checkpoints, oldest first).
    partial: True when `checkpoint` holds only part of what was saved (e.g. the
      model without its optimizer); else every saved object must match.

  Returns:
    The path restored, or None when `folder` records no checkpoint.

  Raises:
    UserError: none of the checkpoints restores.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Not CheckpointManager.checkpoints: it leaves out checkpoints without a timestamp.
  state = tf.train.get_checkpoint_state(folder)
  paths = list(state.all_model_checkpoint_paths) if state else []
  if state and state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  for path in reversed(paths):
    try:
      status = checkpoint.restore(path)
    except (tf.errors.OpError, IndexError, ValueError) as e:
      logging.warning("checkpoint %s cannot be read (%s): trying the one before it", path,
                      _one_line(e))
      continue
    if partial:
      status.expect_partial()
    else:
      status.assert_existing_objects_matched()
    return path
  if paths:
    raise UserError(f"none of the {len(paths)} checkpoints in '{folder}' can be read (corrupt "
                    "or cut short); delete that folder to train from the start")
  return None


def load_trained(model_dir, streaming=False):
  """Rebuilds the model of `model_dir` and loads its best (else latest) weights.

  Returns (config, model).
  """
  config = load_config(model_dir)
  model = build_mask_model(config, streaming=streaming)
  best = os.path.join(model_dir, BEST_WEIGHTS)
  if os.path.isfile(best):
    try:
      model.load_weights(best)
    except (OSError, ValueError, KeyError) as e:
      raise UserError(f"'{best}' cannot be read as the weights of this model ({_one_line(e)}); "
                      "delete it to use the newest checkpoint, or train again") from e
    return config, model
  # No validation has run yet: fall back to the newest training checkpoint that reads.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tfmot_model = None
  if config.pruning == sparsity.TFMOT and config.sparsity_structure is not None:
    # Its checkpoints hold the layers inside tfmot's pruning wrappers: restore into the
    # wrapped model, then strip it (the plain layers are shared).
    from tf_tinyse import tfmot_pruning  # pylint: disable=g-import-not-at-top
    tfmot_model = tfmot_pruning.wrap(model, config, sparsity.Schedule())
    tfmot_pruning.set_step(tfmot_model, -1)
  if not restore_newest_checkpoint(tf.train.Checkpoint(model=tfmot_model or model),
                                   os.path.join(model_dir, CHECKPOINTS), partial=True):
    raise UserError(f"model_dir '{model_dir}' has no trained weights ({BEST_WEIGHTS} or "
                    "checkpoints/): train first with python -m tf_tinyse.train")
  if tfmot_model is not None:
    if min(tfmot_pruning.pruning_steps(tfmot_model).values()) < 0:
      raise UserError(f"the checkpoints in '{model_dir}' hold no tfmot pruning masks, but "
                      f"its {CONFIG_FILE} says --pruning=tfmot: train it again")
    tfmot_pruning.apply_masks(tfmot_model)
  return config, model
