"""The enhance CLI: a 16 kHz mono WAV of the input's length, equal to the whole-utterance
enhancer up to 16-bit quantization, and no output file when it fails."""
import concurrent.futures
import os
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
