"""QEQ ("Quantization EQ"): a learnable per-band gain and bias on the input features.

The paper (Stamenovic et al. 2021, Sec. 3.1) puts `ẑ = g ⊙ z + b` in front of the
network so that one fixed quantization range ([-1, 1]) fits every layer: the
network learns to scale its own input into that range instead of the range
being calibrated per layer.
"""
import tf_keras as keras


class QEQ(keras.layers.Layer):
  """`outputs = gain * inputs + bias`, with one gain and bias per feature band."""

  def __init__(self, gain_initializer="ones", bias_initializer="zeros", **kwargs):
    super().__init__(**kwargs)
    self.gain_initializer = keras.initializers.get(gain_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)

  def build(self, input_shape):
    bands = int(input_shape[-1])
    self.gain = self.add_weight("gain", shape=(bands,), initializer=self.gain_initializer)
    self.bias = self.add_weight("bias", shape=(bands,), initializer=self.bias_initializer)
    super().build(input_shape)

  def call(self, inputs):
    return inputs * self.gain + self.bias

  def get_config(self):
    config = super().get_config()
    config.update({
        "gain_initializer": keras.initializers.serialize(self.gain_initializer),
        "bias_initializer": keras.initializers.serialize(self.bias_initializer),
    })
    return config
