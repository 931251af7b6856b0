"""MACs per frame under the dense, 1×8 block-skipping and unit-shrunk kernel models."""
import numpy as np

from tests.tflm_export import weight_masks
from tflm_export import macs
from tflm_export import sparse_tflite

# The shared small model: LSTM 32 (128 inputs), LSTM 32, Dense 32, Dense 128 (mask).
LSTM0 = 4 * 32 * 128 + 4 * 32 * 32
LSTM1 = 4 * 32 * 32 + 4 * 32 * 32
DENSE0 = 32 * 32
MASK = 128 * 32
DENSE_TOTAL = LSTM0 + LSTM1 + DENSE0 + MASK


def _nonzero(tflite_bytes):
  """The converted weights with every int8 code made non-zero (so counts are exact)."""
  return weight_masks.apply(tflite_bytes, lambda i, m: np.where(m == 0, 1, m))


def test_block_macs_of_hand_made_matrices():
  m = np.zeros((3, 20), np.int8)
  m[0, 0] = 1  # block 0 of row 0
  m[0, 15] = 1  # block 1 of row 0
  m[2, 17] = 5  # trailing partial block (4 wide) of row 2
  assert macs.block_macs(m, 8) == 8 + 8 + 4
  assert macs.block_macs(np.zeros((4, 16)), 8) == 0
  assert macs.block_macs(np.ones((4, 16)), 8) == 64


def test_dense_model_counts_every_weight(int8_bytes):
  report = macs.count_macs(_nonzero(int8_bytes))
  assert [l.dense for l in report.layers] == [LSTM0, LSTM1, DENSE0, MASK]
  for model in ("dense", "block", "unit", "nonzero"):
    assert report.total(model) == DENSE_TOTAL
  assert [l.op for l in report.layers] == ["LSTM", "LSTM", "FULLY_CONNECTED",
                                           "FULLY_CONNECTED"]


def test_block_skipping_counts_kept_blocks(int8_bytes):
  dense = _nonzero(int8_bytes)
  model = weight_masks.to_object(dense)
  (_, lstm0_in, _), _, (_, dense0, _), (_, mask, _) = weight_masks.layers(model)
  # Remove 3 blocks of the first input matrix, a whole row (4 blocks) of dense_0 and one
  # element (its block stays) of the mask layer.
  m = weight_masks.matrix(model, lstm0_in[0])
  m[0, 0:8] = 0
  m[1, 8:16] = 0
  m[31, 120:128] = 0
  weight_masks.set_matrix(model, lstm0_in[0], m)
  m = weight_masks.matrix(model, dense0[0])
  m[7] = 0
  weight_masks.set_matrix(model, dense0[0], m)
  m = weight_masks.matrix(model, mask[0])
  m[0, 0] = 0
  weight_masks.set_matrix(model, mask[0], m)
  report = macs.count_macs(weight_masks.to_bytes(model))
  assert report.total("dense") == DENSE_TOTAL
  assert report.total("block") == DENSE_TOTAL - 8 * (3 + 4)
  assert report.total("nonzero") == DENSE_TOTAL - 8 * (3 + 4) - 1
  # Nothing is a removable unit: dense_0's row 7 is still read by the mask layer.
  assert report.total("unit") == DENSE_TOTAL


def test_unit_shrinking_removes_dead_units(int8_bytes):
  dense = _nonzero(int8_bytes)
  model = weight_masks.to_object(dense)
  (_, l0_in, l0_rec), (_, l1_in, _), (_, d0, _), (_, mask, _) = weight_masks.layers(model)
  removed_lstm, removed_dense = [0, 1, 2], [5]
  for t in l0_in + l0_rec:  # no input into units 0..2 of LSTM 0
    m = weight_masks.matrix(model, t)
    m[removed_lstm] = 0
    weight_masks.set_matrix(model, t, m)
  for t in l0_rec + l1_in:  # nobody reads them
    m = weight_masks.matrix(model, t)
    m[:, removed_lstm] = 0
    weight_masks.set_matrix(model, t, m)
  m = weight_masks.matrix(model, d0[0])
  m[removed_dense] = 0
  weight_masks.set_matrix(model, d0[0], m)
  m = weight_masks.matrix(model, mask[0])
  m[:, removed_dense] = 0
  weight_masks.set_matrix(model, mask[0], m)
  # A unit of LSTM 1 with no input but still read by dense_0 is NOT removable.
  for t in weight_masks.layers(model)[1][1] + weight_masks.layers(model)[1][2]:
    m = weight_masks.matrix(model, t)
    m[9] = 0
    weight_masks.set_matrix(model, t, m)
  report = macs.count_macs(weight_masks.to_bytes(model))
  l0, l1, d, k = report.layers
  assert (l0.kept_units, l1.kept_units, d.kept_units, k.kept_units) == (29, 32, 31, 128)
  assert l0.unit == 4 * 29 * 128 + 4 * 29 * 29
  assert l1.unit == 4 * 32 * 29 + 4 * 32 * 32
  assert d.unit == 31 * 32
  assert k.unit == 128 * 31
  assert report.total("dense") == DENSE_TOTAL
  assert report.speedup("unit") == DENSE_TOTAL / report.total("unit")


def test_sparse_file_counts_like_its_dense_file(int8_bytes):
  pruned = weight_masks.random_block_mask(int8_bytes, 0.8, block=8)
  sparse = sparse_tflite.encode(pruned, block_size=8)
  assert macs.count_macs(sparse).to_dict() == macs.count_macs(pruned).to_dict()
  # Random 1×8 blocks at 80 %: about 20 % of the block MACs remain.
  ratio = macs.count_macs(pruned).total("block") / DENSE_TOTAL
  assert 0.15 < ratio < 0.25
