"""How a mask is computed from group scores and a learned threshold (TinyLSTMs' online pruning).

Forward pass: a hard mask, `m_g = [s_g > τ]` for every group score `s_g` (see
`keras_layers.pruning_groups`: the group's RMS weight over the layer's RMS weight) and the
layer's threshold τ. The network trains on exactly the weights it will ship with.

Backward pass (straight-through estimator): the step function has no useful gradient, so the
gradient of the soft mask `σ((s_g − τ) / T)` is used in its place. Through it
- the threshold gets `∂L/∂τ = −Σ_g ∂L/∂m_g · σ'(·)/T`: the enhancement loss lowers τ when the
  groups near the threshold matter (∂L/∂m_g < 0), the sparsity loss raises it;
- the weights of groups near the threshold get the enhancement loss's gradient through their
  score as well, so a pruned group that matters can come back while it is close to τ. Groups
  far below τ get (almost) no gradient and stay pruned. The sparsity loss reaches the
  thresholds only (the layers stop its gradient to the scores): letting it also shrink the
  weights near τ decided the pruned groups by their distance to τ rather than by their use,
  and cost 0.10 / 0.16 / 0.50 dB SI-SDR for weight / block / unit pruning at 80 % (demo
  model, single runs, README).
T sets the width of the band of scores that take part (scores are ~1 on average; T = 0.1).

The threshold variable θ is stored as τ / THRESHOLD_SCALE: Adam moves a variable by about
its learning rate per step whatever the gradient's size, and 80 % sparsity needs τ ≈ 1.3, which
at a fine-tuning learning rate of 5e-4 would take over 2,600 steps of steady push; scaled by 4,
about 650, so that the threshold can follow a pruning schedule of a thousand steps.

Why not a soft mask in the forward pass (e.g. learned-threshold pruning with a sigmoid): the
network would learn to rely on attenuated weights that the export then removes or keeps whole.
"""
import tensorflow as tf

DEFAULT_TEMPERATURE = 0.1
THRESHOLD_SCALE = 4.0


def threshold_mask(scores, threshold, temperature=DEFAULT_TEMPERATURE):
  """(mask, soft): the hard mask with the soft mask's gradient, and the soft mask itself.

  Args:
    scores: group scores (any shape), float.
    threshold: a scalar, the layer's threshold variable θ (τ = THRESHOLD_SCALE · θ).
    temperature: width of the straight-through band.
  """
  threshold = THRESHOLD_SCALE * threshold
  soft = tf.sigmoid((scores - threshold) / temperature)
  hard = tf.cast(scores > threshold, scores.dtype)
  return hard + (soft - tf.stop_gradient(soft)), soft
