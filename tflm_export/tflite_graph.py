"""Reads what a .tflite flatbuffer holds: operators, the tensors between them, their types and
quantization. Conversion checks and the model card both ask these questions of the same bytes.

Only the flatbuffer schema is used (no interpreter), so any model, including one TFLM cannot
run, can be inspected.
"""
import dataclasses

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

_OP_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
_TYPE_NAMES = {code: name for name, code in vars(schema.TensorType).items()
               if not name.startswith("_")}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor of the main subgraph."""
  index: int
  name: str
  shape: tuple
  dtype: str  # schema name: "INT8", "INT16", "INT32", "FLOAT32", ...
  is_constant: bool  # has data in a buffer (weights, biases)
  is_variable: bool  # persistent state (the LSTM's h and c)
  scales: tuple  # one per tensor, or one per channel; () when not quantized
  zero_points: tuple
  quantized_dimension: int
  is_sparse: bool = False  # stored in TFLite's sparse encoding (SparsityParameters)

  @property
  def num_elements(self):
    return int(np.prod(self.shape)) if self.shape else 1


@dataclasses.dataclass(frozen=True)
class Operator:
  name: str  # builtin name, or "CUSTOM:<code>"
  inputs: tuple  # Tensor, None for an omitted optional input
  outputs: tuple


@dataclasses.dataclass(frozen=True)
class TfliteGraph:
  """The main subgraph (index 0) and the number of subgraphs in the model."""
  operators: tuple
  tensors: tuple
  inputs: tuple
  outputs: tuple
  num_subgraphs: int

  def op_names(self):
    return [op.name for op in self.operators]

  def activation_tensors(self):
    """Tensors that flow between ops at run time: op inputs and outputs that are not constants.

    Op `intermediates` (the LSTM's calibration placeholders of shape [0]) are not included:
    they only carry quantization parameters and hold no data.
    """
    seen = {}
    for op in self.operators:
      for t in op.inputs + op.outputs:
        if t is not None and not t.is_constant:
          seen[t.index] = t
    for t in self.inputs + self.outputs:
      seen[t.index] = t
    return [seen[i] for i in sorted(seen)]

  def constant_tensors(self):
    """Weights and biases: tensors whose data is stored in the model."""
    return [t for t in self.tensors if t.is_constant]


def _tensor(index, t, buffers):
  q = t.quantization
  scales = tuple(float(s) for s in q.scale) if q is not None and q.scale is not None else ()
  zero_points = (tuple(int(z) for z in q.zeroPoint)
                 if q is not None and q.zeroPoint is not None else ())
  buffer = buffers[t.buffer] if t.buffer < len(buffers) else None
  has_data = buffer is not None and buffer.data is not None and len(buffer.data) > 0
  # Newer converters store large constants outside the flatbuffer table (offset/size).
  has_data = has_data or (buffer is not None and getattr(buffer, "size", 0) > 0)
  return Tensor(index=index, name=t.name.decode("utf-8", "replace") if t.name else "",
                shape=tuple(int(d) for d in t.shape) if t.shape is not None else (),
                dtype=_TYPE_NAMES.get(t.type, str(t.type)), is_constant=has_data,
                is_variable=bool(t.isVariable), scales=scales, zero_points=zero_points,
                quantized_dimension=int(q.quantizedDimension) if q is not None else 0,
                is_sparse=t.sparsity is not None)


def _op_name(opcode):
  code = max(opcode.builtinCode, opcode.deprecatedBuiltinCode)
  name = _OP_NAMES.get(code, f"BUILTIN_{code}")
  if name == "CUSTOM":
    custom = opcode.customCode.decode() if opcode.customCode else "?"
    return f"CUSTOM:{custom}"
  return name


def read_graph(tflite_bytes):
  """Parses `.tflite` bytes into a `TfliteGraph` of its main subgraph."""
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0))
  graph = model.subgraphs[0]
  buffers = model.buffers or []
  tensors = tuple(_tensor(i, t, buffers) for i, t in enumerate(graph.tensors))

  def pick(indices):
    if indices is None:
      return ()
    return tuple(tensors[int(i)] if int(i) >= 0 else None for i in indices)

  operators = tuple(
      Operator(name=_op_name(model.operatorCodes[op.opcodeIndex]), inputs=pick(op.inputs),
               outputs=pick(op.outputs)) for op in (graph.operators or []))
  return TfliteGraph(operators=operators, tensors=tensors, inputs=pick(graph.inputs),
                     outputs=pick(graph.outputs), num_subgraphs=len(model.subgraphs))


def fused_lstm_cell_clips(tflite_bytes):
  """The `cell_clip` of each UNIDIRECTIONAL_SEQUENCE_LSTM of the main subgraph, in op order
  (0.0 means no clip): TFLite and TFLM clip the cell state to it at every step."""
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0))
  return tuple(float(op.builtinOptions.cellClip)
               for op in (model.subgraphs[0].operators or [])
               if _op_name(model.operatorCodes[op.opcodeIndex]) == "UNIDIRECTIONAL_SEQUENCE_LSTM")


def constant_bytes(tflite_bytes):
  """{tensor index: the raw bytes of its buffer} for every constant of the main subgraph,
  whether stored in the flatbuffer table or after it (offset/size)."""
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0))
  buffers = model.buffers or []
  data = {}
  for index, t in enumerate(model.subgraphs[0].tensors):
    buffer = buffers[t.buffer] if t.buffer < len(buffers) else None
    if buffer is None:
      continue
    if buffer.data is not None and len(buffer.data):
      data[index] = bytes(bytearray(buffer.data))
    elif getattr(buffer, "offset", 0) > 1 and getattr(buffer, "size", 0):
      data[index] = bytes(tflite_bytes[buffer.offset:buffer.offset + buffer.size])
  return data
