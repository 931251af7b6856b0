import dataclasses

import numpy as np

from tf_tinyse import enhancer
from tf_tinyse import model as model_lib
from tflm_export import frontend

SMALL = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(16,))


def test_streaming_enhancement_equals_whole_utterance(noisy_clip):
  noisy, _ = noisy_clip
  training = model_lib.build_mask_model(SMALL)
  streaming = model_lib.build_mask_model(SMALL, streaming=True)
  streaming.set_weights(training.get_weights())
  whole = enhancer.Enhancer(training, SMALL)(noisy)
  streamed = enhancer.StreamingEnhancer.from_keras(streaming, SMALL.feature)(noisy)
  assert whole.shape == streamed.shape == noisy.shape
  np.testing.assert_allclose(streamed, whole, atol=1e-5)
  # A second utterance starts from a clean state.
  np.testing.assert_allclose(enhancer.StreamingEnhancer.from_keras(streaming, SMALL.feature)(noisy),
                             whole, atol=1e-5)


def test_enhance_batch_returns_mask_and_waveform(noisy_clip):
  noisy, _ = noisy_clip
  model = model_lib.build_mask_model(SMALL)
  enhanced, mask = enhancer.enhance_batch(model, noisy[None], SMALL.feature)
  assert enhanced.shape == (1, len(noisy))
  assert mask.shape[-1] == SMALL.feature.num_bands
  # A mask in [0, 1] never adds energy beyond the noisy input's.
  assert np.sum(enhanced.numpy() ** 2) <= np.sum(noisy ** 2) * 1.01


def test_the_mask_floor_is_applied_alike_whole_streaming_and_after_a_save(noisy_clip, tmp_path):
  noisy, _ = noisy_clip
  floored = dataclasses.replace(SMALL, feature=dataclasses.replace(SMALL.feature,
                                                                   mask_floor=0.1))
  training = model_lib.build_mask_model(floored)
  streaming = model_lib.build_mask_model(floored, streaming=True)
  streaming.set_weights(training.get_weights())
  whole = enhancer.Enhancer(training, floored)(noisy)
  without = enhancer.Enhancer(training, SMALL)(noisy)
  assert np.abs(whole - without).max() > 1e-3  # the floor changes the output ...
  streamed = enhancer.StreamingEnhancer.from_keras(streaming, floored.feature)(noisy)
  np.testing.assert_allclose(streamed, whole, atol=1e-5)  # ... the same way in both forms
  # The floor travels in config.json and in the front-end file of an export.
  model_lib.save_config(str(tmp_path), floored)
  assert model_lib.load_config(str(tmp_path)).feature.mask_floor == 0.1
  frontend.Frontend(floored.feature).save(str(tmp_path / "m_frontend.json"))
  assert frontend.Frontend.load(str(tmp_path / "m_frontend.json")).feature.mask_floor == 0.1


def test_the_low_cut_is_applied_alike_whole_streaming_and_after_a_save(noisy_clip, tmp_path):
  noisy, _ = noisy_clip
  # Drift under the noisy speech, which the untrained model's mask lets through.
  noisy = noisy + 0.3 * np.std(noisy) * np.sin(2 * np.pi * 5 * np.arange(len(noisy)) / 16000)
  noisy = noisy.astype(np.float32)
  cut = dataclasses.replace(SMALL, feature=dataclasses.replace(SMALL.feature, mask_floor=0.1,
                                                               low_cut_hz=40.0))
  training = model_lib.build_mask_model(cut)
  streaming = model_lib.build_mask_model(cut, streaming=True)
  streaming.set_weights(training.get_weights())
  whole = enhancer.Enhancer(training, cut)(noisy)
  without = enhancer.Enhancer(training, dataclasses.replace(
      cut, feature=dataclasses.replace(cut.feature, low_cut_hz=0.0)))(noisy)
  low = np.fft.rfftfreq(len(noisy), 1 / 16000) < 20
  energy = lambda x: np.sum(np.abs(np.fft.rfft(x)[low]) ** 2)
  assert energy(whole) < 0.01 * energy(without)  # the cut removes the drift ...
  streamed = enhancer.StreamingEnhancer.from_keras(streaming, cut.feature)(noisy)
  np.testing.assert_allclose(streamed, whole, atol=1e-5)  # ... the same way in both forms
  # The cut travels in config.json and in the front-end file of an export.
  model_lib.save_config(str(tmp_path), cut)
  assert model_lib.load_config(str(tmp_path)).feature.low_cut_hz == 40.0
  frontend.Frontend(cut.feature).save(str(tmp_path / "m_frontend.json"))
  assert frontend.Frontend.load(str(tmp_path / "m_frontend.json")).feature.low_cut_hz == 40.0
