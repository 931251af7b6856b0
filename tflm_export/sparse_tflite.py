"""Pruned int8 weights stored in TFLite's own sparse encoding, its exact decoder, and its size.

`encode` rewrites the constant int8 weight matrices of an int8 `.tflite` (FULLY_CONNECTED
weights [out, in]; the fused UNIDIRECTIONAL_SEQUENCE_LSTM's 8 matrices [units, in] and
[units, units]) with `SparsityParameters` (schema.fbs; the project's one-page description of it is tflite-sparse-format.md):

- `block_size=1` (weight level, unstructured CSR): traversal [0, 1], no block map,
  dim_metadata [DENSE(out), SPARSE_CSR(segments, column indices)]; the buffer holds the
  non-zero values row by row.
- `block_size=B` > 1 (1×B blocks along the input dimension, the MAC direction): k = 1 block
  dimension, block_map [1], traversal [0, 1, 2], dim_metadata [DENSE(out),
  SPARSE_CSR(segments, block-column indices), DENSE(B)]; a block is kept when any of its B
  values is non-zero and the buffer holds B values per kept block, row by row.

Segments and indices use the smallest index vector that holds their largest value
(Uint8Vector ≤ 255, Uint16Vector ≤ 65535, else Int32Vector).

What is encoded (decided per buffer, since the converter stores equal constants once and lets
several tensors share that buffer):
- every tensor that reads the buffer must be an int8 2-D weight input of FULLY_CONNECTED (input
  1) or of the fused LSTM (inputs 1..8), all with the same shape, and the input dimension must
  be a multiple of B (a matrix whose rows do not split into whole blocks stays dense);
- the encoding must make the FILE smaller: the encoded candidate is serialized and kept only
  when the whole `.tflite` shrinks (exact bytes, including the SparsityParameters tables, their
  alignment and, with `with_densify`, the DENSIFY operator and its output tensor). A matrix
  with few zeros therefore stays dense.
Shared buffers stay shared: all their readers get the same SparsityParameters.

Byte identity: `decode(encode(x)) == x` for a model `x` written by the TFLite converter or by
`flatbuffer_utils.convert_object_to_bytearray` (as `export_model.pin_fixed_ranges` does). Both
functions go through the object API (`convert_bytearray_to_object` →
`convert_object_to_bytearray`), and the plain round trip of a converter model is itself
byte-identical (measured on TF 2.21 models, tested). Encoding changes only buffer contents and
adds a `sparsity` table to the tensors; buffer indices and order are kept, so decoding (which
densifies the buffer back and drops the `sparsity` table) restores the same object tree. With
`with_densify`, the added DENSIFY operators, their output tensors and the DENSIFY operator code
are appended at the end of their lists and removed again by `decode`.

Which runtime runs what (measured with TF 2.21 and the installed tflite-micro; the tests in
tests/tflm_export/test_sparse_tflite.py pin the results that matter):
- `tf.lite.Interpreter`, sparse constants read directly by their op:
  - FULLY_CONNECTED: the builtin kernel has an int8 sparse path only for 1×16 blocks
    (tensorflow/lite/kernels/fully_connected.cc: `dim_metadata_size == 3 && dense_size ==
    16`, symmetric weights; float: CSR and 1×4). `encode(x, block_size=16)` restricted to FC
    weights runs natively, within 1 LSB of the dense model (its own requantization: measured
    2 of 15360 values off by 1). 1×1 and 1×8 fail at invoke ("Unsupported sparse
    fully-connected weight format") with `BUILTIN_WITHOUT_DEFAULT_DELEGATES`; with the default
    XNNPACK delegate the op runs but computes WRONG values (measured 12 LSB off).
  - fused LSTM: no sparse path and no check: it reads the packed buffer as a dense matrix and
    computes WRONG values silently.
- `tf.lite.Interpreter` with DENSIFY (`encode(..., with_densify=True)`, what the converter
  writes with EXPERIMENTAL_SPARSITY): DENSIFY → FULLY_CONNECTED runs, bit-exact with the dense
  model. DENSIFY → UNIDIRECTIONAL_SEQUENCE_LSTM crashes the process (SIGSEGV while preparing:
  the integer LSTM precomputes from its weights before DENSIFY has produced them), so that
  variant leaves the LSTM weights dense. Each DENSIFY costs its op and an output tensor that
  repeats the weight's quantization (per-channel: one float32 scale and one int64 zero point
  per output row), about 0.5 kB for a 32-row matrix, so the size rule keeps small matrices
  dense there.
- TFLite Micro: no sparse kernels and no DENSIFY kernel. A file with DENSIFY fails to load
  ("failed to allocate tensors"); a file with sparse constants but no DENSIFY LOADS AND RUNS
  WITH WRONG VALUES (the sparsity table is ignored). Give TFLM only dense files: the sparse file
  is a storage/transport format (flash image, download) that is densified with `decode` on
  the host or at boot.
"""
import copy
import dataclasses

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from tf_tinyse.errors import UserError

_OP_CODES = {name: code for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
_FULLY_CONNECTED = _OP_CODES["FULLY_CONNECTED"]
_LSTM = _OP_CODES["UNIDIRECTIONAL_SEQUENCE_LSTM"]
_DENSIFY = _OP_CODES["DENSIFY"]
# The DENSIFY op version that TFLite's builtin resolver accepts for int8 constants.
DENSIFY_VERSION = 1

# Weight-matrix input positions of each op (TFLite's fully_connected.cc / lstm_shared.h).
WEIGHT_INPUTS = {
    _FULLY_CONNECTED: (1,),
    _LSTM: (1, 2, 3, 4, 5, 6, 7, 8),  # input-to-{i,f,c,o}, recurrent-to-{i,f,c,o}
}
BLOCK_SIZES_HELP = "1 (unstructured CSR) or a block width B that divides the input dimension"

_VECTOR_TYPES = (  # (union type, object class, numpy dtype, largest value)
    (schema.SparseIndexVector.Uint8Vector, schema.Uint8VectorT, np.uint8, 2**8 - 1),
    (schema.SparseIndexVector.Uint16Vector, schema.Uint16VectorT, np.uint16, 2**16 - 1),
    (schema.SparseIndexVector.Int32Vector, schema.Int32VectorT, np.int32, 2**31 - 1),
)
_VECTOR_ITEM_BYTES = {t: np.dtype(d).itemsize for t, _, d, _ in _VECTOR_TYPES}


class SparseFormatError(UserError):
  """The bytes are not a model this module can encode or decode; the message says why."""


def op_code(model, op):
  opcode = model.operatorCodes[op.opcodeIndex]
  return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def _to_object(tflite_bytes):
  tflite_bytes = bytes(tflite_bytes)
  if tflite_bytes[4:8] != b"TFL3":
    raise SparseFormatError("the bytes are not a .tflite model (no TFL3 identifier)")
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
  if any(getattr(b, "offset", 0) for b in model.buffers or []):
    raise SparseFormatError("the .tflite stores buffers outside the flatbuffer (> 2 GB model)")
  return model


def _to_bytes(model):
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _buffer_bytes(model, tensor):
  data = model.buffers[tensor.buffer].data
  return b"" if data is None else bytes(bytearray(data))


# ---------------------------------------------------------------------------------------------
# Matrix <-> (values, segments, indices)


def smallest_index_vector(values):
  """(union type, vector object) of the smallest SparseIndexVector holding `values` (>= 0)."""
  values = np.asarray(values, np.int64)
  largest = int(values.max()) if values.size else 0
  if values.size and int(values.min()) < 0:
    raise ValueError("sparse index vectors hold non-negative values only")
  for union_type, cls, dtype, limit in _VECTOR_TYPES:
    if largest <= limit:
      vector = cls()
      vector.values = values.astype(dtype)
      return union_type, vector
  raise ValueError(f"index {largest} does not fit an Int32Vector")


def encode_matrix(matrix, block_size):
  """A 2-D int8 matrix [out, in] → (values int8 [kept*B], segments [out+1], indices [kept]).

  Row r keeps the blocks (1×B along dim 1) with any non-zero value; `indices` are their block
  columns, `segments[r]:segments[r+1]` the range of row r, `values` their B values each.
  """
  matrix = np.asarray(matrix)
  rows, cols = matrix.shape
  if block_size < 1 or cols % block_size:
    raise ValueError(f"block size {block_size} does not divide the input dimension {cols}")
  blocks = matrix.reshape(rows, cols // block_size, block_size)
  kept = np.any(blocks != 0, axis=2)
  segments = np.concatenate([[0], np.cumsum(kept.sum(axis=1))]).astype(np.int64)
  indices = np.nonzero(kept)[1].astype(np.int64)  # row-major, so grouped by row
  values = blocks[kept].reshape(-1)
  return values, segments, indices


def sparsity_parameters(shape, block_size, segments, indices):
  """The SparsityParametersT of an [out, in] matrix in this module's layout."""
  rows, cols = (int(d) for d in shape)
  dense_rows = schema.DimensionMetadataT(format=schema.DimensionType.DENSE, denseSize=rows)
  csr = schema.DimensionMetadataT(format=schema.DimensionType.SPARSE_CSR)
  csr.arraySegmentsType, csr.arraySegments = smallest_index_vector(segments)
  csr.arrayIndicesType, csr.arrayIndices = smallest_index_vector(indices)
  params = schema.SparsityParametersT()
  if block_size == 1:
    params.traversalOrder = [0, 1]
    params.dimMetadata = [dense_rows, csr]
  else:
    params.traversalOrder = [0, 1, 2]
    params.blockMap = [1]
    params.dimMetadata = [dense_rows, csr, schema.DimensionMetadataT(
        format=schema.DimensionType.DENSE, denseSize=int(block_size))]
  if cols % block_size:
    raise ValueError(f"block size {block_size} does not divide the input dimension {cols}")
  return params


def _vector_values(vector):
  return np.asarray(vector.values if vector is not None else [], np.int64)


def densify(values, shape, sparsity):
  """The dense tensor that `values` (kept values in traversal order) and `sparsity` describe.

  General TACO decoding (any traversal order, block map, DENSE / SPARSE_CSR levels), so that
  the converter's own sparse tensors decode too.
  """
  shape = tuple(int(d) for d in shape)
  n = len(shape)
  order = [int(d) for d in sparsity.traversalOrder]
  block_map = [int(d) for d in (sparsity.blockMap if sparsity.blockMap is not None else [])]
  levels = sparsity.dimMetadata
  if len(order) != n + len(block_map) or len(levels) != len(order):
    raise SparseFormatError(f"sparsity of a tensor of shape {shape} has traversal order "
                            f"{order}, block map {block_map} and {len(levels)} dim metadata")
  block_sizes = {}
  for level, dim in zip(levels, order):
    if dim >= n:
      if level.format != schema.DimensionType.DENSE:
        raise SparseFormatError("block dimensions must be DENSE")
      block_sizes[dim] = int(level.denseSize)
  positions = np.zeros(1, np.int64)  # position of each node of the current level
  coords = np.zeros((1, len(order)), np.int64)  # its coordinate in each expanded dimension
  for level, dim in zip(levels, order):
    if level.format == schema.DimensionType.DENSE:
      size = int(level.denseSize)
      child = np.arange(size, dtype=np.int64)
      positions = (positions[:, None] * size + child[None, :]).reshape(-1)
      coords = np.repeat(coords, size, axis=0)
      coords[:, dim] = np.tile(child, len(coords) // size if size else 0)
    else:
      segments = _vector_values(level.arraySegments)
      indices = _vector_values(level.arrayIndices)
      starts, ends = segments[positions], segments[positions + 1]
      counts = ends - starts
      positions = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)] or
                                 [np.zeros(0, np.int64)]).astype(np.int64)
      coords = np.repeat(coords, counts, axis=0)
      coords[:, dim] = indices[positions]
  values = np.asarray(values)
  if len(positions) != values.size:
    raise SparseFormatError(f"sparsity describes {len(positions)} values, the buffer holds "
                            f"{values.size}")
  full = np.zeros(shape, values.dtype)
  index = []
  for d in range(n):
    c = coords[:, d]
    for k, mapped in enumerate(block_map):
      if mapped == d:
        c = c * block_sizes[n + k] + coords[:, n + k]
    index.append(c)
  full[tuple(index)] = values[positions]
  return full


# ---------------------------------------------------------------------------------------------
# encode / decode


def _weight_buffers(model, weight_inputs):
  """{buffer index: [tensor indices]} of the buffers that hold only eligible int8 matrices."""
  graph = model.subgraphs[0]
  eligible = set()
  for op in graph.operators or []:
    positions = weight_inputs.get(op_code(model, op), ())
    inputs = [int(i) for i in op.inputs]
    for p in positions:
      if p < len(inputs) and inputs[p] >= 0:
        eligible.add(inputs[p])
  readers = {}
  for index, t in enumerate(graph.tensors):
    readers.setdefault(t.buffer, []).append(index)
  used_elsewhere = set(int(i) for i in list(graph.inputs) + list(graph.outputs))
  for op in graph.operators or []:
    positions = set(WEIGHT_INPUTS.get(op_code(model, op), ()))
    for p, i in enumerate(int(i) for i in op.inputs):
      if i >= 0 and p not in positions:
        used_elsewhere.add(i)
    used_elsewhere.update(int(i) for i in op.outputs)
  out = {}
  for buffer_index, tensors in readers.items():
    if buffer_index == 0 or not all(i in eligible and i not in used_elsewhere for i in tensors):
      continue
    first = graph.tensors[tensors[0]]
    shapes = {tuple(int(d) for d in graph.tensors[i].shape) for i in tensors}
    types = {graph.tensors[i].type for i in tensors}
    if (len(shapes) != 1 or types != {schema.TensorType.INT8} or len(first.shape) != 2 or
        any(graph.tensors[i].sparsity is not None for i in tensors)):
      continue
    if len(_buffer_bytes(model, first)) != int(np.prod(first.shape)):
      continue
    out[buffer_index] = tensors
  return out


def _densify_opcode_index(model):
  for k, opcode in enumerate(model.operatorCodes):
    if max(opcode.builtinCode, opcode.deprecatedBuiltinCode) == _DENSIFY:
      return k
  model.operatorCodes.append(schema.OperatorCodeT(
      deprecatedBuiltinCode=_DENSIFY, builtinCode=_DENSIFY, version=DENSIFY_VERSION))
  return len(model.operatorCodes) - 1


def _add_densify_ops(model, sparse_tensors):
  """One DENSIFY op per sparse tensor, at the front; its readers read the dense copy."""
  graph = model.subgraphs[0]
  opcode_index = _densify_opcode_index(model)
  new_ops = []
  for index in sparse_tensors:
    source = graph.tensors[index]
    dense = schema.TensorT()
    dense.shape = np.array(source.shape, np.int32)
    dense.type = source.type
    dense.buffer = 0
    dense.name = (source.name or b"") + b"/densified"
    dense.quantization = copy.deepcopy(source.quantization)
    graph.tensors.append(dense)
    dense_index = len(graph.tensors) - 1
    for op in graph.operators:
      inputs = np.array(op.inputs, np.int32)
      inputs[inputs == index] = dense_index
      op.inputs = inputs
    op = schema.OperatorT()
    op.opcodeIndex = opcode_index
    op.inputs = np.array([index], np.int32)
    op.outputs = np.array([dense_index], np.int32)
    op.builtinOptionsType = schema.BuiltinOptions.DensifyOptions
    op.builtinOptions = schema.DensifyOptionsT()
    new_ops.append(op)
  graph.operators = new_ops + list(graph.operators)


def _file_size(model, sparse_tensors, with_densify):
  if not with_densify or not sparse_tensors:
    return len(_to_bytes(model))
  trial = copy.deepcopy(model)
  _add_densify_ops(trial, sparse_tensors)
  return len(_to_bytes(trial))


def encode(tflite_bytes, block_size=8, *, with_densify=False, tensor_filter=None):
  """The model with its pruned int8 weight matrices in TFLite's sparse encoding.

  Args:
    tflite_bytes: an int8 `.tflite` (e.g. from `convert.convert_to_int8`), dense.
    block_size: 1 (weight level, unstructured CSR) or B (1×B blocks along the input
      dimension). A matrix whose input dimension B does not divide stays dense.
    with_densify: the variant `tf.lite.Interpreter` runs correctly: only FULLY_CONNECTED
      weights are encoded, each with a DENSIFY op in front of its reader (a DENSIFY feeding the
      fused LSTM crashes the interpreter; see the module docstring).
    tensor_filter: optional `fn(tensor_name: str) -> bool`; only matching tensors are
      considered (default: all eligible weight matrices).

  Returns:
    The `.tflite` bytes; weight buffers that would not make the file smaller stay dense.
  """
  if block_size < 1:
    raise SparseFormatError(f"block size {block_size} is not {BLOCK_SIZES_HELP}")
  model = _to_object(tflite_bytes)
  graph = model.subgraphs[0]
  if any(op_code(model, op) == _DENSIFY for op in graph.operators or []):
    raise SparseFormatError("the model already holds DENSIFY ops (it is sparse): decode it "
                            "first")
  if any(t.sparsity is not None for t in graph.tensors):
    raise SparseFormatError("the model already holds sparse tensors: decode it first")
  encoded = []  # tensor indices now sparse
  current_size = _file_size(model, encoded, with_densify)
  # DENSIFY in front of a fused LSTM crashes the interpreter (SIGSEGV in prepare, measured
  # TF 2.21), so the runnable variant keeps the LSTM weights dense.
  weight_inputs = ({_FULLY_CONNECTED: WEIGHT_INPUTS[_FULLY_CONNECTED]} if with_densify
                   else WEIGHT_INPUTS)
  for buffer_index, tensors in sorted(_weight_buffers(model, weight_inputs).items()):
    names = [(graph.tensors[i].name or b"").decode("utf-8", "replace") for i in tensors]
    if tensor_filter is not None and not all(tensor_filter(n) for n in names):
      continue
    first = graph.tensors[tensors[0]]
    shape = tuple(int(d) for d in first.shape)
    if shape[1] % block_size:
      continue
    matrix = np.frombuffer(_buffer_bytes(model, first), np.int8).reshape(shape)
    values, segments, indices = encode_matrix(matrix, block_size)
    if values.size >= matrix.size:
      continue  # No block is all zero: the index data can only add bytes.
    buffer = model.buffers[buffer_index]
    dense_data = buffer.data
    buffer.data = np.frombuffer(values.astype(np.int8).tobytes(), np.uint8)
    params = sparsity_parameters(shape, block_size, segments, indices)
    for i in tensors:
      graph.tensors[i].sparsity = copy.deepcopy(params)
    size = _file_size(model, encoded + tensors, with_densify)
    if size < current_size:
      encoded += tensors
      current_size = size
    else:  # Leave it dense.
      buffer.data = dense_data
      for i in tensors:
        graph.tensors[i].sparsity = None
  if with_densify and encoded:
    _add_densify_ops(model, encoded)
  return _to_bytes(model)


def _remove_densify_ops(model):
  """Drops DENSIFY ops reading a sparse constant; readers of their outputs read the constant."""
  graph = model.subgraphs[0]
  kept_ops, removed_tensors = [], {}
  for op in graph.operators or []:
    if op_code(model, op) == _DENSIFY:
      source = int(op.inputs[0])
      if graph.tensors[source].sparsity is not None:
        removed_tensors[int(op.outputs[0])] = source
        continue
    kept_ops.append(op)
  if not removed_tensors:
    return
  graph.operators = kept_ops
  for op in graph.operators:
    op.inputs = np.array([removed_tensors.get(int(i), int(i)) for i in op.inputs], np.int32)
  # Renumber the tensors that remain (the removed ones are those encode appended at the end).
  keep = [i for i in range(len(graph.tensors)) if i not in removed_tensors]
  new_index = {old: new for new, old in enumerate(keep)}
  remap = lambda xs: np.array([new_index[int(i)] if int(i) >= 0 else int(i) for i in xs],
                              np.int32)
  graph.tensors = [graph.tensors[i] for i in keep]
  for op in graph.operators:
    op.inputs = remap(op.inputs)
    op.outputs = remap(op.outputs)
    if op.intermediates is not None:
      op.intermediates = remap(op.intermediates)
  graph.inputs, graph.outputs = remap(graph.inputs), remap(graph.outputs)
  for signature in model.signatureDefs or []:
    for tensor_map in list(signature.inputs or []) + list(signature.outputs or []):
      tensor_map.tensorIndex = new_index[int(tensor_map.tensorIndex)]
  # Drop the DENSIFY operator code when nothing uses it any more.
  used = {int(op.opcodeIndex) for g in model.subgraphs for op in g.operators or []}
  unused = [k for k, c in enumerate(model.operatorCodes)
            if max(c.builtinCode, c.deprecatedBuiltinCode) == _DENSIFY and k not in used]
  for k in sorted(unused, reverse=True):
    del model.operatorCodes[k]
    for g in model.subgraphs:
      for op in g.operators or []:
        if op.opcodeIndex > k:
          op.opcodeIndex -= 1


def decode(sparse_bytes):
  """The dense model: every sparse constant densified, DENSIFY ops in front of them removed.

  `decode(encode(x, ...)) == x` byte for byte (see the module docstring).
  """
  model = _to_object(sparse_bytes)
  _remove_densify_ops(model)
  done = set()
  for graph in model.subgraphs:
    for t in graph.tensors:
      if t.sparsity is None:
        continue
      if t.buffer not in done:
        values = np.frombuffer(_buffer_bytes(model, t), _numpy_dtype(t.type))
        dense = densify(values, t.shape, t.sparsity)
        model.buffers[t.buffer].data = np.frombuffer(dense.tobytes(), np.uint8)
        done.add(t.buffer)
      t.sparsity = None
  return _to_bytes(model)


_NUMPY_DTYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8,
                 schema.TensorType.INT16: np.int16, schema.TensorType.INT32: np.int32,
                 schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}


def _numpy_dtype(tensor_type):
  if tensor_type not in _NUMPY_DTYPES:
    raise SparseFormatError(f"sparse tensors of type {tensor_type} are not supported")
  return np.dtype(_NUMPY_DTYPES[tensor_type]).newbyteorder("<")


# ---------------------------------------------------------------------------------------------
# Size report


@dataclasses.dataclass(frozen=True)
class SparseTensorSize:
  """Bytes of one sparse tensor as stored in the file.

  dense_bytes: the matrix stored dense (elements × item size).
  values_bytes: its buffer (kept values).
  segments_bytes / indices_bytes: the payload of the SPARSE_CSR level's index vectors.
  metadata_bytes: the rest of its SparsityParameters table (vtables, offsets, vector length
    prefixes, traversal order, block map, dense sizes, alignment), measured by serializing the
    table on its own (exact up to the few alignment bytes it gets inside the file).
  """
  name: str
  buffer: int
  shape: tuple
  block_size: int
  segments_type: str
  indices_type: str
  dense_bytes: int
  values_bytes: int
  segments_bytes: int
  indices_bytes: int
  metadata_bytes: int

  @property
  def index_bytes(self):
    return self.segments_bytes + self.indices_bytes

  @property
  def sparse_bytes(self):
    return self.values_bytes + self.index_bytes + self.metadata_bytes

  def to_dict(self):
    d = dataclasses.asdict(self)
    d["shape"] = list(self.shape)
    d["index_bytes"] = self.index_bytes
    d["sparse_bytes"] = self.sparse_bytes
    return d


@dataclasses.dataclass(frozen=True)
class SparseSizeReport:
  """Per sparse tensor sizes and their totals, for one sparse `.tflite`.

  file_bytes: the size of the sparse file itself. In `totals()`, a buffer shared by several
  sparse tensors (the converter stores equal constants once) counts its dense and values bytes
  once; every tensor has its own SparsityParameters table, so index and metadata bytes count
  per tensor.
  """
  file_bytes: int
  tensors: tuple

  def totals(self):
    out = dict(dense_bytes=0, values_bytes=0, segments_bytes=0, indices_bytes=0,
               metadata_bytes=0)
    buffers = set()
    for t in self.tensors:
      if t.buffer not in buffers:
        out["dense_bytes"] += t.dense_bytes
        out["values_bytes"] += t.values_bytes
        buffers.add(t.buffer)
      for field in ("segments_bytes", "indices_bytes", "metadata_bytes"):
        out[field] += getattr(t, field)
    out["index_bytes"] = out["segments_bytes"] + out["indices_bytes"]
    out["sparse_bytes"] = out["values_bytes"] + out["index_bytes"] + out["metadata_bytes"]
    return out

  def to_dict(self):
    return {"file_bytes": self.file_bytes, "tensors": [t.to_dict() for t in self.tensors],
            "totals": self.totals()}


_VECTOR_NAMES = {t: name for name, t in vars(schema.SparseIndexVector).items()
                 if not name.startswith("_")}


def _packed_size(sparsity):
  import flatbuffers  # pylint: disable=g-import-not-at-top
  builder = flatbuffers.Builder(0)
  builder.Finish(sparsity.Pack(builder))
  return len(builder.Output())


def sparse_size_report(sparse_bytes):
  """The exact stored sizes of every sparse tensor of a sparse `.tflite` (from `encode`)."""
  model = _to_object(sparse_bytes)
  graph = model.subgraphs[0]
  out = []
  for t in graph.tensors:
    s = t.sparsity
    if s is None:
      continue
    csr = [m for m in s.dimMetadata if m.format == schema.DimensionType.SPARSE_CSR]
    seg_bytes = sum(len(_vector_values(m.arraySegments)) *
                    _VECTOR_ITEM_BYTES.get(m.arraySegmentsType, 0) for m in csr)
    ind_bytes = sum(len(_vector_values(m.arrayIndices)) *
                    _VECTOR_ITEM_BYTES.get(m.arrayIndicesType, 0) for m in csr)
    block = int(s.dimMetadata[-1].denseSize) if s.blockMap is not None and len(s.blockMap) else 1
    item = _numpy_dtype(t.type).itemsize
    out.append(SparseTensorSize(
        name=(t.name or b"").decode("utf-8", "replace"), buffer=int(t.buffer),
        shape=tuple(int(d) for d in t.shape), block_size=block,
        segments_type=_VECTOR_NAMES.get(csr[0].arraySegmentsType, "?") if csr else "",
        indices_type=_VECTOR_NAMES.get(csr[0].arrayIndicesType, "?") if csr else "",
        dense_bytes=int(np.prod(t.shape)) * item, values_bytes=len(_buffer_bytes(model, t)),
        segments_bytes=seg_bytes, indices_bytes=ind_bytes,
        metadata_bytes=_packed_size(s) - seg_bytes - ind_bytes))
  return SparseSizeReport(file_bytes=len(bytes(sparse_bytes)), tensors=tuple(out))
