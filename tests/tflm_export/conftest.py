"""A small streaming mask model, real features and its int8 conversion, shared by the tests.

Conversion takes seconds, so it happens once per session.
"""
import numpy as np
import pytest

from tf_tinyse import features
from tf_tinyse import model as model_lib
from tflm_export import convert

SMALL_CONFIG = model_lib.ModelConfig(lstm_units=(32, 32), dense_units=(32,), use_qeq=True)


def real_features(wave, config=SMALL_CONFIG):
  """Compressed mel features [frames, bands] of a waveform, as the model sees them."""
  spectra = features.stft(np.asarray(wave, np.float32)[None], config.feature)
  return features.mel_features(spectra, config.feature).numpy()[0]


@pytest.fixture(scope="session")
def utterances(noisy_clip, noise_clip):
  """Two real utterances' features: noisy speech (~188 frames) and noise (~60 frames)."""
  noisy, _ = noisy_clip
  return [real_features(noisy), real_features(noise_clip[:16000])]


@pytest.fixture(scope="session")
def streaming_model():
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = model_lib.build_mask_model(SMALL_CONFIG, streaming=True)
  # Non-trivial QEQ so the MUL/ADD path is exercised with values a trained model could have.
  qeq = model.get_layer("qeq")
  qeq.set_weights([np.full(qeq.gain.shape, 0.8, np.float32),
                   np.full(qeq.bias.shape, -0.2, np.float32)])
  return model


@pytest.fixture(scope="session")
def int8_bytes(streaming_model, utterances):
  return convert.convert_to_int8(streaming_model, utterances)
