"""Zeroing int8 weights directly in a converted `.tflite` (fast pruned models for tests).

The int8 codes of a pruned weight are 0 whatever the scale, so setting codes to zero in the
flatbuffer gives the same int8 model that pruning before conversion would (the scales aside).
"""
import numpy as np
from tensorflow.lite.tools import flatbuffer_utils

from tflm_export import sparse_tflite


def layers(model):
  """[(op name, [input weight tensor indices], [recurrent weight tensor indices])] in order."""
  out = []
  for op in model.subgraphs[0].operators:
    code = sparse_tflite.op_code(model, op)
    inputs = [int(i) for i in op.inputs]
    if code == sparse_tflite._FULLY_CONNECTED:  # pylint: disable=protected-access
      out.append(("FULLY_CONNECTED", [inputs[1]], []))
    elif code == sparse_tflite._LSTM:  # pylint: disable=protected-access
      out.append(("LSTM", inputs[1:5], inputs[5:9]))
  return out


def matrix(model, tensor_index):
  t = model.subgraphs[0].tensors[tensor_index]
  data = bytes(bytearray(model.buffers[t.buffer].data))
  return np.frombuffer(data, np.int8).reshape(tuple(int(d) for d in t.shape)).copy()


def set_matrix(model, tensor_index, values):
  t = model.subgraphs[0].tensors[tensor_index]
  values = np.asarray(values, np.int8)
  assert values.shape == tuple(int(d) for d in t.shape)
  model.buffers[t.buffer].data = np.frombuffer(values.tobytes(), np.uint8)


def to_object(tflite_bytes):
  return flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))


def to_bytes(model):
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def all_weights(model):
  return [i for _, a, b in layers(model) for i in a + b]


def apply(tflite_bytes, fn):
  """`fn(tensor_index, matrix) -> matrix` on every weight matrix; returns the new bytes."""
  model = to_object(tflite_bytes)
  for index in all_weights(model):
    set_matrix(model, index, fn(index, matrix(model, index)))
  return to_bytes(model)


def random_weight_mask(tflite_bytes, sparsity, seed=0):
  rng = np.random.default_rng(seed)
  return apply(tflite_bytes, lambda i, m: m * (rng.random(m.shape) >= sparsity))


def random_block_mask(tflite_bytes, sparsity, block=8, seed=0):
  """Zeroes random 1×block blocks along dim 1 of every [out, in] matrix."""
  rng = np.random.default_rng(seed)

  def fn(index, m):
    rows, cols = m.shape
    keep = rng.random((rows, cols // block)) >= sparsity
    return m * np.repeat(keep, block, axis=1)
  return apply(tflite_bytes, fn)
