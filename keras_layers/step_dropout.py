"""Dropout whose mask is a function of (seed, training step): resumed runs draw the same masks.

Keras's `Dropout` draws its masks from a random state that lives in the process (a stateful op's
counter, or a `tf.random.Generator` that checkpoints do not hold), so a training run that was
interrupted and resumed draws other masks from the resume on than the run that went through, and
ends elsewhere. Training here is a function of (seed, step): the data stream is, and the
optimizer's state is checkpointed. `StepDropout` keeps that: its mask is a stateless draw from
the seed pair its trainer attaches (`use_seed`, e.g. (run seed, step), which the checkpoint
restores), folded with the layer's name (two layers never share a mask) and, under a
distribution strategy, with the replica (two replicas never share one).

Outside training (`training` not True) the layer passes its input through: the streaming and
exported forms have no such layer at all, and no weights move with it.
"""
import zlib

import tensorflow as tf
import tf_keras as keras


class StepDropout(keras.layers.Layer):
  """Inverted dropout (kept values scaled by 1 / (1 - rate)) with a stateless, seeded mask.

  Without an attached seed (`use_seed` not called, e.g. a model called with training=True
  outside the trainer) the mask comes from TensorFlow's stateful random op, like Keras's.
  """

  def __init__(self, rate, **kwargs):
    super().__init__(**kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    self.rate = float(rate)
    self.supports_masking = True
    self._seed = None
    # Two StepDropout layers with one seed still draw different masks.
    self._salt = zlib.crc32(self.name.encode("utf-8")) & 0x7FFFFFFF

  def use_seed(self, seed):
    """Draws the masks from `seed`, a callable that returns an int64 [2] tensor (read at each
    call, so a variable in it, e.g. the training step, moves the masks on)."""
    self._seed = seed

  def _step_seed(self):
    """This call's stateless seed: the attached seed folded with the layer and the replica."""
    seed = tf.random.experimental.stateless_fold_in(tf.cast(self._seed(), tf.int64),
                                                   self._salt)
    replica = tf.distribute.get_replica_context()
    if replica is not None and replica.num_replicas_in_sync > 1:
      seed = tf.random.experimental.stateless_fold_in(seed, replica.replica_id_in_sync_group)
    return seed

  def call(self, inputs, training=None):
    if training is not True or self.rate == 0.0:
      return tf.identity(inputs)
    if self._seed is None:
      return tf.nn.dropout(inputs, self.rate)
    return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed=self._step_seed())

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), "rate": self.rate}
