import dataclasses
import json

import numpy as np
import pytest
import tf_keras as keras

from tf_tinyse import model as model_lib
from tf_tinyse.errors import UserError

SMALL = model_lib.ModelConfig(lstm_units=(16, 12), dense_units=(8,))


def test_paper_config_has_the_papers_parameter_count():
  model = model_lib.build_mask_model(model_lib.ModelConfig())
  # Method: about 0.97 M parameters (QEQ adds 2 x 128).
  assert model_lib.count_parameters(model) == pytest.approx(0.97e6, rel=0.01)
  assert [l.name for l in model.layers[1:]] == ["qeq", "lstm_0", "lstm_1", "dense_0", "mask"]


def test_mask_is_in_unit_interval_and_has_one_value_per_band():
  model = model_lib.build_mask_model(SMALL)
  z = np.random.default_rng(0).uniform(0, 3, (2, 20, 128)).astype(np.float32)
  mask = model(z).numpy()
  assert mask.shape == (2, 20, 128)
  assert (mask >= 0).all() and (mask <= 1).all()


def test_model_is_causal():
  model = model_lib.build_mask_model(SMALL)
  rng = np.random.default_rng(1)
  z = rng.uniform(0, 3, (1, 30, 128)).astype(np.float32)
  changed = z.copy()
  changed[:, 17:] = rng.uniform(0, 3, (1, 13, 128))
  a, b = model(z).numpy(), model(changed).numpy()
  np.testing.assert_array_equal(a[:, :17], b[:, :17])
  assert not np.allclose(a[:, 17:], b[:, 17:])


def test_streaming_form_shares_weights_and_matches_sequence_output():
  training = model_lib.build_mask_model(SMALL)
  streaming = model_lib.build_mask_model(SMALL, streaming=True)
  streaming.set_weights(training.get_weights())
  z = np.random.default_rng(2).uniform(0, 3, (1, 25, 128)).astype(np.float32)
  expected = training(z).numpy()[0]
  for _ in range(2):  # and again after reset_states
    streaming.reset_states()
    frames = [streaming(z[:, t:t + 1]).numpy()[0, 0] for t in range(z.shape[1])]
    np.testing.assert_allclose(np.stack(frames), expected, atol=1e-5)


def test_config_round_trip_and_load_errors(tmp_path):
  model_lib.save_config(str(tmp_path), SMALL)
  assert model_lib.load_config(str(tmp_path)) == SMALL
  with pytest.raises(UserError, match="no trained weights"):
    model_lib.load_trained(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="not a valid model config"):
    model_lib.load_config(str(tmp_path))
  with pytest.raises(UserError, match="holds no config.json"):
    model_lib.load_config(str(tmp_path / "missing"))


def test_load_trained_restores_best_weights(tmp_path):
  model = model_lib.build_mask_model(SMALL)
  model_lib.save_config(str(tmp_path), SMALL)
  (tmp_path / "best").mkdir()
  model.save_weights(str(tmp_path / "best" / "weights.h5"))
  config, loaded = model_lib.load_trained(str(tmp_path), streaming=True)
  assert config == SMALL
  for a, b in zip(model.get_weights(), loaded.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert json.loads((tmp_path / "config.json").read_text())["lstm_units"] == [16, 12]


def test_quantized_model_trains_on_the_export_grid_and_shares_the_float_layout():
  quantized = dataclasses.replace(SMALL, quantize=True)
  qat = model_lib.build_mask_model(quantized)
  float_model = model_lib.build_mask_model(SMALL)
  # Same variables in the same order: a float model initializes QAT fine-tuning.
  assert [w.shape for w in qat.weights] == [w.shape for w in float_model.weights]
  qat.set_weights(float_model.get_weights())
  z = np.random.default_rng(3).uniform(0, 3, (1, 15, 128)).astype(np.float32)
  mask = qat(z).numpy()
  # The sigmoid output lies on TFLite's fixed int8 LOGISTIC grid k/256.
  np.testing.assert_allclose(mask * 256, np.round(mask * 256), atol=1e-3)
  # Fake quantization changes the output only slightly.
  assert np.abs(mask - float_model(z).numpy()).max() < 0.1
  streaming = model_lib.build_mask_model(quantized, streaming=True)
  streaming.set_weights(qat.get_weights())
  frames = [streaming(z[:, t:t + 1]).numpy()[0, 0] for t in range(z.shape[1])]
  np.testing.assert_allclose(np.stack(frames), mask[0], atol=1e-6)
  assert model_lib.ModelConfig.from_dict(quantized.to_dict()) == quantized


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(f.seek(0, 2) // 2)


def _save_checkpoints(model_dir, count):
  """Saves checkpoints ckpt-1 .. ckpt-`count` of a SMALL model, each with other weights;
  returns the weights saved in each."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model_lib.save_config(str(model_dir), SMALL)
  model = model_lib.build_mask_model(SMALL)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model),
                                       str(model_dir / "checkpoints"), max_to_keep=5)
  saved = []
  for number in range(1, count + 1):
    model.set_weights([w + number for w in model.get_weights()])
    manager.save(checkpoint_number=number)
    saved.append(model.get_weights())
  return saved


def test_load_trained_falls_back_to_the_newest_checkpoint_that_reads(tmp_path, monkeypatch):
  saved = _save_checkpoints(tmp_path, 3)
  _truncate(tmp_path / "checkpoints" / "ckpt-3.data-00000-of-00001")
  warnings = []
  monkeypatch.setattr(model_lib.logging, "warning", lambda msg, *args: warnings.append(msg % args))
  _, model = model_lib.load_trained(str(tmp_path))
  for a, b in zip(model.get_weights(), saved[1]):
    np.testing.assert_array_equal(a, b)
  assert len(warnings) == 1 and "ckpt-3 cannot be read" in warnings[0], warnings


def test_load_trained_with_no_readable_checkpoint_is_a_one_line_user_error(tmp_path):
  _save_checkpoints(tmp_path, 2)
  for number in (1, 2):
    _truncate(tmp_path / "checkpoints" / f"ckpt-{number}.data-00000-of-00001")
  with pytest.raises(UserError, match=r"none of the 2 checkpoints in '.*checkpoints' can be "
                     r"read .*delete that folder") as raised:
    model_lib.load_trained(str(tmp_path))
  assert "\n" not in str(raised.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_model"])
def test_load_trained_with_unreadable_best_weights_is_a_one_line_user_error(tmp_path, damage):
  model_lib.save_config(str(tmp_path), SMALL)
  best = tmp_path / "best" / "weights.h5"
  best.parent.mkdir()
  if damage == "other_model":
    model_lib.build_mask_model(dataclasses.replace(SMALL, lstm_units=(8, 8))).save_weights(
        str(best))
  else:
    model_lib.build_mask_model(SMALL).save_weights(str(best))
    if damage == "truncated":
      _truncate(best)
    else:
      best.write_bytes(b"not an hdf5 file" * 100)
  with pytest.raises(UserError, match=r"weights\.h5' cannot be read as the weights of this "
                     r"model .*delete it to use the newest checkpoint") as raised:
    model_lib.load_trained(str(tmp_path))
  assert "\n" not in str(raised.value)


def test_quantized_training_without_qeq_is_refused_before_it_clips_the_features(speech_clip):
  # The raw compressed mel features of real speech leave the [-1, 1] input grid of the int8
  # model: they are never negative and the loud bands exceed 1.
  from tf_tinyse import features  # pylint: disable=g-import-not-at-top
  z = features.waveform_features(speech_clip[None], SMALL.feature).numpy()
  assert z.min() >= 0 and (z > 1).mean() > 0.01
  with pytest.raises(UserError, match="--quantize needs --qeq"):
    dataclasses.replace(SMALL, quantize=True, use_qeq=False)
  with pytest.raises(UserError, match="--quantize needs --qeq"):
    model_lib.ModelConfig.from_dict({**SMALL.to_dict(), "quantize": True, "use_qeq": False})


def test_dropout_layers_are_in_the_training_form_only_and_hold_no_weights(tmp_path):
  config = dataclasses.replace(SMALL, dropout=0.3)
  training = model_lib.build_mask_model(config)
  streaming = model_lib.build_mask_model(config, streaming=True)
  assert [l.name for l in training.layers[1:]] == [
      "qeq", "lstm_0", "dropout_0", "lstm_1", "dropout_1", "dense_0", "mask"]
  assert [l.name for l in streaming.layers[1:]] == ["qeq", "lstm_0", "lstm_1", "dense_0", "mask"]
  assert model_lib.count_parameters(training) == model_lib.count_parameters(
      model_lib.build_mask_model(SMALL))
  streaming.set_weights(training.get_weights())
  z = np.random.default_rng(3).uniform(0, 3, (1, 12, 128)).astype(np.float32)
  # Outside training the dropout layers pass through: the forms agree, as without dropout.
  frames = [streaming(z[:, t:t + 1]).numpy()[0, 0] for t in range(z.shape[1])]
  np.testing.assert_allclose(np.stack(frames), training(z).numpy()[0], atol=1e-5)
  assert not np.allclose(training(z, training=True).numpy(), training(z).numpy())
  # The rate is saved with the model; a config.json written before the flag reads as 0.
  model_lib.save_config(str(tmp_path), config)
  assert model_lib.load_config(str(tmp_path)) == config
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["dropout"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert model_lib.load_config(str(tmp_path)) == SMALL
