"""What the command lines print: our progress and results, not TensorFlow's internals.

`python -m tf_tinyse.train` and `python -m tf_tinyse.export` run as a user runs them (without
the TF_CPP_MIN_LOG_LEVEL that tests/conftest.py sets), and their console must show the
results and our own log lines but none of TensorFlow's C++ logging, oneDNN/CUDA notices or
converter chatter; --verbosity=1 brings that detail back. Each run starts TensorFlow (about
10 s), so train runs once and the two exports of its model run concurrently.
"""
import concurrent.futures
import glob
import os
import re
import subprocess
import sys

import pytest

from tf_tinyse import console
from tf_tinyse import demo_data

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Source files whose absl log lines are ours (`I1201 17:48:06.22 140 train.py:256] ...`).
_OUR_FILES = {os.path.basename(p) for package in ("tf_tinyse", "tflm_export", "keras_layers")
              for p in glob.glob(os.path.join(_ROOT, package, "*.py"))}
_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ (\S+):\d+\] ", re.MULTILINE)
NOISE = [
    r"^[IWE]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\]",  # C++ logging
    r"oneDNN custom operations", r"cuInit", r"Could not find cuda drivers", r"port\.cc",
    r"cpu_feature_guard", r"To enable the following instructions", r"absl::InitializeLog",
    r"Assets written to", r"^INFO:tensorflow:", r"Writing fingerprint", r"Sharding callback",
    r"Using new converter", r"Statistics for quantized inputs", r"warnings\.warn\(",
    r"Estimated count of arithmetic ops", r"Reading SavedModel", r"Found untraced functions",
]


def _run(module, args):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["TF_USE_LEGACY_KERAS"] = "1"
  proc = subprocess.run([sys.executable, "-m", f"tf_tinyse.{module}", *args], cwd=_ROOT,
                        capture_output=True, text=True, env=env, timeout=300)
  return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def consoles(tmp_path_factory):
  """{run: (status, stdout + stderr)} of train, then export and export --verbosity=1."""
  tmp = tmp_path_factory.mktemp("console")
  data_dir = f"--data_dir={demo_data.path()}"
  model_dir = f"--model_dir={tmp / 'model'}"
  results = {"train": _run("train", [
      data_dir, model_dir, "--lstm_units=16", "--dense_units=16", "--batch_size=4",
      "--segment_seconds=0.4", "--steps=20", "--validate_every=20", "--checkpoint_every=20",
      "--max_validation_files=1"])}
  assert results["train"][0] == 0, results["train"][1][-3000:]
  export = lambda name, *extra: [model_dir, data_dir, f"--output={tmp / name / 'model.tflite'}",
                                 "--representative_files=1", "--validation_files=1", *extra]
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    quiet = pool.submit(_run, "export", export("export"))
    verbose = pool.submit(_run, "export", export("export_verbose", "--verbosity=1"))
    results["export"] = quiet.result()
    results["export_verbose"] = verbose.result()
  return results


def _noise_in(text):
  found = [line for line in text.splitlines()
           if any(re.search(pattern, line) for pattern in NOISE)]
  found += [m.group(0) for m in _LOG_LINE.finditer(text) if m.group(1) not in _OUR_FILES]
  return found


@pytest.mark.parametrize("run", ["train", "export"])
def test_console_shows_no_tensorflow_internals(consoles, run):
  status, text = consoles[run]
  assert status == 0, text[-3000:]
  assert _noise_in(text) == [], text


def test_train_console_shows_results_and_our_log_lines(consoles):
  _, text = consoles["train"]
  assert re.search(r"trained to step 20 \(started at 0\); best validation SI-SDR", text), text
  assert re.search(r"train\.py:\d+\] QEQ calibrated", text), text
  assert re.search(r"train\.py:\d+\] step 20: validation", text), text


def test_export_console_shows_results(consoles):
  _, text = consoles["export"]
  assert re.search(r"^int8 model: [\d,]+ parameters", text, re.MULTILINE), text
  assert re.search(r"^TFLM vs Keras float over 1 test utterances", text, re.MULTILINE), text
  assert re.search(r"^wrote .*model\.tflite", text, re.MULTILINE), text


def test_verbosity_1_brings_tensorflow_detail_back(consoles):
  status, text = consoles["export_verbose"]
  assert status == 0, text[-3000:]
  assert re.search(r"^[IW]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\]", text, re.MULTILINE), text
  assert "Assets written to" in text, text
  assert re.search(r"^wrote .*model\.tflite", text, re.MULTILINE), text


@pytest.mark.parametrize("argv, expected", [
    ([], False), (["--verbosity=1"], True), (["-v", "1"], True), (["-v=2"], True),
    (["--verbosity", "0"], False), (["--verbosity=-1"], False),
    (["--verbosity=1", "--verbosity=0"], False), (["--", "--verbosity=1"], False),
])
def test_verbose_reads_the_verbosity_flag_from_argv(argv, expected):
  assert console.verbose(argv) is expected


@pytest.mark.parametrize("orig_argv, expected", [
    (["python", "-m", "tf_tinyse.train", "--steps=1"], True),
    (["python", "-W", "ignore", "-m", "tflm_export.vela"], True),
    (["python", "-mtf_tinyse.export"], True),
    (["python", "-m", "pytest", "tests"], False),
    (["python", "-c", "import tf_tinyse"], False),
    (["python", "script.py", "-m", "tf_tinyse.train"], False),
    (["python", os.path.join(_ROOT, "benchmarks", "train_speed.py")], True),
])
def test_is_our_command(orig_argv, expected):
  assert console.is_our_command(orig_argv) is expected


def test_native_stderr_filter_drops_noise_and_keeps_the_rest():
  text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
          "I0000 00:00:1796146931.515133    4802 cpu_feature_guard.cc:227] This TensorFlow binary\n"
          "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
          "TensorFlow with the appropriate compiler flags.\n"
          "W1201 17:42:29.540235 140593693150080 train.py:156] a Python warning of ours\n"
          "E0000 00:00:1796146936.115646    4802 cuda_platform.cc:52] failed call to cuInit: x\n"
          "E0000 00:00:1796146936.115646    4802 kernel.cc:52] a real error\n"
          "something else\n")
  assert console._filtered(text) == (  # pylint: disable=protected-access
      "W1201 17:42:29.540235 140593693150080 train.py:156] a Python warning of ours\n"
      "E0000 00:00:1796146936.115646    4802 kernel.cc:52] a real error\nsomething else\n")
