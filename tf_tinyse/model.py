"""The TinyLSTM mask network, in a training form and a streaming form that share weights.

features Z [batch, frames, bands] → QEQ → LSTM ×N → Dense(tanh) ×K → Dense(sigmoid) → mel mask.

- Training form: any batch, any number of frames, stateless (`build_mask_model`).
- Streaming form: batch 1, one frame per call, stateful LSTMs whose state
  persists across calls until `reset_states()` (`build_mask_model(...,
  streaming=True)`); this is the form exported to TFLite Micro.

Both forms create the same layers with the same names in the same order, so
`streaming.set_weights(training.get_weights())` moves a trained model over.
Layers are made by `_make_lstm` / `_make_dense`, the one place that decides
which layer class implements a unit; quantized and sparse variants plug in there.
"""
import dataclasses
import json
import os

from absl import flags
import tf_keras as keras

from keras_layers import quantizers
from keras_layers.qeq import QEQ
from keras_layers.quantized_dense import QuantizedDense
from keras_layers.quantized_lstm import QuantizedLSTM
from tf_tinyse import features
from tf_tinyse.errors import UserError

flags.DEFINE_string("model_dir", None, "Folder of a model: config.json, checkpoints/, best/, "
                    "logs/ (written by tf_tinyse.train, read by evaluate/enhance/export).")
flags.DEFINE_list("lstm_units", ["256", "256"], "Units of each LSTM layer, in order.")
flags.DEFINE_list("dense_units", ["128"], "Units of each hidden tanh Dense layer after the "
                  "LSTMs; the sigmoid output layer always has one unit per mel band.")
flags.DEFINE_bool("qeq", True, "Learnable per-band gain and bias on the input features (QEQ).")
flags.DEFINE_integer("num_bands", 128, "Mel bands of the input features and of the mask.")
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


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything needed to rebuild a trained model (saved as `config.json`)."""
  lstm_units: tuple = (256, 256)
  dense_units: tuple = (128,)
  use_qeq: bool = True
  quantize: bool = False
  feature: features.FeatureConfig = features.FeatureConfig()

  @classmethod
  def from_flags(cls, flag_values=flags.FLAGS):
    return cls(lstm_units=tuple(int(u) for u in flag_values.lstm_units),
               dense_units=tuple(int(u) for u in flag_values.dense_units),
               use_qeq=flag_values.qeq, quantize=flag_values.quantize,
               feature=features.FeatureConfig(num_bands=flag_values.num_bands))

  def to_dict(self):
    return {"lstm_units": list(self.lstm_units), "dense_units": list(self.dense_units),
            "use_qeq": self.use_qeq, "quantize": self.quantize,
            "feature": self.feature.to_dict()}

  @classmethod
  def from_dict(cls, d):
    return cls(lstm_units=tuple(d["lstm_units"]), dense_units=tuple(d["dense_units"]),
               use_qeq=bool(d["use_qeq"]), quantize=bool(d.get("quantize", False)),
               feature=features.FeatureConfig.from_dict(d["feature"]))


def _make_lstm(config, units, streaming, name, first):
  if not config.quantize:
    return keras.layers.LSTM(units, return_sequences=True, stateful=streaming, name=name)
  # The first LSTM quantizes its input (the QEQ output) to the fixed [-1, 1] range; later
  # layers receive an already-quantized hidden state.
  input_quantizer = quantizers.FixedRangeQuantizer(8, -1.0, 1.0) if first else None
  return QuantizedLSTM(units, return_sequences=True, stateful=streaming,
                       input_quantizer=input_quantizer, name=name)


def _make_dense(config, units, activation, name):
  if not config.quantize:
    return keras.layers.Dense(units, activation=activation, name=name)
  return QuantizedDense(units, activation=activation,
                        preactivation_quantizer=quantizers.activation_input_quantizer(activation),
                        activation_quantizer=quantizers.activation_output_quantizer(activation),
                        name=name)


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
  for i, units in enumerate(config.lstm_units):
    x = _make_lstm(config, units, streaming, name=f"lstm_{i}", first=i == 0)(x)
  for i, units in enumerate(config.dense_units):
    x = _make_dense(config, units, "tanh", name=f"dense_{i}")(x)
  mask = _make_dense(config, bands, "sigmoid", name="mask")(x)
  return keras.Model(inputs, mask, name="tinylstm_streaming" if streaming else "tinylstm")


def count_parameters(model):
  return int(sum(int(w.shape.num_elements()) for w in model.weights if w.trainable))


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


def load_trained(model_dir, streaming=False):
  """Rebuilds the model of `model_dir` and loads its best (else latest) weights.

  Returns (config, model).
  """
  config = load_config(model_dir)
  model = build_mask_model(config, streaming=streaming)
  best = os.path.join(model_dir, BEST_WEIGHTS)
  if os.path.isfile(best):
    model.load_weights(best)
    return config, model
  # No validation has run yet: fall back to the newest training checkpoint.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  if latest is None:
    raise UserError(f"model_dir '{model_dir}' has no trained weights ({BEST_WEIGHTS} or "
                    "checkpoints/): train first with python -m tf_tinyse.train")
  tf.train.Checkpoint(model=model).read(latest).expect_partial()
  return config, model
