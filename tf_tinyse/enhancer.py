"""Waveform in, waveform out, with a trained mask model.

One function does the signal path (`enhance_batch`) for training and whole
utterances; `StreamingEnhancer` runs the streaming form of the model one frame
at a time, as the device does, around the same STFT and inverse STFT.
"""
import os

from absl import flags
import numpy as np
import tensorflow as tf

from tf_tinyse import features
from tf_tinyse import model as model_lib
from tf_tinyse.errors import UserError

flags.DEFINE_bool("streaming", False, "Enhance frame by frame with the streaming model "
                  "(as the device does) instead of one whole-utterance pass.")
flags.DEFINE_string("tflite", None, "Run this int8 .tflite in the TFLite Micro interpreter "
                    "instead of the Keras model (features, QEQ and resynthesis stay in Python, "
                    "read from the <name>_frontend.json beside it); --model_dir is then not "
                    "needed.")


def enhance_batch(mask_model, noisy_waves, config, training=False):
  """[batch, samples] → ([batch, samples] enhanced, [batch, frames, bands] mask)."""
  noisy_waves = tf.convert_to_tensor(noisy_waves, tf.float32)
  spectra = features.stft(noisy_waves, config)
  mask = mask_model(features.mel_features(spectra, config), training=training)
  enhanced = features.istft(features.apply_mel_mask(spectra, mask, config), config,
                            tf.shape(noisy_waves)[-1])
  return enhanced, mask


class Enhancer:
  """Enhances whole utterances with the training form of a trained model."""

  def __init__(self, mask_model, config):
    self.mask_model = mask_model
    self.config = config
    self._enhance = tf.function(
        lambda x: enhance_batch(self.mask_model, x, self.config.feature)[0],
        input_signature=[tf.TensorSpec([1, None], tf.float32)], reduce_retracing=True)

  @classmethod
  def from_model_dir(cls, model_dir):
    config, mask_model = model_lib.load_trained(model_dir)
    return cls(mask_model, config)

  def __call__(self, noisy):
    noisy = np.asarray(noisy, np.float32)
    return self._enhance(noisy[None, :])[0].numpy()


class StreamingEnhancer:
  """Enhances an utterance frame by frame with a frame-in/mask-out step function.

  `mask_step` maps one feature frame [bands] to one mask frame [bands] and
  keeps its recurrent state between calls; `reset` clears it. The Keras
  streaming model and the TFLM interpreter both fit this shape.
  """

  def __init__(self, mask_step, reset, feature_config):
    self.mask_step = mask_step
    self.reset = reset
    self.feature_config = feature_config

  @classmethod
  def from_keras(cls, streaming_model, feature_config):
    step = tf.function(lambda frame: streaming_model(frame, training=False),
                       input_signature=[tf.TensorSpec([1, 1, feature_config.num_bands],
                                                      tf.float32)])
    return cls(lambda z: step(z[None, None, :])[0, 0].numpy(), streaming_model.reset_states,
               feature_config)

  @classmethod
  def from_model_dir(cls, model_dir):
    config, streaming_model = model_lib.load_trained(model_dir, streaming=True)
    return cls.from_keras(streaming_model, config.feature)

  @classmethod
  def from_tflm(cls, tflm_model, frontend):
    """The int8 model in TFLite Micro (`tflm_export.tflm_runner.TflmModel`) behind its
    front-end (`tflm_export.frontend.Frontend`: features → QEQ)."""
    return cls(lambda z: tflm_model.run(frontend.model_input(z[None]))[0], tflm_model.reset,
               frontend.feature)

  @classmethod
  def from_tflite_file(cls, tflite_path):
    """An exported `.tflite` and the `<name>_frontend.json` written beside it."""
    from tflm_export import frontend as frontend_lib  # pylint: disable=g-import-not-at-top
    from tflm_export import tflm_runner  # pylint: disable=g-import-not-at-top
    if not os.path.isfile(tflite_path):
      raise UserError(f"--tflite '{tflite_path}' does not exist: export one with "
                      "python -m tf_tinyse.export")
    frontend = frontend_lib.Frontend.load(frontend_lib.frontend_path(tflite_path))
    with open(tflite_path, "rb") as f:
      return cls.from_tflm(tflm_runner.TflmModel(f.read()), frontend)

  def masks(self, noisy):
    """Mel masks [frames, bands] of an utterance, computed one frame at a time."""
    spectra = features.stft(np.asarray(noisy, np.float32)[None, :], self.feature_config)
    z = features.mel_features(spectra, self.feature_config)[0].numpy()
    self.reset()
    return np.stack([self.mask_step(frame) for frame in z]), spectra

  def enhance_with_mask(self, noisy):
    """(mel mask [frames, bands], enhanced waveform) of one utterance, from a reset state."""
    mask, spectra = self.masks(noisy)
    enhanced = features.istft(
        features.apply_mel_mask(spectra, mask[None].astype(np.float32), self.feature_config),
        self.feature_config, len(noisy))
    return mask, enhanced[0].numpy()

  def __call__(self, noisy):
    return self.enhance_with_mask(noisy)[1]


def make_enhancer(model_dir, streaming=False, tflite=None):
  """The waveform → waveform function of a trained model: Keras whole-utterance, Keras
  streaming, or (with `tflite`) the exported int8 model in TFLM frame by frame, which needs
  only the `.tflite` and its front-end file, not `model_dir`."""
  if tflite:
    return StreamingEnhancer.from_tflite_file(tflite)
  if streaming:
    return StreamingEnhancer.from_model_dir(model_dir)
  return Enhancer.from_model_dir(model_dir)
