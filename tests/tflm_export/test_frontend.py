"""The front-end beside the int8 model: QEQ taken from the trained model, applied to real
features, saved and loaded, and clear errors for a missing or broken file."""
import json
import os

import numpy as np
import pytest

from tf_tinyse import features
from tf_tinyse import model as model_lib
from tf_tinyse.errors import UserError
from tflm_export import frontend

from tests.tflm_export.conftest import real_features

FEATURE = features.FeatureConfig(num_bands=32)
WITH_QEQ = model_lib.ModelConfig(lstm_units=(8,), dense_units=(), use_qeq=True, feature=FEATURE)
WITHOUT_QEQ = model_lib.ModelConfig(lstm_units=(8,), dense_units=(), use_qeq=False,
                                    feature=FEATURE)


@pytest.fixture(scope="module")
def trained_qeq():
  """A model whose QEQ has per-band gains and biases (not the initial ones and zeros)."""
  model = model_lib.build_mask_model(WITH_QEQ)
  gain = np.linspace(0.5, 3.0, FEATURE.num_bands).astype(np.float32)
  bias = np.linspace(-1.5, 0.5, FEATURE.num_bands).astype(np.float32)
  model.get_layer("qeq").set_weights([gain, bias])
  return model, gain, bias


@pytest.fixture(scope="module")
def mel(speech_clip):
  return real_features(speech_clip[:8000], WITH_QEQ)


def test_from_model_takes_the_qeq_weights(trained_qeq):
  model, gain, bias = trained_qeq
  fe = frontend.Frontend.from_model(model, FEATURE)
  assert fe.feature == FEATURE
  np.testing.assert_array_equal(fe.qeq_gain, gain)
  np.testing.assert_array_equal(fe.qeq_bias, bias)
  assert fe.qeq_gain.dtype == fe.qeq_bias.dtype == np.float32


def test_model_input_applies_gain_and_bias_per_band(trained_qeq, mel):
  model, gain, bias = trained_qeq
  fe = frontend.Frontend.from_model(model, FEATURE)
  got = fe.model_input(mel)
  assert got.shape == mel.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, mel * gain + bias, rtol=1e-6)
  # The same numbers the Keras QEQ layer computes in front of the first LSTM.
  qeq_out = model.get_layer("qeq")(mel[None]).numpy()[0]
  np.testing.assert_allclose(got, qeq_out, rtol=1e-6, atol=1e-6)
  # Any leading shape: one frame, or a batch of utterances.
  np.testing.assert_allclose(fe.model_input(mel[0]), got[0], rtol=1e-6)


def test_without_qeq_the_features_pass_unchanged(mel):
  fe = frontend.Frontend.from_model(model_lib.build_mask_model(WITHOUT_QEQ), FEATURE)
  assert fe.qeq_gain is None and fe.qeq_bias is None
  np.testing.assert_array_equal(fe.model_input(mel), mel)


@pytest.mark.parametrize("use_qeq", [True, False])
def test_save_load_round_trip(trained_qeq, mel, tmp_path, use_qeq):
  fe = (frontend.Frontend.from_model(trained_qeq[0], FEATURE) if use_qeq else
        frontend.Frontend(FEATURE))
  path = str(tmp_path / "model_frontend.json")
  fe.save(path)
  with open(path) as f:
    assert json.load(f)["feature"] == FEATURE.to_dict()
  loaded = frontend.Frontend.load(path)
  assert loaded.feature == FEATURE
  if use_qeq:
    np.testing.assert_array_equal(loaded.qeq_gain, fe.qeq_gain)
    np.testing.assert_array_equal(loaded.qeq_bias, fe.qeq_bias)
  else:
    assert loaded.qeq_gain is None and loaded.qeq_bias is None
  # float32 survives JSON exactly, so the loaded front-end computes the same model input.
  np.testing.assert_array_equal(loaded.model_input(mel), fe.model_input(mel))
  assert [n for n in os.listdir(tmp_path)] == ["model_frontend.json"]  # no temp file left


def test_missing_file_is_a_user_error(tmp_path):
  path = str(tmp_path / "model_frontend.json")
  with pytest.raises(UserError, match=r"model_frontend\.json' is missing.*tf_tinyse\.export"):
    frontend.Frontend.load(path)


@pytest.mark.parametrize("content", [
    "{not json",
    "[1, 2, 3]",
    json.dumps({"feature": FEATURE.to_dict()}),  # no QEQ keys
    json.dumps({"feature": {"no_such_setting": 1}, "qeq_gain": None, "qeq_bias": None}),
])
def test_malformed_file_is_a_user_error(tmp_path, content):
  path = tmp_path / "model_frontend.json"
  path.write_text(content)
  with pytest.raises(UserError, match=r"is not a valid front-end file .*export again") as e:
    frontend.Frontend.load(str(path))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("tflite, expected", [
    ("model.tflite", "model_frontend.json"),
    (os.path.join("out", "se.v2.tflite"), os.path.join("out", "se.v2_frontend.json")),
])
def test_frontend_path_is_named_after_the_tflite(tflite, expected, tmp_path):
  assert frontend.frontend_path(tflite) == expected
  assert frontend.frontend_path(tmp_path / tflite) == str(tmp_path / expected)


def test_load_refuses_a_gain_of_the_wrong_length(tmp_path):
  path = tmp_path / "m_frontend.json"
  fe = frontend.Frontend(features.FeatureConfig(), np.ones(128, np.float32),
                         np.zeros(128, np.float32))
  d = fe.to_dict()
  d["qeq_gain"] = [1.0]
  path.write_text(json.dumps(d))
  with pytest.raises(UserError, match="qeq_gain has shape"):
    frontend.Frontend.load(str(path))
