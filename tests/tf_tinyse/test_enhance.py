"""The enhance CLI: a 16 kHz mono WAV of the input's length, equal to the whole-utterance
enhancer up to 16-bit quantization, and no output file when it fails; silent input enhanced to
silence; a folder or a glob enhanced in one process, mirroring its tree, skipping existing outputs
and going on past a corrupt file."""
import concurrent.futures
import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tf_tinyse import audio
from tf_tinyse import enhancer
from tf_tinyse import fileio
from tf_tinyse import model as model_lib

TINY = model_lib.ModelConfig(lstm_units=(8, 8), dense_units=(8,))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
# One 16-bit step for writing the output, one for the float → int16 → float round trip's
# asymmetric scaling, plus the streaming-vs-whole-utterance float difference (~1e-6).
WAV_TOLERANCE = 2.0 / 32768 + 1e-5


def _enhance(args):
  proc = subprocess.run([sys.executable, "-m", "tf_tinyse.enhance", *args], capture_output=True,
                        text=True, env=ENV, timeout=180)
  return proc.returncode, proc.stdout, proc.stderr


def _write(path, wave, subtype="PCM_16"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(str(path), wave, 16000, subtype=subtype)


def _sentinel(path):
  """A pre-existing output with recognisable contents and an old mtime."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  path.write_bytes(b"sentinel")
  os.utime(path, (1e9, 1e9))


def _batch_jobs(tmp, model_dir, noisy, wave):
  """Folders, a glob and a batch with a corrupt file: {job: args} for the CLI."""
  quiet = wave[:12000] * (10 ** (-90 / 20) / np.max(np.abs(wave[:12000])))  # -90 dBFS peak
  tree = tmp / "tree"
  os.makedirs(tree)
  (tree / "a.wav").write_bytes(open(noisy, "rb").read())  # the single-file run's input
  _write(tree / "sub" / "b.flac", wave[8000:28000])
  _write(tree / "sub" / "deeper" / "c.wav", wave[:7000])
  _write(tree / "sub" / "quiet.wav", quiet, subtype="FLOAT")
  _write(tree / "done.wav", wave[:9000])
  _write(tree / ".hidden.wav", wave[:5000])
  _write(tree / ".cache" / "d.wav", wave[:5000])
  (tree / "notes.txt").write_text("not audio")
  _sentinel(tmp / "tree_enhanced" / "done.wav")  # as if a previous run had done it
  rec = tmp / "rec"
  _write(rec / "one.flac", wave[:10000])
  _write(rec / "s" / "two.flac", wave[10000:21000])
  _write(rec / "s" / "three.wav", wave[:6000])  # not matched by the glob
  _sentinel(tmp / "glob_enhanced" / "s" / "two.wav")  # redone: --overwrite
  bad = tmp / "bad"
  _write(bad / "a.wav", wave[:8000])
  (bad / "b_bad.wav").write_bytes(b"RIFF\x00\x01not a wave file at all" + bytes(range(256)) * 8)
  _write(bad / "c" / "ok.flac", wave[8000:16000])
  zeros = tmp / "zeros.wav"
  _write(zeros, np.zeros(20000, np.float32))
  model = f"--model_dir={model_dir}"
  return {
      "tree": [model, f"--input_dir={tree}", f"--output_dir={tmp / 'tree_enhanced'}"],
      "glob": [model, f"--input_glob={rec}/**/*.flac", f"--output_dir={tmp / 'glob_enhanced'}",
               "--overwrite"],
      "bad": [model, f"--input_dir={bad}", f"--output_dir={tmp / 'bad_enhanced'}"],
      "zeros": [model, f"--input={zeros}", f"--output={tmp / 'zeros_enhanced.wav'}"],
  }


def _relative_files(folder):
  return sorted(os.path.relpath(os.path.join(root, name), folder)
                for root, _, names in os.walk(folder) for name in names)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, noisy_clip):
  """Runs the CLI with a model and with a model dir lacking weights, concurrently."""
  tmp = tmp_path_factory.mktemp("enhance")
  model_dir = str(tmp / "model")
  # The model dir layout tf_tinyse.train writes; untrained weights are enough for equality.
  model_lib.save_config(model_dir, TINY)
  model = model_lib.build_mask_model(TINY)
  model.get_layer("mask").bias.assign(np.linspace(-2, 2, TINY.feature.num_bands))
  with fileio.atomic_output(os.path.join(model_dir, model_lib.BEST_WEIGHTS)) as path:
    model.save_weights(path)
  no_weights = str(tmp / "no_weights")
  model_lib.save_config(no_weights, TINY)
  noisy = str(tmp / "noisy.wav")
  audio.write_audio(noisy, noisy_clip[0])
  existing = tmp / "existing.wav"
  existing.write_bytes(b"previous contents")
  jobs = {
      "ok": [f"--model_dir={model_dir}", f"--input={noisy}", f"--output={tmp / 'out.wav'}"],
      "no_weights": [f"--model_dir={no_weights}", f"--input={noisy}",
                     f"--output={tmp / 'absent.wav'}"],
      "no_weights_existing": [f"--model_dir={no_weights}", f"--input={noisy}",
                              f"--output={existing}"],
  }
  jobs.update(_batch_jobs(tmp, model_dir, noisy, noisy_clip[0]))
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
    results = dict(zip(jobs, pool.map(_enhance, jobs.values())))
  return {"tmp": tmp, "model_dir": model_dir, "noisy": noisy, "results": results}


def test_writes_16k_mono_of_the_input_duration(runs):
  status, stdout, stderr = runs["results"]["ok"]
  assert status == 0, stderr
  out = str(runs["tmp"] / "out.wav")
  info = sf.info(out)
  assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
  assert info.frames == sf.info(runs["noisy"]).frames
  assert f"wrote {out}" in stdout


def test_output_equals_whole_utterance_enhancer(runs):
  noisy = audio.read_audio(runs["noisy"])
  expected = enhancer.Enhancer.from_model_dir(runs["model_dir"])(noisy)
  written, _ = sf.read(str(runs["tmp"] / "out.wav"), dtype="float32")
  assert np.sqrt(np.mean(expected ** 2)) > 1e-3  # not trivially silent
  np.testing.assert_allclose(written, expected, rtol=0, atol=WAV_TOLERANCE)
  # ... and it differs from the input: the model did something.
  assert np.max(np.abs(written - noisy)) > 100 * WAV_TOLERANCE


def test_a_failed_run_leaves_no_output(runs):
  for job in ("no_weights", "no_weights_existing"):
    status, _, stderr = runs["results"][job]
    assert status == 2 and "has no trained weights" in stderr, stderr
  assert not (runs["tmp"] / "absent.wav").exists()
  assert (runs["tmp"] / "existing.wav").read_bytes() == b"previous contents"
  # No temporary file of an unfinished write is left beside the outputs.
  assert not [n for n in os.listdir(runs["tmp"]) if n.startswith(".")]


@functools.lru_cache
def _whole_utterance_enhancer(model_dir):
  return enhancer.Enhancer.from_model_dir(model_dir)


def _expected(model_dir, path):
  """The whole-utterance enhancer on one input, read as the CLI reads it."""
  return _whole_utterance_enhancer(model_dir)(audio.read_audio(path, allow_silent=True))


def _read(path):
  return sf.read(str(path), dtype="float32")[0]


def test_a_silent_input_is_enhanced_to_silence_with_a_warning(runs):
  tmp = runs["tmp"]
  status, stdout, stderr = runs["results"]["zeros"]  # digital zero, one file
  assert status == 0, stderr
  assert re.search(r"audio file '.*zeros\.wav' is silent \(peak -inf dBFS\)", stderr), stderr
  written = _read(tmp / "zeros_enhanced.wav")
  assert written.shape == (20000,) and np.all(written == 0)
  assert f"wrote {tmp / 'zeros_enhanced.wav'}" in stdout
  status, _, stderr = runs["results"]["tree"]  # -90 dBFS, in a batch
  assert status == 0, stderr
  assert re.search(r"audio file '.*quiet\.wav' is silent \(peak -90\.0 dBFS\)", stderr), stderr
  written = _read(tmp / "tree_enhanced" / "sub" / "quiet.wav")
  assert written.shape == (12000,) and np.max(np.abs(written)) < audio.SILENCE_PEAK
  assert np.all(np.isfinite(written))


def test_input_dir_mirrors_its_tree_with_audio_files_only(runs):
  status, stdout, stderr = runs["results"]["tree"]
  assert status == 0, stderr
  tree, out = runs["tmp"] / "tree", runs["tmp"] / "tree_enhanced"
  assert _relative_files(out) == ["a.wav", "done.wav", os.path.join("sub", "b.wav"),
                                  os.path.join("sub", "deeper", "c.wav"),
                                  os.path.join("sub", "quiet.wav")]
  for name, source in (("a.wav", "a.wav"), ("sub/b.wav", "sub/b.flac"),
                       ("sub/deeper/c.wav", "sub/deeper/c.wav")):
    info = sf.info(str(out / name))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == sf.info(str(tree / source)).frames, name
  assert "enhanced 4, skipped 1 existing, failed 0" in stdout


def test_batch_outputs_equal_single_file_enhancement(runs):
  """The model is loaded once, and its state starts afresh for every file."""
  tmp, model_dir = runs["tmp"], runs["model_dir"]
  assert runs["results"]["tree"][0] == 0 and runs["results"]["ok"][0] == 0
  # The same input as the single-file run, byte for byte the same output.
  assert (tmp / "tree_enhanced" / "a.wav").read_bytes() == (tmp / "out.wav").read_bytes()
  for name, source in (("sub/b.wav", "sub/b.flac"), ("sub/deeper/c.wav", "sub/deeper/c.wav"),
                       ("sub/quiet.wav", "sub/quiet.wav")):
    np.testing.assert_allclose(_read(tmp / "tree_enhanced" / name),
                               _expected(model_dir, tmp / "tree" / source), rtol=0,
                               atol=WAV_TOLERANCE, err_msg=name)


def test_existing_outputs_are_skipped(runs):
  assert runs["results"]["tree"][0] == 0
  done = runs["tmp"] / "tree_enhanced" / "done.wav"
  assert done.read_bytes() == b"sentinel" and os.stat(done).st_mtime == 1e9


def test_input_glob_relative_to_its_folder_and_overwrite_redoes_outputs(runs):
  tmp = runs["tmp"]
  status, stdout, stderr = runs["results"]["glob"]
  assert status == 0, stderr
  out = tmp / "glob_enhanced"
  assert _relative_files(out) == ["one.wav", os.path.join("s", "two.wav")]
  for name, source in (("one.wav", "one.flac"), ("s/two.wav", "s/two.flac")):  # two: redone
    expected = _expected(runs["model_dir"], tmp / "rec" / source)
    np.testing.assert_allclose(_read(out / name), expected, rtol=0, atol=WAV_TOLERANCE,
                               err_msg=name)
  assert "enhanced 2, skipped 0 existing, failed 0" in stdout


def test_a_corrupt_file_fails_alone(runs):
  tmp = runs["tmp"]
  status, _, stderr = runs["results"]["bad"]
  assert status == 2 and "Traceback" not in stderr, stderr
  out = tmp / "bad_enhanced"
  # The files before and after it are written, nothing of it (no temporary file either).
  assert _relative_files(out) == ["a.wav", os.path.join("c", "ok.wav")]
  np.testing.assert_allclose(_read(out / "c" / "ok.wav"),
                             _expected(runs["model_dir"], tmp / "bad" / "c" / "ok.flac"),
                             rtol=0, atol=WAV_TOLERANCE)
  lines = stderr.splitlines()
  failed = [line for line in lines if line.startswith("failed: ")]
  assert len(failed) == 1, stderr
  assert re.search(r"cannot decode audio file '.*b_bad\.wav'", failed[0]), failed[0]
  assert "--skip_bad_audio" not in stderr  # a training-data flag, not one of enhance's
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1, stderr
  assert re.search(r"enhanced 2, skipped 0 existing, failed 1: '.*b_bad\.wav'", errors[0])
