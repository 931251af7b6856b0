"""A small streaming mask model in the form the int8 export has, real features through a
front-end, and its int8 conversion, shared by the tests.

The exported int8 model starts at the first LSTM: QEQ runs in the float front-end
(`tflm_export.frontend`), so the shared model has no QEQ and is fed the front-end's output of
real features. Conversion takes seconds, so it happens once per session.
"""
import numpy as np
import pytest

from tf_tinyse import features
from tf_tinyse import model as model_lib
from tflm_export import convert
from tflm_export import frontend

SMALL_CONFIG = model_lib.ModelConfig(lstm_units=(32, 32), dense_units=(32,), use_qeq=False)
# A non-trivial QEQ, with values a trained model could have, in front of the model.
SMALL_FRONTEND = frontend.Frontend(
    SMALL_CONFIG.feature, qeq_gain=np.full(SMALL_CONFIG.feature.num_bands, 0.8, np.float32),
    qeq_bias=np.full(SMALL_CONFIG.feature.num_bands, -0.2, np.float32))


def real_features(wave, config=SMALL_CONFIG):
  """Compressed mel features [frames, bands] of a waveform."""
  spectra = features.stft(np.asarray(wave, np.float32)[None], config.feature)
  return features.mel_features(spectra, config.feature).numpy()[0]


@pytest.fixture(scope="session")
def utterances(noisy_clip, noise_clip):
  """Two real utterances as the int8 model sees them (front-end output of their features):
  noisy speech (~188 frames) and noise (~60 frames)."""
  noisy, _ = noisy_clip
  return [SMALL_FRONTEND.model_input(real_features(wave))
          for wave in (noisy, noise_clip[:16000])]


@pytest.fixture(scope="session")
def streaming_model():
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  return model_lib.build_mask_model(SMALL_CONFIG, streaming=True)


@pytest.fixture(scope="session")
def int8_bytes(streaming_model, utterances):
  return convert.convert_to_int8(streaming_model, utterances)
