"""Keras layers of tf_tinyse: QEQ, quantizers, quantized and sparse LSTM/Dense, the unrolling LSTM,
step-seeded dropout."""
import os

# tfmot and the fused-LSTM TFLite conversion need legacy (tf_keras) Keras; this
# must be set before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# TensorFlow's log levels and log/warning filters, before TensorFlow is imported: see
# tf_tinyse/console.py.
import tf_tinyse  # pylint: disable=g-import-not-at-top,unused-import

from keras_layers.qeq import QEQ  # pylint: disable=g-import-not-at-top
from keras_layers import quantizers  # pylint: disable=g-import-not-at-top
from keras_layers.quantized_dense import QuantizedDense  # pylint: disable=g-import-not-at-top
from keras_layers.quantized_lstm import QuantizedLSTM, QuantizedLSTMCell  # pylint: disable=g-import-not-at-top
from keras_layers.step_dropout import StepDropout  # pylint: disable=g-import-not-at-top
from keras_layers.unrolling import UnrollingLSTM  # pylint: disable=g-import-not-at-top
