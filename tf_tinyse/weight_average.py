"""An exponential moving average of the trained weights (Polyak averaging).

Small batches at a high learning rate make each step's weights a noisy point around where the
optimizer is heading; the average of the recent steps sits closer to it. Training updates the
raw weights as before; validation, the best checkpoint and everything after it (QAT, export)
use the averaged ones. The average is checkpointed with the optimizer, so a resumed run goes
on with it.

    --weight_average_decay=0.999   # each step moves the average 0.1 % towards the weights

The first steps of an average use a smaller decay, (1 + n) / (10 + n) after n updates, so that
it does not keep the initial weights for a thousand steps. Pruned models are not averaged: a
weight's mask follows its raw value (online thresholds, tfmot), and an average of weights on
both sides of a threshold belongs to neither.
"""
import contextlib

from absl import flags
import tensorflow as tf

flags.DEFINE_float("weight_average_decay", 0.0,
                   "Validate, keep and pass on an exponential moving average of the weights with "
                   "this decay per step (e.g. 0.999: the average spans about the last 1,000 "
                   "steps); 0: the raw weights. Dense models only (a pruned model keeps its "
                   "raw weights).")
flags.register_validator("weight_average_decay", lambda v: 0.0 <= v < 1.0,
                         message="--weight_average_decay must be in [0, 1)")

# Where a checkpoint keeps the averages (the attribute name in tf.train.Checkpoint).
CHECKPOINT_KEY = "weight_average"


class WeightAverage:
  """The moving average of `variables`, in variables of its own.

  `checkpointed` is what a tf.train.Checkpoint saves (the averages and the update count); the
  averaged variables themselves are not in it, so they stay saved where their model saves them.
  """

  def __init__(self, variables, decay):
    if not 0.0 < decay < 1.0:
      raise ValueError(f"decay must be in (0, 1), got {decay}")
    self.decay = decay
    self._variables = list(variables)
    self.checkpointed = tf.Module(name="weight_average")
    self.checkpointed.averages = [
        tf.Variable(v, trainable=False, name=v.name.split(":")[0] + "_average",
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        for v in self._variables]
    self.checkpointed.updates = tf.Variable(
        0, dtype=tf.int64, trainable=False, name="updates",
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  @property
  def averages(self):
    return self.checkpointed.averages

  @property
  def updates(self):
    return self.checkpointed.updates

  def reset(self):
    """Starts the average over at the variables' current values (after they were initialized
    by other means than the constructor saw: calibration, --init_from)."""
    for average, variable in zip(self.averages, self._variables):
      average.assign(variable)
    self.updates.assign(0)

  def update(self):
    """Moves the average one step towards the variables (call after each optimizer step)."""
    self.updates.assign_add(1)
    updates = tf.cast(self.updates, tf.float32)
    decay = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + updates) / (10.0 + updates))
    for average, variable in zip(self.averages, self._variables):
      average.assign_sub((1.0 - decay) * (average - variable))

  @contextlib.contextmanager
  def swapped_in(self):
    """Within the block the variables hold the averages; afterwards their own values again."""
    raw = [tf.identity(v) for v in self._variables]
    for variable, average in zip(self._variables, self.averages):
      variable.assign(average)
    try:
      yield
    finally:
      for variable, value in zip(self._variables, raw):
        variable.assign(value)


def checkpoint_holds_average(checkpoint_path):
  """Whether the checkpoint at `checkpoint_path` saved a WeightAverage's `checkpointed`.

  A checkpoint that cannot be read counts as holding one: restoring skips it anyway
  (`model.restore_newest_checkpoint`), for one before it of the same run.
  """
  prefix = CHECKPOINT_KEY + "/"
  try:
    names = [name for name, _ in tf.train.list_variables(checkpoint_path)]
  except (tf.errors.OpError, ValueError):
    return True
  return any(name.startswith(prefix) for name in names)
