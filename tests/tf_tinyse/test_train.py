"""The training loop: model_dir contents, determinism, resume after SIGTERM/SIGKILL,
MirroredStrategy equivalence and refusing to resume a different model."""
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import features
from tf_tinyse import losses
from tf_tinyse import model as model_lib
from tf_tinyse import train
from tf_tinyse.errors import UserError

TINY = model_lib.ModelConfig(lstm_units=(8, 8), dense_units=(8,))
TINY_DATA = data.DataConfig(batch_size=4, segment_seconds=0.4)
TINY_FLAGS = ["--lstm_units=8,8", "--dense_units=8", "--batch_size=4", "--segment_seconds=0.4",
              "--max_validation_files=2"]
# Long enough that an interrupt sent after the first checkpoint lands well before the end,
# short enough that the resumed run takes a few seconds.
RESUME_STEPS = 100
RESUME_FLAGS = [f"--steps={RESUME_STEPS}", "--checkpoint_every=5", "--validate_every=1000",
                "--log_every=5", "--seed=0"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")


def _train(model_dir, steps, config=TINY, seed=0, checkpoint_every=5):
  return train.train(config, TINY_DATA, data.discover_corpus(demo_data.path()), str(model_dir),
                     steps, seed=seed, checkpoint_every=checkpoint_every, validate_every=1000,
                     max_validation_files=2, log_every=5, progress=False)


def _model_variables(model_dir):
  """{name: value} of the model's variables in the newest checkpoint of `model_dir`."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(model_dir,
                                                                            "checkpoints")))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k.startswith("model/")}


def _max_difference(a, b):
  assert a.keys() == b.keys() and a
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _train_command(model_dir):
  return [sys.executable, "-m", "tf_tinyse.train", f"--data_dir={demo_data.path()}",
          f"--model_dir={model_dir}", *TINY_FLAGS, *RESUME_FLAGS]


def _run_to_end(command, log_dir, name):
  """Runs `command` to completion; returns (returncode, stdout, stderr)."""
  with open(log_dir / f"{name}.out", "w+") as out, open(log_dir / f"{name}.err", "w+") as err:
    rc = subprocess.run(command, stdout=out, stderr=err, env=ENV, timeout=120).returncode
    out.seek(0)
    err.seek(0)
    return rc, out.read(), err.read()


def _start_and_stop_after_first_checkpoint(command, model_dir, log_dir, sig):
  """Starts training, sends `sig` once a checkpoint is recorded; returns (rc, stderr)."""
  err_path = log_dir / "interrupted.err"
  with open(log_dir / "interrupted.out", "w") as out, open(err_path, "w") as err:
    proc = subprocess.Popen(command, stdout=out, stderr=err, env=ENV)
    checkpoints = os.path.join(model_dir, "checkpoints")
    deadline = time.monotonic() + 120
    try:
      # `latest_checkpoint` reads the `checkpoint` state file, written after the checkpoint
      # files themselves, so a hit means a complete checkpoint that a rerun will find.
      while tf.train.latest_checkpoint(checkpoints) is None:
        assert proc.poll() is None, f"training ended before its first checkpoint: {command}"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
      proc.send_signal(sig)
      rc = proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return rc, err_path.read_text()


def _modes(folder):
  """({folder: mode}, {file: mode}) of everything under `folder`, by '/'-joined relative path."""
  modes = ({}, {})
  for root, folders, files in os.walk(folder):
    for is_file, names in enumerate((folders, files)):
      for name in names:
        path = os.path.join(root, name)
        relative = os.path.relpath(path, folder).replace(os.sep, "/")
        modes[is_file][relative] = os.stat(path).st_mode & 0o777
  return modes


def _checkpoint_step(model_dir):
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  return int(re.search(r"ckpt-(\d+)$", latest).group(1))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """6 steps, checkpoints ckpt-5 and ckpt-6, written under umask 022."""
  model_dir = tmp_path_factory.mktemp("tiny_run")
  previous = os.umask(0o022)
  try:
    return model_dir, _train(model_dir, steps=6)
  finally:
    os.umask(previous)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """Model variables after an uninterrupted run with the flags of the resume tests."""
  model_dir = tmp_path_factory.mktemp("uninterrupted")
  result = _train(model_dir, steps=RESUME_STEPS)
  assert result["step"] == RESUME_STEPS
  return _model_variables(model_dir)


def test_train_writes_the_model_dir_layout(tiny_run):
  model_dir, result = tiny_run
  assert result["step"] == 6 and result["resumed_from"] == 0
  assert model_lib.load_config(model_dir) == TINY
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
  assert os.path.isfile(os.path.join(model_dir, "best", "weights.h5"))
  with open(os.path.join(model_dir, "best", "info.json")) as f:
    info = json.load(f)
  assert info["step"] == 6 and np.isfinite(info["si_sdr"]) and info == result["best"]
  events = glob.glob(os.path.join(model_dir, "logs", "events.out.tfevents.*"))
  assert events
  tags = {value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
          for value in event.summary.value}
  assert {"train/loss", "valid/si_sdr"} <= tags
  # Readable by others (umask 022): ours through fileio (best/weights.h5 is written by h5py at
  # a temporary path), checkpoints and logs by TF itself.
  folders, files = _modes(model_dir)
  assert {"best", "checkpoints", "logs"} == folders.keys() and set(folders.values()) == {0o755}
  assert {"config.json", "best/weights.h5", "best/info.json", "checkpoints/checkpoint",
          "checkpoints/ckpt-6.index", "checkpoints/ckpt-6.data-00000-of-00001"} <= files.keys()
  assert set(files.values()) == {0o644}, files
  # The trained model loads back through the public loader.
  config, model = model_lib.load_trained(model_dir)
  assert config == TINY and model.output_shape[-1] == TINY.feature.num_bands


def test_training_again_to_the_same_step_does_nothing(tiny_run):
  model_dir, _ = tiny_run
  before = _model_variables(model_dir)
  result = _train(model_dir, steps=6)
  assert result == {"step": 6, "resumed_from": 6, "best": result["best"], "init_from": None,
                    "restarted": None}
  assert _max_difference(before, _model_variables(model_dir)) == 0.0


def test_same_seed_gives_identical_weights_on_cpu(tiny_run, tmp_path):
  # Measured: bitwise identical on CPU (data stream and initialisation are seeded).
  _train(tmp_path / "again", steps=6)
  assert _max_difference(_model_variables(tiny_run[0]),
                         _model_variables(tmp_path / "again")) == 0.0
  _train(tmp_path / "other_seed", steps=6, seed=1)
  assert _max_difference(_model_variables(tiny_run[0]),
                         _model_variables(tmp_path / "other_seed")) > 1e-3


def test_resuming_a_model_dir_of_another_config_is_refused(tiny_run):
  model_dir, _ = tiny_run
  other = model_lib.ModelConfig(lstm_units=(16, 8), dense_units=(8,))
  with pytest.raises(UserError, match=r"holds a model of another configuration.*new --model_dir"):
    _train(model_dir, steps=8, config=other)
  # Nothing was overwritten by the refused run.
  assert model_lib.load_config(model_dir) == TINY


def _damage(path, how):
  """Cuts `path` to half its size, or flips 64 bytes in its middle (a bad checksum)."""
  with open(path, "r+b") as f:
    size = f.seek(0, 2)
    if how == "truncated":
      f.truncate(size // 2)
    else:
      f.seek(size // 2)
      flipped = bytes(b ^ 0xFF for b in f.read(64))
      f.seek(size // 2)
      f.write(flipped)


def _data_file(model_dir, step):
  return os.path.join(model_dir, "checkpoints", f"ckpt-{step}.data-00000-of-00001")


def _trainer_state(trainer):
  """Every value a checkpoint restores: step, model weights, optimizer variables (slots too)."""
  return ([int(trainer.step.numpy())] + [v.numpy() for v in trainer.model.weights] +
          [v.numpy() for v in trainer.optimizer.variables])


def _trainer_and_checkpoint():
  """A new Trainer and a checkpoint of it, as in train()."""
  trainer = train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=4,
                          decay_steps=6, final_learning_rate_fraction=0.1)
  return trainer, tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer,
                                      step=trainer.step)


# Measured: cut short, reading the newest raises IndexError (Read less bytes than requested)
# before anything is assigned; with a bad checksum, DataLossError once the restore op runs.
@pytest.mark.parametrize("how", ["truncated", "bit_flipped"])
def test_restoring_skips_a_corrupt_checkpoint_and_leaves_nothing_of_it(tiny_run, tmp_path, how):
  folder = str(tmp_path / "checkpoints")
  shutil.copytree(os.path.join(tiny_run[0], "checkpoints"), folder)
  good, checkpoint = _trainer_and_checkpoint()
  checkpoint.restore(os.path.join(folder, "ckpt-5")).assert_existing_objects_matched()
  expected = _trainer_state(good)
  assert expected[0] == 5
  _damage(_data_file(tmp_path, 6), how)

  trainer, checkpoint = _trainer_and_checkpoint()
  path = model_lib.restore_newest_checkpoint(checkpoint, folder)

  assert path == os.path.join(folder, "ckpt-5")
  state = _trainer_state(trainer)
  assert state[0] == 5 and int(trainer.optimizer.iterations.numpy()) == 5
  assert len(state) == len(expected) and all(np.array_equal(a, b)
                                             for a, b in zip(state, expected))


def test_training_resumes_from_the_checkpoint_before_a_corrupt_newest(tiny_run, tmp_path,
                                                                     monkeypatch):
  model_dir, reference = tmp_path / "model", tmp_path / "reference"
  shutil.copytree(tiny_run[0], model_dir)
  shutil.copytree(tiny_run[0], reference)
  _damage(_data_file(model_dir, 6), "truncated")
  # The reference never had ckpt-6: the same run from ckpt-5.
  for path in glob.glob(str(reference / "checkpoints" / "ckpt-6.*")):
    os.remove(path)
  tf.compat.v1.train.update_checkpoint_state(str(reference / "checkpoints"),
                                             str(reference / "checkpoints" / "ckpt-5"))
  warnings = []
  monkeypatch.setattr(model_lib.logging, "warning", lambda msg, *args: warnings.append(msg % args))

  result = _train(model_dir, steps=8)

  assert result["resumed_from"] == 5 and result["step"] == 8
  about_checkpoints = [w for w in warnings if "checkpoint" in w]
  assert len(about_checkpoints) == 1 and re.search(
      r"ckpt-6 cannot be read \(Read less bytes than requested\)", about_checkpoints[0]), warnings
  assert _checkpoint_step(model_dir) == 8
  assert _train(reference, steps=8)["resumed_from"] == 5
  assert _max_difference(_model_variables(model_dir), _model_variables(reference)) == 0.0


def test_dropout_acts_in_training_and_a_resumed_run_draws_the_same_masks(tmp_path):
  config = dataclasses.replace(TINY, dropout=0.3)

  def run(model_dir, steps, config=config):
    # A constant learning rate: a run of 5 steps resumed to 8 then follows the same schedule
    # as a run of 8 (the cosine decay is sized by the total).
    return train.train(config, TINY_DATA, data.discover_corpus(demo_data.path()),
                       str(model_dir), steps, checkpoint_every=5, validate_every=1000,
                       max_validation_files=2, log_every=5, progress=False,
                       final_learning_rate_fraction=1.0)

  straight, resumed, without = tmp_path / "straight", tmp_path / "resumed", tmp_path / "without"
  run(straight, 8)
  assert run(resumed, 5)["step"] == 5
  assert run(resumed, 8)["resumed_from"] == 5
  # The masks are a function of (seed, step): the resumed run ends where the straight one does.
  assert _max_difference(_model_variables(resumed), _model_variables(straight)) <= 1e-6
  # Precondition: dropout changed the training (the same seed without it ends elsewhere).
  run(without, 8, config=TINY)
  assert _max_difference(_model_variables(straight), _model_variables(without)) > 1e-4


def test_training_with_no_readable_checkpoint_is_a_one_line_user_error(tiny_run, tmp_path):
  model_dir = tmp_path / "model"
  shutil.copytree(tiny_run[0], model_dir)
  for step in (5, 6):
    _damage(_data_file(model_dir, step), "truncated")
  with pytest.raises(UserError, match=r"^none of the 2 checkpoints in '.+checkpoints' can be "
                     r"read \(corrupt or cut short\); delete that folder to train from the "
                     r"start$") as raised:
    _train(model_dir, steps=8)
  assert "\n" not in str(raised.value)


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(tmp_path, uninterrupted):
  model_dir = tmp_path / "model"
  command = _train_command(model_dir)
  rc, stderr = _start_and_stop_after_first_checkpoint(command, model_dir, tmp_path,
                                                      signal.SIGTERM)
  assert rc == 2, stderr
  assert "Traceback" not in stderr
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, stderr
  match = re.fullmatch(r"error: interrupted at step (\d+); checkpoint saved in (.+): run the "
                       r"same command to resume", errors[0])
  assert match, errors[0]
  step = int(match.group(1))
  assert 0 < step < RESUME_STEPS
  assert _checkpoint_step(model_dir) == step

  rc, stdout, stderr = _run_to_end(command, tmp_path, "resumed")
  assert rc == 0, stderr
  assert re.search(rf"resumed from \S+ckpt-{step} at step {step}\b", stderr), stderr
  assert f"trained to step {RESUME_STEPS} (started at {step})" in stdout
  assert _checkpoint_step(model_dir) == RESUME_STEPS
  # The data stream is a function of (seed, step) and the checkpoint holds the optimizer, so
  # the resumed run ends where the uninterrupted one does (within 1e-6 on CPU, as measured).
  assert _max_difference(_model_variables(model_dir), uninterrupted) <= 1e-6


def test_sigkill_rerun_resumes_from_the_last_periodic_checkpoint(tmp_path, uninterrupted):
  model_dir = tmp_path / "model"
  command = _train_command(model_dir)
  rc, _ = _start_and_stop_after_first_checkpoint(command, model_dir, tmp_path, signal.SIGKILL)
  assert rc == -signal.SIGKILL
  step = _checkpoint_step(model_dir)
  assert step % 5 == 0 and 0 < step < RESUME_STEPS  # a periodic one: nothing ran at the kill

  rc, stdout, stderr = _run_to_end(command, tmp_path, "resumed")
  assert rc == 0, stderr
  assert re.search(rf"resumed from \S+ckpt-{step} at step {step}\b", stderr), stderr
  assert f"trained to step {RESUME_STEPS} (started at {step})" in stdout
  assert _max_difference(_model_variables(model_dir), uninterrupted) <= 1e-6


# Runs in a fresh interpreter: logical devices must be configured before TF initializes.
_MIRRORED_SCRIPT = textwrap.dedent("""
    import dataclasses, json, os, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import tf_keras as keras
    from tf_tinyse import data, demo_data, train
    from tf_tinyse import model as model_lib

    STEPS, BATCH = 4, 4
    config = model_lib.ModelConfig(lstm_units=(8, 8), dense_units=(8,))
    data_config = data.DataConfig(batch_size=BATCH, segment_seconds=0.4)
    files = data.discover_corpus(demo_data.path()).split("train")
    files = dataclasses.replace(files, clean=files.clean[:4], noise=files.noise[:4])
    stream = data.make_training_dataset(data.load_audio_set(files), data_config, seed=0)
    batches = [tuple(t.numpy() for t in b) for b in stream.take(STEPS)]
    noisy = np.concatenate([b[0] for b in batches])
    clean = np.concatenate([b[1] for b in batches])

    def run(strategy, initial):
      trainer = train.Trainer(config, strategy, learning_rate=1e-2, global_batch_size=BATCH)
      trainer.model.set_weights(initial)
      dataset = tf.data.Dataset.from_tensor_slices((noisy, clean)).batch(BATCH)
      iterator = iter(strategy.experimental_distribute_dataset(dataset))
      losses = [float(trainer.train_step(next(iterator))) for _ in range(STEPS)]
      return losses, trainer.model.get_weights(), int(trainer.step.numpy())

    keras.utils.set_random_seed(0)
    initial = model_lib.build_mask_model(config).get_weights()
    single_losses, single_weights, _ = run(tf.distribute.get_strategy(), initial)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored_losses, mirrored_weights, steps = run(mirrored, initial)
    first = next(iter(mirrored.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((noisy, clean)).batch(BATCH))))
    result = {
        "replica_batches": [int(t.shape[0])
                            for t in mirrored.experimental_local_results(first[0])],
        "replicas": mirrored.num_replicas_in_sync, "steps": steps,
        "single": single_losses, "mirrored": mirrored_losses,
        "moved": max(float(np.max(np.abs(w - i))) for w, i in zip(single_weights, initial)),
        "weight_difference": max(float(np.max(np.abs(a - b)))
                                 for a, b in zip(single_weights, mirrored_weights))}
    print("RESULT " + json.dumps(result))
""")


def test_mirrored_strategy_on_two_cpus_matches_a_single_device():
  proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT], capture_output=True,
                        text=True, env=ENV, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT ", 1)[1])
  assert result["replicas"] == 2 and result["steps"] == 4
  assert result["replica_batches"] == [2, 2]  # each replica gets half of the global batch
  assert result["moved"] > 1e-3  # training changed the weights: the comparison means something
  # Measured: equal losses; weights within 3e-7 on one machine and 1.9e-5 on a CI machine
  # (the replicas' gradients are summed in another order, and Adam at lr 1e-2 magnifies that
  # for weights whose gradients are near zero). Training on half of each batch alone, as a
  # replica that missed the other's gradients would, moves the weights 0.05 away (measured):
  # the bound is 500x below that.
  np.testing.assert_allclose(result["mirrored"], result["single"], rtol=1e-5)
  assert result["weight_difference"] < 1e-4, result


def test_train_with_a_mirrored_strategy(tmp_path):
  result = train.train(TINY, TINY_DATA, data.discover_corpus(demo_data.path()), str(tmp_path),
                       2, validate_every=1000, max_validation_files=1, progress=False,
                       strategy=tf.distribute.MirroredStrategy(["/cpu:0"]))
  assert result["step"] == 2


def test_fitting_qeq_into_the_quantization_range_keeps_the_float_function():
  config = model_lib.ModelConfig(lstm_units=(8, 8), dense_units=(8,))
  model = model_lib.build_mask_model(config)
  rng = np.random.default_rng(0)
  noisy = (0.1 * rng.standard_normal((2, 8000))).astype(np.float32)
  batches = [(noisy, noisy)]
  train.calibrate_qeq(model, config, batches)
  z = features.mel_features(features.stft(noisy, config.feature), config.feature)
  before = model(z).numpy()
  spread_before = np.percentile(np.abs(model.get_layer("qeq")(z).numpy()), 99.9)
  k = train.fit_qeq_into_quantization_range(model, config, batches)
  assert k == pytest.approx(spread_before, rel=1e-4) and k > 1
  # QEQ output now within [-1, 1] but for 0.1 %; the network computes the same function.
  assert np.percentile(np.abs(model.get_layer("qeq")(z).numpy()), 99.9) == pytest.approx(1.0,
                                                                                          rel=1e-3)
  np.testing.assert_allclose(model(z).numpy(), before, atol=1e-5)


# --- what validation scores --------------------------------------------------------------------


def test_best_info_records_the_validation_speakers_and_noises(tiny_run):
  model_dir, result = tiny_run
  with open(os.path.join(model_dir, "best", "info.json")) as f:
    recorded = json.load(f)["validation_data"]
  expected = data.discover_corpus(demo_data.path()).validation_report()
  assert recorded == expected == result["best"]["validation_data"]
  assert len(recorded["speakers"]) == 4 and len(recorded["noise_files"]) == 4
  assert recorded["shared_with_train"] == {"speakers": [], "noise_sources": []}


def test_validation_shared_with_training_is_recorded_and_warned_about(tmp_path, monkeypatch):
  demo = sorted(glob.glob(os.path.join(demo_data.path(), "speech", "train", "*.flac")))
  for split, sources in (("train", demo[:2]), ("valid", demo[1:3])):  # valid shares demo[1]
    os.makedirs(tmp_path / "data" / "speech" / split)
    for path in sources:
      shutil.copy(path, tmp_path / "data" / "speech" / split)
  os.makedirs(tmp_path / "data" / "noise")
  shutil.copy(sorted(glob.glob(os.path.join(demo_data.path(), "noise", "train", "*.flac")))[0],
              tmp_path / "data" / "noise")
  warnings = []
  monkeypatch.setattr(train.logging, "warning", lambda msg, *args: warnings.append(msg % args))
  monkeypatch.setattr(data.corpus.logging, "warning",
                      lambda msg, *args: warnings.append(msg % args))
  corpus = data.discover_corpus(str(tmp_path / "data"))
  result = train.train(TINY, TINY_DATA, corpus, str(tmp_path / "model"), 1, validate_every=1000,
                       max_validation_files=1, progress=False)
  shared_speaker = data.speaker_id(demo[1])
  assert result["best"]["validation_data"]["shared_with_train"] == {
      "speakers": [shared_speaker], "noise_sources": [data.noise_source(corpus.train.noise[0])]}
  assert any(re.search(rf"validation split shares 1 speaker\(s\) \({shared_speaker}\) and 1 "
                       r"noise recording\(s\) .* favour seen data", w) for w in warnings), warnings


# --- --init_from changed since a run started from it ------------------------------------------


def _copy_run(source, folder):
  shutil.copytree(source, folder)
  return str(folder)


def _init_from_run(model_dir, init_from, steps=2, **kwargs):
  return train.train(TINY, TINY_DATA, data.discover_corpus(demo_data.path()), str(model_dir),
                     steps, checkpoint_every=5, validate_every=1000, max_validation_files=2,
                     log_every=5, progress=False, init_from=init_from, **kwargs)


def _record_of(model_dir):
  return train.init_record(model_dir, model_lib.load_trained(model_dir)[1])


def test_resuming_after_init_from_changed_is_refused_or_restarted(tiny_run, tmp_path):
  source = _copy_run(tiny_run[0], tmp_path / "float")
  fine_tuned = tmp_path / "fine_tuned"
  first = _init_from_run(fine_tuned, source)
  assert first["resumed_from"] == 0 and first["restarted"] is None
  with open(fine_tuned / train.INIT_RECORD) as f:
    assert json.load(f) == first["init_from"] == _record_of(source)
  assert first["init_from"]["best_step"] == 6
  # Unchanged: a rerun resumes (here: nothing to do), with either policy.
  assert _init_from_run(fine_tuned, source)["resumed_from"] == 2
  assert _init_from_run(fine_tuned, source, if_init_changed="restart")["restarted"] is None

  # The source trains again (other seed: other best weights of the same step).
  shutil.rmtree(source)
  _train(source, steps=6, seed=1)
  with pytest.raises(UserError, match=r"^--init_from '.+float' changed since model_dir "
                     r"'.+fine_tuned' was started from it \(then: best weights of step 6; "
                     r"now: other weights of the same step\); to fine-tune the new weights move "
                     r"or delete '.+fine_tuned'"):
    _init_from_run(fine_tuned, source)
  assert _checkpoint_step(fine_tuned) == 2  # the refused run changed nothing

  again = _init_from_run(fine_tuned, source, if_init_changed="restart")
  assert again["resumed_from"] == 0 and again["step"] == 2
  assert again["init_from"] == _record_of(source) != first["init_from"]
  stale = str(fine_tuned) + ".stale"
  assert again["restarted"]["stale_model_dir"] == stale
  with open(os.path.join(stale, train.INIT_RECORD)) as f:
    assert json.load(f) == first["init_from"]  # the old run, kept aside
  with open(fine_tuned / train.INIT_RECORD) as f:
    assert json.load(f) == again["init_from"]


# --- multi-worker: only the chief writes --------------------------------------------------------


@pytest.mark.parametrize("tf_config, chief", [
    (None, True), ({}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
     True),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
     False),
    ({"cluster": {"worker": ["a:1"], "evaluator": ["e:1"]},
      "task": {"type": "evaluator", "index": 0}}, False),
])
def test_worker_role_from_tf_config(tf_config, chief):
  role = train.WorkerRole.from_tf_config(tf_config)
  assert role.is_chief == chief
  assert train.WorkerRole.from_tf_config(json.dumps(tf_config) if tf_config else "") == role


def test_worker_role_from_the_strategy_cluster_resolver():
  assert train.WorkerRole.from_strategy(tf.distribute.get_strategy()).is_chief
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      tf.train.ClusterSpec({"worker": ["a:1", "b:1"]}), task_type="worker", task_id=1)

  class Strategy:  # what MultiWorkerMirroredStrategy exposes, without starting a cluster
    cluster_resolver = resolver

  assert train.WorkerRole.from_strategy(Strategy()) == train.WorkerRole("worker", 1, False)


def test_a_worker_that_is_not_the_chief_writes_nothing_into_model_dir(tiny_run, tmp_path,
                                                                     monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  os.makedirs(tmp_path / "tmp")
  worker = train.WorkerRole.from_tf_config(
      {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})
  model_dir = tmp_path / "model"
  result = train.train(TINY, TINY_DATA, data.discover_corpus(demo_data.path()), str(model_dir),
                       2, validate_every=1000, max_validation_files=1, progress=False,
                       worker_role=worker)
  assert result["step"] == 2 and result["best"] is not None
  assert not model_dir.exists()
  assert os.listdir(tmp_path / "tmp") == []  # its temporary folder is removed at the end

  # Resuming, it reads the chief's model_dir and still writes nothing there.
  chief_dir = _copy_run(tiny_run[0], model_dir)
  before = _modes(chief_dir)
  result = train.train(TINY, TINY_DATA, data.discover_corpus(demo_data.path()), chief_dir, 8,
                       checkpoint_every=1, validate_every=1, max_validation_files=1,
                       progress=False, worker_role=worker)
  assert result["resumed_from"] == 6 and result["step"] == 8
  assert _modes(chief_dir) == before and _checkpoint_step(chief_dir) == 6
  assert os.listdir(tmp_path / "tmp") == []


def test_trainer_loss_is_on_the_stft_of_the_istft_output(speech_clip, noise_clip):
  """The loss sees the spectrum of the enhanced waveform (consistency), computed here in numpy:
  mask from the model, Gᵀ mask times the noisy STFT, inverse STFT, STFT again, the loss."""
  from tests.tf_tinyse.test_losses import numpy_istft, numpy_loss, numpy_stft  # pylint: disable=g-import-not-at-top
  trainer = train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=2)
  # A mask that varies strongly across bands and frames (0.05 to 0.96): a nearly constant one
  # (the initial 0.46 to 0.54) is almost consistent, and the two losses would nearly agree.
  mask_layer = trainer.model.get_layer("mask")
  kernel, bias = mask_layer.get_weights()
  mask_layer.set_weights([20.0 * kernel, bias])
  n = 16000
  clean = np.stack([speech_clip[:n], speech_clip[n:2 * n]])
  noisy = (clean + 0.5 * np.stack([noise_clip[:n], noise_clip[n:2 * n]])).astype(np.float32)
  got = trainer.per_example_loss(tf.constant(noisy), tf.constant(clean)).numpy()

  g = features.mel_matrix(TINY.feature).astype(np.float64)  # [bands, bins]
  spectra = numpy_stft(noisy)
  mel = (np.abs(spectra) @ g.T + 1e-8) ** TINY.feature.compression
  mask = trainer.train_model(mel.astype(np.float32), training=True).numpy().astype(np.float64)
  assert mask.std() > 0.1
  masked = spectra * (mask @ g)
  consistent = numpy_loss(numpy_stft(clean), numpy_stft(numpy_istft(masked, n)))
  direct = numpy_loss(numpy_stft(clean), masked)  # the masked spectrum itself, no iSTFT/STFT
  # Measured: trainer against the consistent reference 1.6e-7 relative (float32 against
  # float64); the loss on the masked spectrum differs by 2.1 % and 2.2 %.
  np.testing.assert_allclose(got, consistent, rtol=1e-5)
  assert np.all(np.abs(direct / got - 1) > 1e-2), direct / got - 1


def test_validation_floors_a_silent_output_instead_of_averaging_minus_150_db(
    monkeypatch, speech_clip, noise_clip):
  import types  # pylint: disable=g-import-not-at-top
  from tf_tinyse import metrics  # pylint: disable=g-import-not-at-top
  noisy = speech_clip + 0.5 * noise_clip
  examples = [types.SimpleNamespace(clean=speech_clip, noisy=noisy, name=f"u{i}")
              for i in range(4)]
  calls = iter(range(4))

  def fake_enhancer(model, config):
    del model, config
    # three good outputs and one broken (all-zero) output
    return lambda x: np.zeros_like(x) if next(calls) == 3 else speech_clip + 0.05 * noise_clip

  monkeypatch.setattr(train.enhancer, "Enhancer", fake_enhancer)
  scores = train.validate(None, None, examples)
  good = metrics.si_sdr(speech_clip, speech_clip + 0.05 * noise_clip)
  assert scores["floored"] == 1
  assert scores["si_sdr"] == pytest.approx((3 * good + metrics.SUMMARY_DB_FLOOR) / 4)
  assert scores["si_sdr_improvement"] == pytest.approx(
      scores["si_sdr"] - metrics.si_sdr(speech_clip, noisy))


def test_trainer_adds_the_weighted_si_sdr_and_stoi_terms(speech_clip, noise_clip):
  n = 16000
  clean = np.stack([speech_clip[:n], speech_clip[n:2 * n]]).astype(np.float32)
  noisy = (clean + 0.5 * np.stack([noise_clip[:n], noise_clip[n:2 * n]])).astype(np.float32)
  spectral = train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=2)
  weighted = train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=2,
                           loss=losses.LossConfig(si_sdr_weight=0.01, stoi_weight=0.5))
  weighted.model.set_weights(spectral.model.get_weights())
  enhanced, _ = train.enhancer.enhance_batch(spectral.model, tf.constant(noisy), TINY.feature,
                                             training=True)
  si_sdr_term = losses.negative_si_sdr(tf.constant(clean), enhanced).numpy()
  stoi_term = losses.envelope_decorrelation(
      features.stft(tf.constant(clean), TINY.feature),
      features.stft(enhanced, TINY.feature), TINY.feature).numpy()
  assert np.all(stoi_term > 0.01)
  got = (weighted.per_example_loss(tf.constant(noisy), tf.constant(clean)) -
         spectral.per_example_loss(tf.constant(noisy), tf.constant(clean))).numpy()
  np.testing.assert_allclose(got, 0.01 * si_sdr_term + 0.5 * stoi_term, rtol=1e-4, atol=1e-6)


def test_trainer_weighs_the_complex_part_of_the_spectral_loss(speech_clip, noise_clip):
  n = 16000
  clean = speech_clip[None, :n].astype(np.float32)
  noisy = (clean + 0.5 * noise_clip[None, :n]).astype(np.float32)
  trainers = [train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=1,
                            loss=losses.LossConfig(complex_weight=w)) for w in (0.0, 1.0, 0.5)]
  for trainer in trainers[1:]:
    trainer.model.set_weights(trainers[0].model.get_weights())
  magnitude, complex_, half = [float(t.per_example_loss(tf.constant(noisy), tf.constant(clean))[0])
                               for t in trainers]
  assert complex_ > magnitude
  assert half == pytest.approx(0.5 * (magnitude + complex_), rel=1e-5)


@pytest.mark.parametrize("deployed", [{"mask_floor": 0.2}, {"low_cut_hz": 40.0},
                                      {"mask_floor": 0.05, "low_cut_hz": 20.0}])
def test_the_training_loss_ignores_the_mask_floor_and_low_cut_and_validation_applies_them(
    speech_clip, noise_clip, deployed):
  n = 16000
  clean = np.stack([speech_clip[:n], speech_clip[n:2 * n]]).astype(np.float32)
  noisy = (clean + 0.5 * np.stack([noise_clip[:n], noise_clip[n:2 * n]])).astype(np.float32)
  floored_config = dataclasses.replace(
      TINY, feature=dataclasses.replace(TINY.feature, **deployed))
  plain = train.Trainer(TINY, tf.distribute.get_strategy(), global_batch_size=2)
  floored = train.Trainer(floored_config, tf.distribute.get_strategy(), global_batch_size=2)
  floored.model.set_weights(plain.model.get_weights())
  np.testing.assert_allclose(
      floored.per_example_loss(tf.constant(noisy), tf.constant(clean)).numpy(),
      plain.per_example_loss(tf.constant(noisy), tf.constant(clean)).numpy(), rtol=1e-6)
  # What validation and deployment run: the floored (or cut) mask changes the output.
  plain_out = train.enhancer.Enhancer(plain.model, TINY)(noisy[0])
  floored_out = train.enhancer.Enhancer(floored.model, floored_config)(noisy[0])
  assert np.abs(floored_out - plain_out).max() > 1e-3


def test_stoi_loss_with_segments_shorter_than_its_envelope_segment_is_refused(tmp_path):
  corpus = data.discover_corpus(demo_data.path())
  with pytest.raises(UserError, match="--stoi_loss_weight compares 384 ms"):
    train.train(TINY, dataclasses.replace(TINY_DATA, segment_seconds=0.3), corpus,
                str(tmp_path / "model"), 2, progress=False,
                loss=losses.LossConfig(stoi_weight=1.0))
  assert not (tmp_path / "model").exists()


def test_weight_decay_shrinks_the_kernels_by_decay_times_learning_rate(speech_clip, noise_clip):
  """AdamW's decay is decoupled: from the same weights and batch, the decayed step differs
  from Adam's by exactly decay x learning rate x the kernel, and biases and QEQ not at all."""
  n = 16000
  clean = np.stack([speech_clip[:n], speech_clip[n:2 * n]]).astype(np.float32)
  noisy = (clean + 0.5 * np.stack([noise_clip[:n], noise_clip[n:2 * n]])).astype(np.float32)
  adam = train.Trainer(TINY, tf.distribute.get_strategy(), learning_rate=1e-2,
                       global_batch_size=2)
  adamw = train.Trainer(TINY, tf.distribute.get_strategy(), learning_rate=1e-2,
                        global_batch_size=2, weight_decay=0.5)
  adamw.model.set_weights(adam.model.get_weights())
  before = {v.name: v.numpy() for v in adam.model.trainable_variables}
  decayed = {v.name for v in train.decayed_weights(adam.model)}
  assert decayed == {"lstm_0/lstm_cell/kernel:0", "lstm_0/lstm_cell/recurrent_kernel:0",
                     "lstm_1/lstm_cell/kernel:0", "lstm_1/lstm_cell/recurrent_kernel:0",
                     "dense_0/kernel:0", "mask/kernel:0"}
  for trainer in (adam, adamw):
    trainer.train_step((tf.constant(noisy), tf.constant(clean)))
  for plain, with_decay in zip(adam.model.trainable_variables, adamw.model.trainable_variables):
    name = plain.name
    assert not np.allclose(plain.numpy(), before[name])  # both took a step
    expected = 0.5 * 1e-2 * before[name] if name in decayed else 0.0
    np.testing.assert_allclose(plain.numpy() - with_decay.numpy(), expected, atol=2e-6,
                               err_msg=name)


def test_weight_decay_flag_is_validated():
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  with flagsaver.flagsaver():
    for bad in (-0.1, 1.0):
      with pytest.raises(flags.IllegalFlagValueError, match="--weight_decay must be in"):
        flags.FLAGS.weight_decay = bad


def test_a_run_checkpointed_with_adam_resumes_with_weight_decay(tiny_run, tmp_path):
  """Adam and AdamW keep the same moments, so adding --weight_decay to a run resumes it: from
  the same checkpoint, one more step with and without the decay differs only by the decoupled
  shrink, one factor (decay x that step's learning rate) for every kernel, none for the rest."""
  adam_checkpoint = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      os.path.join(tiny_run[0], "checkpoints")))
  adam_state = {k for k in adam_checkpoint.get_variable_to_shape_map()
                if k.startswith("optimizer/")}
  resumed = {}
  for decay in (0.0, 0.5):
    model_dir = tmp_path / f"decay{decay}"
    shutil.copytree(tiny_run[0], model_dir)
    result = train.train(TINY, TINY_DATA, data.discover_corpus(demo_data.path()),
                         str(model_dir), 7, checkpoint_every=5, validate_every=1000,
                         max_validation_files=2, progress=False, weight_decay=decay)
    assert result["resumed_from"] == 6 and result["step"] == 7
    resumed[decay] = _model_variables(model_dir)
    # The optimizer restored its state, moments included, rather than starting again.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    optimizer_state = {k for k in reader.get_variable_to_shape_map()
                       if k.startswith("optimizer/")}
    assert optimizer_state == adam_state
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 7
  before = _model_variables(tiny_run[0])
  kernel = re.compile(r"model/layer_with_weights-\d+/(cell/)?(kernel|recurrent_kernel)/")
  factors = []
  for name, value in before.items():
    shrink = resumed[0.0][name] - resumed[0.5][name]
    if kernel.match(name):
      factors.append(float(np.sum(shrink * value) / np.sum(value * value)))
      np.testing.assert_allclose(shrink, factors[-1] * value, atol=1e-7, err_msg=name)
    else:
      np.testing.assert_array_equal(shrink, 0.0, err_msg=name)
  assert len(factors) == 6
  # One step at a learning rate of at most 1e-3 (train()'s default) with decay 0.5.
  assert 0 < min(factors) and np.ptp(factors) < 1e-6 and max(factors) <= 0.5 * 1e-3


def test_cpu_thread_flags_size_tensorflows_pools_before_it_starts():
  code = textwrap.dedent("""
      import tensorflow as tf
      from tf_tinyse import train
      train.set_cpu_threads(1, 2)
      tf.constant(1.0) + 1.0  # the runtime starts with these pools
      threading = tf.config.threading
      print(threading.get_intra_op_parallelism_threads(),
            threading.get_inter_op_parallelism_threads())
      """)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
  assert result.stdout.split() == ["1", "2"]


def test_cpu_threads_after_tensorflow_started_are_kept_and_logged(caplog):
  tf.constant(1.0) + 1.0  # the runtime has started
  threading = tf.config.threading
  before = (threading.get_intra_op_parallelism_threads(),
            threading.get_inter_op_parallelism_threads())
  train.set_cpu_threads(before[0] + 3, before[1] + 3)
  assert (threading.get_intra_op_parallelism_threads(),
          threading.get_inter_op_parallelism_threads()) == before
  assert "keeps its CPU threads" in caplog.text
  caplog.clear()
  train.set_cpu_threads(*before)  # what it has already: nothing to do, nothing to log
  assert not caplog.text
