"""See README.md."""
import os

# tfmot and the fused-LSTM TFLite conversion need legacy (tf_keras) Keras; this
# must be set before TensorFlow is first imported anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
