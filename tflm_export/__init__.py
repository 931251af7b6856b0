"""See README.md."""
import os

# tfmot and the fused-LSTM TFLite conversion need legacy (tf_keras) Keras; this
# must be set before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# TensorFlow's log levels and log/warning filters (and, for `python -m tflm_export.<name>`, a
# quiet TensorFlow import): see tf_tinyse/console.py.
import tf_tinyse  # pylint: disable=g-import-not-at-top,unused-import
