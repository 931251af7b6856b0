"""Group definitions: shapes, block orientation against the exported [out, in] layout, the
four-gate tie of a unit, its recurrent and downstream rows, and its biases."""
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import pruning_groups


def test_weight_groups_are_single_weights():
  kernel = tf.constant(np.random.default_rng(0).normal(size=(16, 12)), tf.float32)
  scores = pruning_groups.dense_scores(kernel, "weight")
  assert scores.shape == (16, 12)
  np.testing.assert_allclose(scores.numpy() * pruning_groups.layer_scale([kernel]).numpy(),
                             np.abs(kernel.numpy()), rtol=1e-5)


def test_blocks_run_along_the_inputs_of_one_output_row_of_the_export_layout():
  inputs, outputs = 24, 5
  kernel = np.zeros((inputs, outputs), np.float32)
  kernel[8:16, 3] = 1.0  # Keras [in, out]: inputs 8..15 of output 3
  scores = pruning_groups.dense_scores(tf.constant(kernel), "block", block_size=8).numpy()
  assert scores.shape == (3, outputs)
  assert np.count_nonzero(scores > 1e-6) == 1 and scores[1, 3] > 0
  block_mask = np.ones((3, outputs), np.float32)
  block_mask[1, 3] = 0.0
  kernel_mask, bias_mask = pruning_groups.dense_masks(tf.constant(block_mask), kernel.shape,
                                                      "block", 8)
  exported = kernel_mask.numpy().T  # [out, in], what the int8 FULLY_CONNECTED holds
  np.testing.assert_array_equal(exported[3, 8:16], 0.0)  # one row, 8 consecutive inputs
  assert exported.sum() == exported.size - 8
  np.testing.assert_array_equal(bias_mask.numpy(), 1.0)


def test_a_last_short_block_is_scored_by_its_own_inputs():
  kernel = np.ones((10, 2), np.float32)  # blocks of 8: inputs 0..7 and 8..9
  scores = pruning_groups.dense_scores(tf.constant(kernel), "block", block_size=8).numpy()
  assert scores.shape == (2, 2)
  np.testing.assert_allclose(scores, 1.0, rtol=1e-5)
  mask = pruning_groups.expand_blocks(tf.constant([[1.0, 0.0], [0.0, 1.0]]), 10, 8).numpy()
  np.testing.assert_array_equal(mask[:8], [[1, 0]] * 8)
  np.testing.assert_array_equal(mask[8:], [[0, 1]] * 2)


def test_lstm_blocks_are_per_gate_rows_of_the_input_and_recurrent_matrices():
  inputs, units = 16, 8
  rng = np.random.default_rng(1)
  kernel = tf.constant(rng.normal(size=(inputs, 4 * units)), tf.float32)
  recurrent = tf.constant(rng.normal(size=(units, 4 * units)), tf.float32)
  k_scores, r_scores = pruning_groups.lstm_scores(kernel, recurrent, "block", 8)
  assert k_scores.shape == (2, 4 * units) and r_scores.shape == (1, 4 * units)
  k_mask, r_mask, b_mask = pruning_groups.lstm_masks(
      (tf.zeros_like(k_scores), tf.ones_like(r_scores)), kernel.shape, recurrent.shape, "block")
  assert k_mask.shape == kernel.shape and r_mask.shape == recurrent.shape
  assert k_mask.numpy().sum() == 0 and r_mask.numpy().min() == 1
  np.testing.assert_array_equal(b_mask.numpy(), 1.0)


def test_an_lstm_unit_ties_four_gates_its_recurrent_row_and_its_biases():
  inputs, units, k = 6, 4, 2
  unit_mask = np.ones(units, np.float32)
  unit_mask[k] = 0.0
  k_mask, r_mask, b_mask = [m.numpy() for m in pruning_groups.lstm_masks(
      tf.constant(unit_mask), (inputs, 4 * units), (units, 4 * units), "unit")]
  gate_columns = [g * units + k for g in range(4)]
  for mask in (k_mask, r_mask):
    np.testing.assert_array_equal(mask[:, gate_columns], 0.0)
  np.testing.assert_array_equal(r_mask[k], 0.0)  # the row that reads h[k]
  np.testing.assert_array_equal(b_mask[gate_columns], 0.0)
  assert k_mask.sum() == inputs * 4 * (units - 1)
  assert r_mask.sum() == (units - 1) * 4 * (units - 1)
  assert b_mask.sum() == 4 * (units - 1)


def test_unit_scores_cover_all_gates_of_both_matrices():
  inputs, units = 5, 3
  kernel = np.zeros((inputs, 4 * units), np.float32)
  recurrent = np.zeros((units, 4 * units), np.float32)
  kernel[:, 2 * units + 1] = 1.0  # cell gate of unit 1, input matrix
  recurrent[:, 3 * units + 2] = 1.0  # output gate of unit 2, recurrent matrix
  scores = pruning_groups.lstm_scores(tf.constant(kernel), tf.constant(recurrent),
                                      "unit").numpy()
  assert scores.shape == (units,)
  assert scores[0] < 1e-6 < scores[1] and scores[2] > 1e-6


def test_dense_units_are_output_columns_with_their_bias_and_the_next_rows_go_too():
  mask = tf.constant([1.0, 0.0, 1.0])
  kernel_mask, bias_mask = pruning_groups.dense_masks(mask, (4, 3), "unit")
  np.testing.assert_array_equal(kernel_mask.numpy()[:, 1], 0.0)
  np.testing.assert_array_equal(bias_mask.numpy(), [1, 0, 1])
  downstream = pruning_groups.input_rows(tf.ones((3, 7)), mask).numpy()
  np.testing.assert_array_equal(downstream[1], 0.0)
  assert downstream.sum() == 14


def test_scores_are_relative_to_the_layer_scale():
  kernel = np.random.default_rng(2).normal(size=(32, 16)).astype(np.float32)
  a = pruning_groups.dense_scores(tf.constant(kernel), "block").numpy()
  b = pruning_groups.dense_scores(tf.constant(kernel * 7.0), "block").numpy()
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_bad_structures_are_refused():
  with pytest.raises(ValueError, match="structure"):
    pruning_groups.check_structure("row")
  with pytest.raises(ValueError, match="block"):
    pruning_groups.check_structure("block", 1)
