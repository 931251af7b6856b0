"""Unrolled LSTM recurrence for training batches of a fixed, short number of frames.

TensorFlow runs a recurrent layer over a sequence as a `tf.while_loop`, and its gradient as a
second loop that pops each step's saved activations. The iterations run one after another, and
at a TinyLSTM's sizes (batch 16, 256 units) each is too small to keep two CPU cores busy: the
idle thread waits, and waiting costs CPU time too. A training batch has a fixed number of frames
that is known when the train step is traced (0.8 s segments: 51 frames), and for such a batch
the recurrence can run as straight-line code (`unroll=True`): the same cell with the same
weights and arithmetic, without a loop, which TensorFlow's executor spreads over both cores.
Measured on 2 CPU cores, paper model (LSTM 256x2), batch 16 of 0.8 s, the recipe's loss:
- `benchmarks/train_speed.py` (real input pipeline), one job alone: 9.49 → 10.94 steps/s,
  181 → 157 CPU ms per step; two jobs sharing the 2 cores: 160 → 157 CPU ms per step, i.e.
  the gain is the loop's idle waiting, which a second job fills anyway;
- the train step alone on a fixed batch, one job: float 162 → 132 CPU ms, QAT 212 → 168,
  online block pruning with QAT 226 → 171, tfmot weight pruning 164 → 132; float at 1.6 s
  (101 frames) 318 → 265.

Unrolled, both forms (`UnrollingLSTM` here, `QuantizedLSTM` and its sparse subclass) also
multiply the inputs of all frames by the kernel in one product before the steps, where a cell
multiplies each frame's input inside its step: each per-frame product's gradient is a whole
[features, 4u] kernel gradient, summed over the frames afterwards, while one product over the
sequence has one. The steps keep the recurrent product and the cell's arithmetic; measured with
`benchmarks/train_speed.py` (README, Benchmarks, "Unrolled recurrence"). The numbers above are
from before, with TensorFlow's default threads (`--intra_op_threads=0` now).

Only training calls unroll, and only when the frame count is static and at most
`MAX_UNROLLED_FRAMES`: the graph (and the time to trace it) grows with the frame count, and
validation, enhancement, streaming and export see sequences of any length, for which the loop
stays. Training segments of more than 2 s keep the loop.
"""
import contextlib

import tensorflow as tf
import tf_keras as keras

# 128 frames of the 16 ms hop: segments up to about 2 s. Tracing the train step takes a few
# seconds at 51 frames and grows in proportion.
MAX_UNROLLED_FRAMES = 128


def input_product(inputs, kernel, bias=None):
  """An LSTM's gate pre-activations from its input, of one frame [batch, in] or of a sequence
  [batch, frames, in]: inputs @ kernel, plus the gate bias (TFLM adds it in this product)."""
  z_input = keras.backend.dot(inputs, kernel)
  return tf.nn.bias_add(z_input, bias) if bias is not None else z_input


def unrolls(layer, inputs, training, mask=None, initial_state=None):
  """Whether `layer` (a tf_keras RNN) runs this call unrolled: a training call on a static
  number of frames of at most MAX_UNROLLED_FRAMES, stateless, without a mask or initial state."""
  frames = inputs.shape[0 if layer.time_major else 1]
  return (training is True and frames is not None and frames <= MAX_UNROLLED_FRAMES and
          not layer.stateful and mask is None and initial_state is None)


@contextlib.contextmanager
def unrolled(layer, enabled=True):
  """Within the context, `layer` (a tf_keras RNN) unrolls its recurrence if `enabled`."""
  previous = layer.unroll
  layer.unroll = previous or enabled
  try:
    yield
  finally:
    layer.unroll = previous


@keras.utils.register_keras_serializable(package="keras_layers")
class UnrollingLSTM(keras.layers.LSTM):
  """A tf_keras LSTM that unrolls its recurrence in training calls on short, fixed-length
  batches (`unrolls`); every other call is tf_keras's own.

  Same weights, names and arithmetic as `tf_keras.layers.LSTM` (tested to float rounding,
  outputs and gradients): checkpoints, `.h5` weights and `copy_weights` move between the two.
  The export's streaming model keeps the plain LSTM, which the TFLite converter fuses.
  """

  def call(self, inputs, mask=None, training=None, initial_state=None):
    if (not unrolls(self, inputs, training, mask, initial_state) or self.dropout or
        self.recurrent_dropout):
      return super().call(inputs, mask=mask, training=training, initial_state=initial_state)
    if not (self.go_backwards or self.time_major or self.return_state):
      return self._unrolled_sequence(inputs)
    # tf_keras's LSTM.call takes its fused-kernel path, which never unrolls; the generic
    # RNN.call steps the same LSTMCell and honours `unroll`.
    with unrolled(self):
      return keras.layers.RNN.call(self, inputs, mask=mask, training=training,
                                   initial_state=initial_state)

  def _unrolled_sequence(self, inputs):
    """The recurrence unrolled, with the input product of every frame in one matmul.

    tf_keras's cell multiplies each frame's input by the kernel inside the step, and its
    gradient then builds one [features, 4u] kernel gradient per frame and sums them; one matmul
    over all frames does the same work in one product whose gradient is one matmul too. The
    step keeps the recurrent product and tf_keras's LSTMCell arithmetic (implementation 2).
    """
    cell = self.cell
    projected = input_product(inputs, cell.kernel, cell.bias if cell.use_bias else None)
    batch = tf.shape(inputs)[0]
    h = c = tf.zeros(tf.stack([batch, cell.units]), dtype=projected.dtype)
    outputs = []
    for z_input in tf.unstack(projected, axis=1):
      z = z_input + tf.matmul(h, cell.recurrent_kernel)
      z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
      c = (cell.recurrent_activation(z_f) * c +
           cell.recurrent_activation(z_i) * cell.activation(z_c))
      h = cell.recurrent_activation(z_o) * cell.activation(c)
      outputs.append(h)
    return tf.stack(outputs, axis=1) if self.return_sequences else h

  def get_prunable_weights(self):
    """tfmot's `PrunableLayer` interface: the matrices tfmot prunes in a tf_keras LSTM (its
    registry matches layer classes exactly, so a subclass names them itself)."""
    return [self.cell.kernel, self.cell.recurrent_kernel]
