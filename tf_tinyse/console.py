"""What the command lines print: our progress and results, not TensorFlow's internals.

TensorFlow, the TFLite converter and tf_keras log hundreds of lines (C++ `I0000 ... port.cc`,
oneDNN and CUDA notices, `Assets written to ...`, converter statistics). At the default
verbosity the CLIs hide them; `--verbosity=1` (or `-v 1`) shows them all again.

`configure()` runs from every package `__init__`, before TensorFlow is imported:
- `TF_CPP_MIN_LOG_LEVEL` (C++ logging; fixed when TensorFlow loads, so it is decided from
  `sys.argv` here, before absl parses the flags; a value set in the environment wins; a
  --verbosity given only inside a --flagfile is not seen by the C++ side);
- a logging filter that drops INFO records of TensorFlow's own Python modules (ours stay);
- warning filters for known-noisy, harmless warnings (not when the user passed -W).
Some notices are written while TensorFlow's shared libraries load, before any log level
applies (the oneDNN notice, "Could not find cuda drivers"), and "failed call to cuInit" is
an ERROR line on machines without a GPU; `import_tensorflow()` imports TensorFlow and finds
the devices with those lines filtered out of stderr. The CLIs do that when started with
`python -m tf_tinyse.<name>` (or `tflm_export.<name>`); `native_stderr_filtered()` does the
same around other calls that print from C++ (the TFLite converter).
"""
import contextlib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

# Python packages whose INFO log records are internals, not our progress.
_QUIET_PACKAGES = ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "ethosu",
                   "tflite_micro", "tflite_runtime", "ai_edge_litert")
# Our packages: `python -m` one of these is a command line of ours.
_OUR_PACKAGES = ("tf_tinyse", "tflm_export", "keras_layers", "benchmarks")
# TF_CPP_MIN_LOG_LEVEL at the default verbosity: C++ INFO and WARNING lines hidden, ERROR shown.
QUIET_CPP_LOG_LEVEL = "2"

# Harmless warnings that every export or training run would print.
_NOISY_WARNINGS = (
    # tf.lite convert.py, int8 conversion from a SavedModel: the quantization comes from the
    # representative dataset, so there are no input statistics to give.
    (UserWarning, r"Statistics for quantized inputs were expected"),
)

# Lines of native (C++) stderr output that are internals, not problems: C++ INFO/WARNING log
# lines (absl/TSL format), absl's notice before its logging is initialised, the missing-GPU
# ERROR lines of a CUDA build on a machine without one, and the converter's statistics.
# Before absl's logging is initialised the time reads `00:00:<seconds since 1970>`.
_NOISE_LINES = (
    re.compile(r"^[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+\.(?:cc|cpp|h):\d+\] "),
    re.compile(r"^E\d{4} .*\] failed call to cuInit"),
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(r"^fully_quantize: \d+, inference_type: "),
    # The second line of cpu_feature_guard's INFO message.
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow"),
)


def verbose(argv=None):
  """Whether the command line asks for detail: --verbosity=N / -v N with N >= 1."""
  argv = sys.argv[1:] if argv is None else argv
  level = None
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    match = re.fullmatch(r"--?(?:verbosity|v)=(-?\d+)", arg)
    if match:
      level = int(match.group(1))
    elif arg in ("--verbosity", "-v", "--v") and i + 1 < len(argv):
      if re.fullmatch(r"-?\d+", argv[i + 1]):
        level = int(argv[i + 1])
  return level is not None and level >= 1


def _flag_verbose():
  """--verbosity >= 1 once absl has parsed the flags, else what sys.argv says."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.is_parsed():
    return flags.FLAGS.verbosity >= 1
  return verbose()


class _HideInternalInfo(logging.Filter):
  """Drops log records below WARNING that come from TensorFlow & co, unless --verbosity >= 1."""

  def __init__(self):
    super().__init__()
    self._roots = None

  def _quiet_roots(self):
    if self._roots is None:
      roots = []
      for name in _QUIET_PACKAGES:
        try:
          spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
          spec = None
        if spec is not None and spec.submodule_search_locations:
          roots.extend(os.path.realpath(p) + os.sep for p in spec.submodule_search_locations)
      self._roots = tuple(roots)
    return self._roots

  def filter(self, record):
    if record.levelno >= logging.WARNING:
      return True
    path = os.path.realpath(record.pathname or "")
    if not path.startswith(self._quiet_roots()):
      return True
    return _flag_verbose()


_FILTER = _HideInternalInfo()


def _user_wants_native_detail():
  """Whether TF_CPP_MIN_LOG_LEVEL was set (before configure()) to show INFO or WARNING lines."""
  return _USER_CPP_LOG_LEVEL is not None and _USER_CPP_LOG_LEVEL.strip() in ("0", "1")


_USER_CPP_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


def configure():
  """Sets the environment, logging and warning filters; call before TensorFlow is imported."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose() else QUIET_CPP_LOG_LEVEL)
  # tf.get_logger() logs to the "tensorflow" logger; TensorFlow modules that use absl logging
  # log to "absl", whose handler the CLIs print with.
  logger = logging.getLogger("tensorflow")
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
  if not sys.warnoptions and not verbose():
    for category, message in _NOISY_WARNINGS:
      warnings.filterwarnings("ignore", message=message, category=category)


def is_noise(line):
  """Whether one line of native stderr output is a known TensorFlow internal."""
  return any(pattern.search(line) for pattern in _NOISE_LINES)


def _filtered(text):
  """`text` without its noise lines."""
  return "".join(line for line in text.splitlines(keepends=True) if not is_noise(line))


@contextlib.contextmanager
def native_stderr_filtered():
  """Filters noise lines out of what C/C++ code writes to stderr (file descriptor 2) inside.

  The output is collected in a temporary file and the rest is written to stderr at the end,
  so keep the region short. With --verbosity >= 1, or TF_CPP_MIN_LOG_LEVEL=0 or 1 set by the
  user, nothing is filtered.
  """
  if _flag_verbose() or _user_wants_native_detail():
    yield
    return
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # no stderr to filter
    yield
    return
  with tempfile.TemporaryFile(mode="w+b") as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = _filtered(captured.read().decode("utf-8", errors="replace"))
      if text:
        sys.stderr.write(text)
        sys.stderr.flush()


def import_tensorflow():
  """Imports TensorFlow and finds the devices, with their start-up notices filtered out."""
  with native_stderr_filtered():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()  # initialises CUDA, if any: its "failed call to cuInit"


def is_our_command(orig_argv=None):
  """Whether this process is `python -m <one of our packages>.<module>` or one of our scripts
  (`python benchmarks/train_speed.py`)."""
  orig_argv = sys.orig_argv if orig_argv is None else orig_argv
  root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
  ours = tuple(os.path.join(root, package) + os.sep for package in _OUR_PACKAGES)
  for i, arg in enumerate(orig_argv[1:], start=1):
    if arg == "-m" and i + 1 < len(orig_argv):
      return orig_argv[i + 1].split(".")[0] in _OUR_PACKAGES
    if arg.startswith("-m") and len(arg) > 2:
      return arg[2:].split(".")[0] in _OUR_PACKAGES
    if arg in ("-W", "-X") or (i > 1 and orig_argv[i - 1] in ("-W", "-X")):
      continue  # an interpreter option and its value
    if not arg.startswith("-"):
      return arg.endswith(".py") and os.path.realpath(arg).startswith(ours)
    if arg in ("-c", "--"):
      return False
  return False
