"""TFLite sparse encoding of pruned int8 weights: byte-exact round trip, format, sizes, runtimes."""
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from tests.tflm_export import weight_masks
from tf_tinyse.errors import UserError
from tflm_export import sparse_tflite
from tflm_export import tflite_graph
from tflm_export import tflm_runner


@pytest.fixture(scope="module")
def weight_pruned(int8_bytes):
  """80 % random weights zero, plus one all-zero row in the first LSTM input matrix."""
  pruned = weight_masks.random_weight_mask(int8_bytes, 0.8)
  model = weight_masks.to_object(pruned)
  first = weight_masks.layers(model)[0][1][0]
  m = weight_masks.matrix(model, first)
  m[3] = 0
  weight_masks.set_matrix(model, first, m)
  return weight_masks.to_bytes(model)


@pytest.fixture(scope="module")
def block_pruned(int8_bytes):
  """80 % random 1×8 blocks zero, plus a fully pruned block row (row 5 of every matrix)."""
  pruned = weight_masks.random_block_mask(int8_bytes, 0.8, block=8)
  return weight_masks.apply(pruned, lambda i, m: np.where(np.arange(m.shape[0])[:, None] == 5,
                                                          0, m))


def _original_matrices(tflite_bytes):
  model = weight_masks.to_object(tflite_bytes)
  return {model.subgraphs[0].tensors[i].name: weight_masks.matrix(model, i)
          for i in weight_masks.all_weights(model)}


def _decode_independently(values, shape, sparsity):
  """The two layouts of this module, decoded by hand (CSR rows, 1×B block columns)."""
  rows, cols = shape
  assert sparsity.dimMetadata[0].format == schema.DimensionType.DENSE
  assert sparsity.dimMetadata[0].denseSize == rows
  csr = sparsity.dimMetadata[1]
  assert csr.format == schema.DimensionType.SPARSE_CSR
  block = 1
  if len(sparsity.dimMetadata) == 3:
    assert list(sparsity.traversalOrder) == [0, 1, 2]
    assert list(sparsity.blockMap) == [1]
    assert sparsity.dimMetadata[2].format == schema.DimensionType.DENSE
    block = sparsity.dimMetadata[2].denseSize
  else:
    assert list(sparsity.traversalOrder) == [0, 1]
    assert sparsity.blockMap is None or len(sparsity.blockMap) == 0
  segments = np.asarray(csr.arraySegments.values, np.int64)
  indices = np.asarray(csr.arrayIndices.values, np.int64)
  assert len(segments) == rows + 1 and segments[0] == 0 and segments[-1] == len(indices)
  dense = np.zeros(shape, np.int8)
  k = 0
  for r in range(rows):
    for j in indices[segments[r]:segments[r + 1]]:
      dense[r, j * block:(j + 1) * block] = values[k:k + block]
      k += block
  assert k == len(values)
  del cols
  return dense


def test_plain_object_round_trip_of_a_converted_model_is_byte_identical(int8_bytes):
  assert weight_masks.to_bytes(weight_masks.to_object(int8_bytes)) == int8_bytes


@pytest.mark.parametrize("with_densify", [False, True])
def test_weight_level_round_trip_is_byte_identical(weight_pruned, with_densify):
  sparse = sparse_tflite.encode(weight_pruned, block_size=1, with_densify=with_densify)
  assert len(sparse) < len(weight_pruned)
  assert sparse_tflite.decode(sparse) == weight_pruned


@pytest.mark.parametrize("with_densify", [False, True])
def test_block_round_trip_is_byte_identical(block_pruned, with_densify):
  sparse = sparse_tflite.encode(block_pruned, block_size=8, with_densify=with_densify)
  assert len(sparse) < len(block_pruned)
  assert sparse_tflite.decode(sparse) == block_pruned


@pytest.mark.parametrize("block_size", [1, 8])
def test_sparsity_parameters_describe_the_original_weights(weight_pruned, block_pruned,
                                                           block_size):
  dense_bytes = weight_pruned if block_size == 1 else block_pruned
  original = _original_matrices(dense_bytes)
  sparse = sparse_tflite.encode(dense_bytes, block_size=block_size)
  # A valid flatbuffer for the schema's own reader and for ours.
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(sparse), 0))
  graph = tflite_graph.read_graph(sparse)
  assert graph.op_names() == tflite_graph.read_graph(dense_bytes).op_names()
  encoded = [t for t in model.subgraphs[0].tensors if t.sparsity is not None]
  assert len(encoded) == len(original)  # 80 % zeros: every matrix gets smaller encoded
  for t in encoded:
    values = np.frombuffer(bytes(bytearray(model.buffers[t.buffer].data)), np.int8)
    shape = tuple(int(d) for d in t.shape)
    np.testing.assert_array_equal(_decode_independently(values, shape, t.sparsity),
                                  original[t.name])
    if block_size == 8:
      assert len(values) % 8 == 0
      # Row 5 is fully pruned: it has no blocks.
      segments = np.asarray(t.sparsity.dimMetadata[1].arraySegments.values)
      assert segments[5] == segments[6]


def test_all_zero_row_has_an_empty_segment(weight_pruned):
  sparse = sparse_tflite.encode(weight_pruned, block_size=1)
  model = weight_masks.to_object(sparse)
  first = weight_masks.layers(model)[0][1][0]
  segments = model.subgraphs[0].tensors[first].sparsity.dimMetadata[1].arraySegments.values
  assert segments[3] == segments[4]


def test_smallest_index_vector_type():
  kinds = schema.SparseIndexVector
  assert sparse_tflite.smallest_index_vector([0, 255])[0] == kinds.Uint8Vector
  assert sparse_tflite.smallest_index_vector([0, 256])[0] == kinds.Uint16Vector
  assert sparse_tflite.smallest_index_vector([65535])[0] == kinds.Uint16Vector
  assert sparse_tflite.smallest_index_vector([65536])[0] == kinds.Int32Vector


def test_encoded_files_use_the_smallest_index_type(weight_pruned):
  model = weight_masks.to_object(sparse_tflite.encode(weight_pruned, block_size=1))
  expected = {np.dtype(np.uint8): schema.SparseIndexVector.Uint8Vector,
              np.dtype(np.uint16): schema.SparseIndexVector.Uint16Vector}
  seen = set()
  for t in model.subgraphs[0].tensors:
    if t.sparsity is None:
      continue
    csr = t.sparsity.dimMetadata[1]
    for kind, vector in ((csr.arraySegmentsType, csr.arraySegments),
                         (csr.arrayIndicesType, csr.arrayIndices)):
      largest = int(np.max(vector.values))
      want = expected[np.dtype(np.uint8 if largest <= 255 else np.uint16)]
      assert kind == want, (t.name, largest)
      seen.add(kind)
  # [32, 128] at 20 % density holds > 255 values, so segments need 16 bits there.
  assert seen == set(expected.values())


def test_a_matrix_without_zero_blocks_stays_dense(int8_bytes, weight_pruned):
  # Unpruned: no 1×8 block is all zero, nothing is encoded, the file is unchanged.
  assert sparse_tflite.encode(int8_bytes, block_size=8) == int8_bytes
  # 80 % random weight zeros leave few whole 1×8 blocks zero: blocks gain nothing there.
  report = sparse_tflite.sparse_size_report(sparse_tflite.encode(weight_pruned, block_size=8))
  for t in report.tensors:
    assert t.sparse_bytes < t.dense_bytes


def test_shared_buffer_stays_shared_and_round_trips(weight_pruned):
  model = weight_masks.to_object(weight_pruned)
  _, _, recurrent = weight_masks.layers(model)[0]
  tensors = model.subgraphs[0].tensors
  tensors[recurrent[1]].buffer = tensors[recurrent[0]].buffer  # as the converter dedups
  shared = weight_masks.to_bytes(model)
  sparse = sparse_tflite.encode(shared, block_size=1)
  encoded = weight_masks.to_object(sparse).subgraphs[0].tensors
  assert encoded[recurrent[0]].buffer == encoded[recurrent[1]].buffer
  assert encoded[recurrent[0]].sparsity is not None
  assert encoded[recurrent[1]].sparsity is not None
  assert sparse_tflite.decode(sparse) == shared
  report = sparse_tflite.sparse_size_report(sparse)
  by_buffer = {}
  for t in report.tensors:
    by_buffer.setdefault(t.buffer, []).append(t)
  assert report.totals()["values_bytes"] == sum(ts[0].values_bytes for ts in by_buffer.values())


def test_size_report_counts_the_file(weight_pruned, block_pruned):
  for dense, block in ((weight_pruned, 1), (block_pruned, 8)):
    sparse = sparse_tflite.encode(dense, block_size=block)
    report = sparse_tflite.sparse_size_report(sparse)
    totals = report.totals()
    assert report.file_bytes == len(sparse)
    model = weight_masks.to_object(sparse)
    values = sum(len(model.buffers[t.buffer].data) for t in model.subgraphs[0].tensors
                 if t.sparsity is not None)
    assert totals["values_bytes"] == values
    for t in report.tensors:
      assert t.metadata_bytes > 0
      # One uint8 index per kept value (block 1) or per kept block of 8 (inputs <= 128).
      assert t.indices_type == "Uint8Vector"
      assert t.indices_bytes == t.values_bytes // block
    # The file saves about what the report says (flatbuffer alignment aside).
    saved = len(dense) - len(sparse)
    assert abs(saved - (totals["dense_bytes"] - totals["sparse_bytes"])) < 64 * len(report.tensors)


def _interpreter_outputs(tflite_bytes, frames):
  """Every op output of the dense graph, per frame, from the builtin TFLite kernels."""
  interpreter = tf.lite.Interpreter(
      model_content=tflite_bytes, experimental_preserve_all_tensors=True,
      experimental_op_resolver_type=tf.lite.experimental.OpResolverType
      .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  interpreter.allocate_tensors()
  graph = tflite_graph.read_graph(tflite_bytes)
  watched = sorted({t.index for op in graph.operators for t in op.outputs
                    if not t.name.endswith("/densified")})
  inp = interpreter.get_input_details()[0]
  scale, zero_point = inp["quantization"]
  out = []
  for frame in frames:
    q = tflm_runner.quantize(frame, scale, zero_point, np.int8).reshape(inp["shape"])
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    out.append(np.concatenate([interpreter.get_tensor(i).reshape(-1) for i in watched]))
  return np.array(out)


def test_densify_variant_runs_in_the_interpreter_like_the_dense_model(weight_pruned,
                                                                      utterances):
  sparse = sparse_tflite.encode(weight_pruned, block_size=1, with_densify=True)
  graph = tflite_graph.read_graph(sparse)
  densify = [op for op in graph.operators if op.name == "DENSIFY"]
  # The [128, 32] output layer is encoded; the [32, 32] hidden layer can stay dense: its
  # DENSIFY op and output tensor (with 32 per-channel scales and int64 zero points) cost more
  # than its zeros save.
  assert densify
  readers = [op.name for op in graph.operators for d in densify if d.outputs[0] in op.inputs]
  assert readers == ["FULLY_CONNECTED"] * len(densify)
  frames = utterances[0][:40]
  np.testing.assert_array_equal(_interpreter_outputs(sparse, frames),
                                _interpreter_outputs(weight_pruned, frames))


def test_interpreter_runs_1x16_fully_connected_natively(int8_bytes, utterances):
  pruned = weight_masks.random_block_mask(int8_bytes, 0.7, block=16)
  sparse = sparse_tflite.encode(pruned, block_size=16, tensor_filter=lambda n: "MatMul" in n)
  assert "DENSIFY" not in tflite_graph.read_graph(sparse).op_names()
  assert len(sparse_tflite.sparse_size_report(sparse).tensors) == 2
  frames = utterances[0][:40]
  # The native sparse kernel requantizes its own way: rare 1-LSB differences (measured 2 of
  # 15360 values), not bit-exact like DENSIFY.
  diff = np.abs(_interpreter_outputs(sparse, frames).astype(np.int32) -
                _interpreter_outputs(pruned, frames).astype(np.int32))
  assert diff.max() <= 1 and np.mean(diff > 0) < 0.01


def test_interpreter_refuses_sparse_1x8_fully_connected_without_densify(block_pruned):
  sparse = sparse_tflite.encode(block_pruned, block_size=8, tensor_filter=lambda n: "MatMul" in n)
  with pytest.raises(RuntimeError, match="Unsupported sparse fully-connected weight format"):
    _interpreter_outputs(sparse, np.zeros((1, 128), np.float32))


def test_tflm_cannot_load_the_densify_variant(weight_pruned):
  sparse = sparse_tflite.encode(weight_pruned, block_size=1, with_densify=True)
  with pytest.raises(UserError):
    tflm_runner.TflmModel(sparse)


def test_tflm_runs_the_decoded_file_like_the_dense_model(block_pruned, utterances):
  decoded = sparse_tflite.decode(sparse_tflite.encode(block_pruned, block_size=8))
  frames = utterances[1][:20]
  np.testing.assert_array_equal(tflm_runner.TflmModel(decoded).run(frames),
                                tflm_runner.TflmModel(block_pruned).run(frames))


def test_encode_refuses_non_tflite_bytes():
  with pytest.raises(UserError):
    sparse_tflite.encode(b"not a model at all")


def test_tflm_runner_refuses_sparse_constants_it_would_run_wrongly(block_pruned):
  # Without DENSIFY, TFLM loads the sparse file and reads the packed buffers as dense
  # matrices: TflmModel refuses it with a pointer to `decode`.
  sparse = sparse_tflite.encode(block_pruned, block_size=8)
  with pytest.raises(UserError, match="sparse-encoded weights.*decode"):
    tflm_runner.TflmModel(sparse)
