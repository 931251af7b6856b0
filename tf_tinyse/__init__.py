"""See README.md."""
import os
import sys

# tfmot and the fused-LSTM TFLite conversion need legacy (tf_keras) Keras; this
# must be set before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# TensorFlow's log levels, log and warning filters, before TensorFlow is imported (see
# console.py); a CLI (`python -m tf_tinyse.<name>`) then imports TensorFlow quietly.
from tf_tinyse import console  # pylint: disable=g-import-not-at-top

console.configure()
if console.is_our_command() and "tensorflow" not in sys.modules:
  console.import_tensorflow()
