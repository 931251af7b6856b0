"""The command lines on bad input: one clear line, a non-zero exit status, no traceback.

Every case runs the real CLI `main` under `cli.run` in its own process, with its own argv, and
checks the exit status and stderr a user would see. Starting a Python interpreter per case
costs seconds (importing TensorFlow), so most cases are forked from one interpreter that has
imported the CLIs (see `_FORKING_RUNNER`); a few also go through `python -m tf_tinyse.<name>`
to cover the entry point itself.
"""
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from tf_tinyse import audio
from tf_tinyse import demo_data
from tf_tinyse import fileio
from tf_tinyse import model as model_lib

TINY_FLAGS = ["--lstm_units=8,8", "--dense_units=8", "--batch_size=4", "--segment_seconds=0.4",
              "--steps=2", "--max_validation_files=1"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
TINY_MODEL = model_lib.ModelConfig(lstm_units=(8, 8), dense_units=(8,))


def _demo_files(kind, count):
  return sorted(glob.glob(os.path.join(demo_data.path(), kind, "train", "*.flac")))[:count]


def _layout_with(root, bad_name, write_bad):
  """A tiny flat speech/ + noise/ corpus of real demo files plus one bad speech file."""
  for kind, count in (("speech", 2), ("noise", 1)):
    os.makedirs(root / kind)
    for path in _demo_files(kind, count):
      shutil.copy(path, root / kind)
  write_bad(str(root / "speech" / bad_name))
  return root


def _write_garbage(path):
  with open(path, "wb") as f:
    f.write(b"RIFF\x00\x01not a wave file at all" + bytes(range(256)) * 8)


def _write_silent(path):
  sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")


def _write_nan(path):
  wave = np.full(16000, 0.1, np.float32)
  wave[8000] = np.nan
  sf.write(path, wave, 16000, subtype="FLOAT")


def _write_model_dir(model_dir, with_weights):
  """A model dir as tf_tinyse.train lays it out (untrained weights are enough here)."""
  os.makedirs(model_dir)
  model_lib.save_config(str(model_dir), TINY_MODEL)
  if with_weights:
    with fileio.atomic_output(os.path.join(model_dir, model_lib.BEST_WEIGHTS)) as tmp:
      model_lib.build_mask_model(TINY_MODEL).save_weights(tmp)
  return model_dir


def _stale_init_dir(model_dir, init_from):
  """A model dir whose checkpoints say they started from other weights of `init_from`."""
  os.makedirs(os.path.join(model_dir, "checkpoints"))
  with open(os.path.join(model_dir, "checkpoints", "checkpoint"), "w") as f:
    f.write('model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-2"\n')
  fileio.write_json_atomic(os.path.join(model_dir, "init_from.json"),
                           {"path": os.path.abspath(init_from), "best_step": 2,
                            "weights_sha256": "0" * 64})
  return str(model_dir)


def _stereo_44k(path):
  speech = audio.read_audio(_demo_files("speech", 1)[0])[:24000]  # 1.5 s
  wave = soxr.resample(speech, 16000, 44100)
  sf.write(path, np.stack([wave, 0.5 * wave], axis=1), 44100, subtype="PCM_16")
  return sf.info(path).frames


def _cases(tmp):
  """{case: (module, args, expected status, regex the message must match)}."""
  model_dir = str(tmp / "model")
  flagfile = tmp / "malformed.cfg"
  flagfile.write_text("--dense_units=8\nlstm_units=8\n")
  os.makedirs(tmp / "empty")
  os.makedirs(tmp / "empty_layout" / "speech")
  os.makedirs(tmp / "empty_layout" / "noise")
  layouts = {name: str(_layout_with(tmp / name, f"zz_{name}.wav", writer))
             for name, writer in (("corrupt", _write_garbage), ("silent", _write_silent),
                                  ("nan", _write_nan))}
  no_model = str(tmp / "no_model")
  os.makedirs(no_model)
  untrained = str(_write_model_dir(tmp / "untrained", with_weights=False))
  init_source = str(_write_model_dir(tmp / "init_source", with_weights=True))
  stale_init = _stale_init_dir(tmp / "stale_init", init_source)
  noisy = str(tmp / "noisy.wav")
  sf.write(noisy, audio.read_audio(_demo_files("speech", 1)[0])[:16000], 16000)
  train = lambda *args: ("train", [f"--model_dir={model_dir}", *TINY_FLAGS, *args])
  enhance = lambda *args: ("enhance", [f"--model_dir={untrained}", *args])
  speech_dir = os.path.join(layouts["corrupt"], "speech")
  data_dir = f"--data_dir={demo_data.path()}"
  flat = tmp / "flat"  # a flat corpus: training data only (README, "Your own data")
  for kind, count in (("speech", 2), ("noise", 1)):
    os.makedirs(flat / kind)
    for f in _demo_files(kind, count):
      shutil.copy(f, flat / kind)
  return {
      # Without --data_dir, train uses the built-in demo corpus; without --model_dir it stops.
      "missing_model_dir": ("train", [*TINY_FLAGS], 2, r"--model_dir is required"),
      "missing_folder": (*train(f"--data_dir={tmp / 'nope'}"), 2,
                         r"data_dir '.*nope' does not exist"),
      "empty_folder": (*train(f"--data_dir={tmp / 'empty'}"), 2,
                       r"data_dir '.*empty' matches no corpus layout"),
      "empty_layout": (*train(f"--data_dir={tmp / 'empty_layout'}"), 2,
                       r"data_dir '.*empty_layout/(speech|noise)' holds no audio files"),
      "corrupt_audio": (*train(f"--data_dir={layouts['corrupt']}"), 2,
                        r"cannot decode audio file '.*zz_corrupt\.wav'.*--skip_bad_audio"),
      "silent_audio": (*train(f"--data_dir={layouts['silent']}"), 2,
                       r"audio file '.*zz_silent\.wav' is silent"),
      "nan_audio": (*train(f"--data_dir={layouts['nan']}"), 2,
                    r"audio file '.*zz_nan\.wav' contains NaN"),
      "unknown_flag": (*train(data_dir, "--no_such_flag=1"), 1,
                       r"Unknown command line flag 'no_such_flag'"),
      "missing_flagfile": (*train(data_dir, f"--flagfile={tmp / 'missing.cfg'}"), 1,
                           r"Unable to open flagfile.*missing\.cfg"),
      # absl passes a flagfile line without `--` on as a positional argument.
      "malformed_flagfile": (*train(data_dir, f"--flagfile={flagfile}"), 2,
                             r"unexpected arguments \['lstm_units=8'\]"),
      "non_integer_units": (*train(data_dir, "--lstm_units=abc"), 1,
                            r"--lstm_units must be a comma-separated list of positive integers"),
      "zero_batch": (*train(data_dir, "--batch_size=0"), 1, r"--batch_size must be >= 1"),
      "bad_block_shape": (*train("--sparsity_structure=block", "--block_shape=8x1"), 1,
                          r"--block_shape must be 1xB"),
      "tfmot_units": (*train(data_dir, "--sparsity_structure=unit", "--pruning=tfmot"), 2,
                      r"--pruning=tfmot cannot prune units"),
      "bad_speaker_id_pattern": (*train(data_dir, "--speaker_id_pattern=[0-9]+"), 1,
                                 r"--speaker_id_pattern must be a regular expression with a "
                                 r"\(group\)"),
      "init_from_changed": (
          "train", [f"--model_dir={stale_init}", f"--init_from={init_source}", data_dir,
                    *TINY_FLAGS], 2,
          r"--init_from '.*init_source' changed since model_dir '.*stale_init' was started from "
          r"it \(then: best weights of step 2; now: weights without best/info\.json\); to "
          r"fine-tune the new weights move or delete '.*stale_init'"),
      "offline_without_pruned_model": (*train(data_dir, "--sparsity_structure=weight",
                                              "--pruning=offline"), 2,
                                       r"--pruning=offline fine-tunes a model pruned by"),
      "evaluate_without_model": (
          "evaluate", [f"--model_dir={no_model}", data_dir, "--max_files=1"], 2,
          r"model_dir '.*no_model' holds no config\.json"),
      "evaluate_flat_corpus": (
          "evaluate", [f"--model_dir={untrained}", f"--data_dir={flat}", "--max_files=1"], 2,
          r"data_dir '.*flat' has no test split: expected audio under '.*flat/speech/test/'"),
      "enhance_without_model": (
          "enhance", [f"--model_dir={no_model}", f"--input={noisy}",
                      f"--output={tmp / 'out.wav'}"], 2,
          r"model_dir '.*no_model' holds no config\.json"),
      "enhance_without_weights": (
          "enhance", [f"--model_dir={untrained}", f"--input={noisy}",
                      f"--output={tmp / 'out.wav'}"], 2,
          r"model_dir '.*untrained' has no trained weights"),
      "enhance_nothing": (*enhance(), 2, r"nothing to enhance: give --input=FILE"),
      "enhance_input_and_input_dir": (
          *enhance(f"--input={noisy}", f"--input_dir={speech_dir}", f"--output={tmp / 'x.wav'}"),
          2, r"--input and --input_dir cannot be combined"),
      "enhance_input_without_output": (*enhance(f"--input={noisy}"), 2,
                                       r"--output is required with --input"),
      "enhance_input_with_output_dir": (
          *enhance(f"--input={noisy}", f"--output_dir={tmp / 'enh'}"), 2,
          r"--output_dir is for --input_dir/--input_glob; with --input give --output"),
      "enhance_dir_without_output_dir": (*enhance(f"--input_dir={speech_dir}"), 2,
                                         r"--output_dir is required with --input_dir"),
      "enhance_glob_with_output": (
          *enhance(f"--input_glob={speech_dir}/*.flac", f"--output={tmp / 'x.wav'}"), 2,
          r"--output is for --input; with --input_glob give --output_dir"),
      "enhance_output_dir_inside_input_dir": (
          *enhance(f"--input_dir={speech_dir}", f"--output_dir={speech_dir}/enhanced"), 2,
          r"--output_dir '.*speech/enhanced' is inside --input_dir '.*speech'"),
      "enhance_glob_reaches_output_dir": (
          *enhance(f"--input_glob={tmp}/**/*.wav", f"--output_dir={tmp / 'enh'}"), 2,
          r"--output_dir '.*enh' is reached by --input_glob"),
      "enhance_empty_input_dir": (
          *enhance(f"--input_dir={tmp / 'empty'}", f"--output_dir={tmp / 'enh'}"), 2,
          r"--input_dir '.*empty' holds no audio files"),
      "enhance_glob_matches_nothing": (
          *enhance(f"--input_glob={tmp}/empty/**/*.wav", f"--output_dir={tmp / 'enh'}"), 2,
          r"--input_glob '.*empty/\*\*/\*\.wav' matches no audio files"),
      "enhance_unquoted_glob": (
          *enhance(f"--input_glob={noisy}", noisy, f"--output_dir={tmp / 'enh'}"), 2,
          r"unexpected arguments .*quote --input_glob"),
  }


# Runs many CLI invocations from one interpreter: it imports the CLI modules once (seconds,
# mostly TensorFlow), then forks a child per invocation that runs `cli.run(<module>.main)`
# with that argv -- what `python -m tf_tinyse.<module>` does after its imports. Nothing in
# the parent touches the TensorFlow runtime, so each child starts it afresh.
_FORKING_RUNNER = """
import json, os, sys, traceback
from tf_tinyse import cli, enhance, evaluate, train
modules = {"train": train, "evaluate": evaluate, "enhance": enhance}
statuses = {}
for name, module, args, out_path, err_path in json.loads(sys.argv[1]):
  sys.stdout.flush()
  sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    code = 1
    try:
      os.dup2(os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
      os.dup2(os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
      sys.argv = ["tf_tinyse." + module, *args]
      cli.run(modules[module].main)
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # an uncaught exception: print it as the interpreter would
      traceback.print_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  statuses[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print("STATUSES " + json.dumps(statuses))
"""


def _run_module(module, args):
  """`python -m tf_tinyse.<module> args` in a fresh interpreter: (status, stdout, stderr)."""
  proc = subprocess.run([sys.executable, "-m", f"tf_tinyse.{module}", *args],
                        capture_output=True, text=True, env=ENV, timeout=180)
  return proc.returncode, proc.stdout, proc.stderr


def _run_forking(jobs, log_dir):
  """{name: (status, stdout, stderr)} of `jobs` {name: (module, args)} via _FORKING_RUNNER."""
  spec = [(name, module, args, str(log_dir / f"{name}.out"), str(log_dir / f"{name}.err"))
          for name, (module, args) in jobs.items()]
  proc = subprocess.run([sys.executable, "-c", _FORKING_RUNNER, json.dumps(spec)],
                        capture_output=True, text=True, env=ENV, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  statuses = json.loads(proc.stdout.split("STATUSES ", 1)[1])
  return {name: (statuses[name], open(out).read(), open(err).read())
          for name, _, _, out, err in spec}


# Checked through the real `python -m` entry point too, not only through the forking runner.
ENTRY_POINT_CASES = ("missing_model_dir", "unknown_flag")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """{case: (status, stdout, stderr)} plus the expectations; the interpreters run concurrently."""
  tmp = tmp_path_factory.mktemp("cli")
  cases = _cases(tmp)
  model_dir = _write_model_dir(tmp / "random_model", with_weights=True)
  stereo = str(tmp / "stereo_44k.wav")
  stereo_frames = _stereo_44k(stereo)
  enhanced = str(tmp / "enhanced_stereo.wav")
  log_dir = tmp / "logs"
  os.makedirs(log_dir)
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    forked = pool.submit(_run_forking, {name: case[:2] for name, case in cases.items()}, log_dir)
    direct = {name: pool.submit(_run_module, *cases[name][:2]) for name in ENTRY_POINT_CASES}
    stereo_run = pool.submit(_run_module, "enhance", [f"--model_dir={model_dir}",
                                                      f"--input={stereo}",
                                                      f"--output={enhanced}"])
    results = forked.result()
    results.update({f"{name}_entry_point": future.result() for name, future in direct.items()})
    results["stereo"] = stereo_run.result()
  for name in ENTRY_POINT_CASES:
    cases[f"{name}_entry_point"] = cases[name]
  return {"cases": cases, "results": results, "stereo": (stereo_frames, enhanced), "tmp": tmp}


CASE_NAMES = ["missing_model_dir", "missing_folder", "empty_folder", "empty_layout",
              "corrupt_audio", "silent_audio", "nan_audio", "unknown_flag", "missing_flagfile",
              "malformed_flagfile", "non_integer_units", "zero_batch", "bad_block_shape",
              "tfmot_units", "bad_speaker_id_pattern", "init_from_changed",
              "offline_without_pruned_model",
              "evaluate_without_model", "evaluate_flat_corpus", "enhance_without_model",
              "enhance_without_weights",
              "enhance_nothing", "enhance_input_and_input_dir", "enhance_input_without_output",
              "enhance_input_with_output_dir", "enhance_dir_without_output_dir",
              "enhance_glob_with_output", "enhance_output_dir_inside_input_dir",
              "enhance_glob_reaches_output_dir", "enhance_empty_input_dir",
              "enhance_glob_matches_nothing", "enhance_unquoted_glob",
              *(f"{name}_entry_point" for name in ENTRY_POINT_CASES)]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_ends_in_one_clear_line(outcomes, case):
  _, _, expected_status, pattern = outcomes["cases"][case]
  status, _, stderr = outcomes["results"][case]
  assert "Traceback" not in stderr, stderr
  assert status == expected_status, stderr
  if expected_status == 2:
    # Our own UserError: exactly one `error: ...` line.
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert re.search(pattern, errors[0]), errors[0]
  else:
    # absl's flag parser reports the problem in its own words.
    errors = [line for line in stderr.splitlines() if line.startswith("FATAL Flags parsing")]
    assert len(errors) == 1, stderr
    assert re.search(pattern, errors[0]), errors[0]


def test_cases_are_all_checked(outcomes):
  assert sorted(outcomes["cases"]) == sorted(CASE_NAMES)


def test_failed_enhance_writes_no_output(outcomes):
  status, _, _ = outcomes["results"]["enhance_without_weights"]
  assert status == 2
  leftovers = [n for n in os.listdir(outcomes["tmp"]) if n.startswith((".out", "out"))]
  assert leftovers == []


def test_enhance_resamples_and_downmixes_a_stereo_44k_file(outcomes):
  status, stdout, stderr = outcomes["results"]["stereo"]
  assert status == 0, stderr
  assert re.search(r"has 2 channels; averaging them to mono", stderr), stderr
  assert re.search(r"resampling '.*stereo_44k\.wav' from 44100 Hz to 16000 Hz", stderr), stderr
  frames_44k, enhanced = outcomes["stereo"]
  info = sf.info(enhanced)
  assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
  assert abs(info.frames - frames_44k * 16000 / 44100) <= 1
  assert f"wrote {enhanced}" in stdout
