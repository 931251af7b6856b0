"""The model sizes the benchmarks time: the demo config and the paper's TinyLSTM."""
import tf_tinyse  # pylint: disable=unused-import  (sets TF_USE_LEGACY_KERAS)
from tf_tinyse import model as model_lib

CONFIGS = {
    "demo (LSTM 192x2, dense 128)": model_lib.ModelConfig(lstm_units=(192, 192),
                                                           dense_units=(128,)),
    "paper (LSTM 256x2, dense 128)": model_lib.ModelConfig(lstm_units=(256, 256),
                                                            dense_units=(128,)),
}
