"""What runs before the int8 model, on the device's CPU: features, then QEQ.

The int8 `.tflite` starts at the first LSTM: its input is the QEQ output `g ⊙ Z + b`
quantized to the fixed [-1, 1] 8-bit grid, exactly what the quantization-aware model's
first LSTM sees. QEQ stays outside the int8 graph because quantizing the raw features
first (a calibrated range of about [0, 4]) and then multiplying by gains of 2-4 puts the
rounding error of the input (measured: up to 7 steps of the 2/255 grid) in front of
every layer, while the QAT model never rounds the raw features. On the device QEQ is a
per-band multiply-add folded into the feature computation.

`Frontend` is saved beside the `.tflite` as `<name>_frontend.json` (feature settings and
the QEQ gain and bias), so the exported pair is all a device, or `tf_tinyse.enhance
--tflite`, needs.
"""
import dataclasses
import json
import os
from typing import Optional

import numpy as np

from keras_layers.qeq import QEQ
from tf_tinyse import features
from tf_tinyse import fileio
from tf_tinyse.errors import UserError

SUFFIX = "_frontend.json"


def frontend_path(tflite_path):
  return os.path.splitext(os.fspath(tflite_path))[0] + SUFFIX


@dataclasses.dataclass
class Frontend:
  feature: features.FeatureConfig
  qeq_gain: Optional[np.ndarray] = None
  qeq_bias: Optional[np.ndarray] = None

  @classmethod
  def from_model(cls, trained_model, feature_config):
    qeq = [layer for layer in trained_model.layers if isinstance(layer, QEQ)]
    if not qeq:
      return cls(feature_config)
    gain, bias = qeq[0].get_weights()
    return cls(feature_config, gain.astype(np.float32), bias.astype(np.float32))

  def model_input(self, mel_features):
    """Mel features [..., bands] → the int8 model's float input [..., bands]."""
    mel_features = np.asarray(mel_features, np.float32)
    if self.qeq_gain is None:
      return mel_features
    return mel_features * self.qeq_gain + self.qeq_bias

  def to_dict(self):
    return {"feature": self.feature.to_dict(),
            "qeq_gain": None if self.qeq_gain is None else self.qeq_gain.tolist(),
            "qeq_bias": None if self.qeq_bias is None else self.qeq_bias.tolist()}

  def save(self, path):
    fileio.write_json_atomic(path, self.to_dict())

  @classmethod
  def load(cls, path):
    if not os.path.isfile(path):
      raise UserError(f"'{path}' is missing: it holds the feature settings and QEQ of the "
                      ".tflite beside it; export again with python -m tf_tinyse.export")
    try:
      with open(path) as f:
        d = json.load(f)
      gain, bias = d["qeq_gain"], d["qeq_bias"]
      feature = features.FeatureConfig.from_dict(d["feature"])
      gain = None if gain is None else np.asarray(gain, np.float32)
      bias = None if bias is None else np.asarray(bias, np.float32)
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f"'{path}' is not a valid front-end file ({e}); export again") from e
    for name, values in (("qeq_gain", gain), ("qeq_bias", bias)):
      if values is not None and values.shape != (feature.num_bands,):
        raise UserError(f"'{path}': {name} has shape {values.shape}, expected "
                        f"({feature.num_bands},) (one per band); export again")
    if (gain is None) != (bias is None):
      raise UserError(f"'{path}': qeq_gain and qeq_bias must both be set or both null")
    return cls(feature, gain, bias)
