"""Multiply-accumulates per frame (one `invoke()`) of a TinyLSTM-style int8 `.tflite`.

MACs here are the weight multiply-accumulates only: for each weight matrix [out, in] of a
FULLY_CONNECTED op (input 1) and of a fused UNIDIRECTIONAL_SEQUENCE_LSTM (inputs 1..8: four
input matrices [units, in], four recurrent matrices [units, units]), one MAC per weight the
kernel multiplies. The LSTM's elementwise work (gate nonlinearities, cell update, peepholes,
layer norm), biases, TANH/LOGISTIC and requantization are NOT counted: they are O(units) per
frame, against O(units × inputs) for the matrices.

Three kernel models (plus the ideal unstructured count):
- `dense`: every weight, zero or not.
- `block`: 1×B block skipping (B = 8 by default) along the input dimension (dim 1 of [out, in],
  the MAC direction): a group of B consecutive inputs of one row is skipped when all B weights
  are zero; a kept block costs B MACs (a trailing partial block, when B does not divide `in`,
  costs its width).
- `unit`: the model physically shrunk by removing units. An LSTM unit k is removed when its
  rows in all 8 matrices are zero (nothing flows into it) AND its output is read by nobody:
  column k of the 4 recurrent matrices and column k of the next layer's input matrices are
  zero. A hidden Dense unit likewise (its row, and its column in the next layer). Removing a
  unit removes its rows and its columns; the remaining matrices count densely. The output
  layer (the last weighted op) and the model inputs are never removed.
- `nonzero`: one MAC per non-zero weight (an ideal unstructured-sparse kernel).

The weighted ops must form a chain (each reads, through weight-free ops such as TANH, RESHAPE,
MUL/ADD with constants, the output of the previous one), which is the mask network's form.
A sparse file (from `sparse_tflite.encode`) is densified first.
"""
import dataclasses

import numpy as np

from tflm_export import sparse_tflite

_FC = sparse_tflite._FULLY_CONNECTED  # pylint: disable=protected-access
_LSTM = sparse_tflite._LSTM  # pylint: disable=protected-access
_LSTM_INPUT = (1, 2, 3, 4)
_LSTM_RECURRENT = (5, 6, 7, 8)


@dataclasses.dataclass(frozen=True)
class LayerMacs:
  """MACs of one weighted op per frame under each kernel model."""
  name: str
  op: str  # "LSTM" or "FULLY_CONNECTED"
  units: int
  kept_units: int
  inputs: int
  kept_inputs: int
  dense: int
  block: int
  unit: int
  nonzero: int

  def to_dict(self):
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class MacReport:
  layers: tuple
  block_size: int

  def total(self, model):
    return sum(getattr(layer, model) for layer in self.layers)

  def speedup(self, model):
    """Dense MACs / MACs under `model` ("block", "unit" or "nonzero")."""
    macs = self.total(model)
    return self.total("dense") / macs if macs else float("inf")

  def to_dict(self):
    return {"block_size": self.block_size, "layers": [l.to_dict() for l in self.layers],
            "total": {m: self.total(m) for m in ("dense", "block", "unit", "nonzero")}}


def block_macs(matrix, block_size=8):
  """MACs of a [out, in] matrix when all-zero 1×B blocks along dim 1 are skipped."""
  matrix = np.asarray(matrix)
  rows, cols = matrix.shape
  total = 0
  for start in range(0, cols, block_size):
    part = matrix[:, start:start + block_size]
    total += int(np.any(part != 0, axis=1).sum()) * part.shape[1]
  del rows
  return total


@dataclasses.dataclass
class _Layer:
  name: str
  op: str
  matrices: list  # input matrices [out, in]
  recurrent: list  # recurrent matrices [units, units] (LSTM)
  input_tensor: int
  output_tensor: int


def _matrix(model, tensor_index):
  t = model.subgraphs[0].tensors[tensor_index]
  data = np.frombuffer(sparse_tflite._buffer_bytes(model, t), np.int8)  # pylint: disable=protected-access
  return data.reshape(tuple(int(d) for d in t.shape))


def _layers(model):
  graph = model.subgraphs[0]
  layers = []
  for op in graph.operators:
    code = sparse_tflite.op_code(model, op)
    inputs = [int(i) for i in op.inputs]
    if code == _FC:
      name = (graph.tensors[inputs[1]].name or b"").decode("utf-8", "replace")
      layers.append(_Layer(name, "FULLY_CONNECTED", [_matrix(model, inputs[1])], [], inputs[0],
                           int(op.outputs[0])))
    elif code == _LSTM:
      name = (graph.tensors[int(op.outputs[0])].name or b"").decode("utf-8", "replace")
      layers.append(_Layer(name, "LSTM",
                           [_matrix(model, inputs[p]) for p in _LSTM_INPUT if inputs[p] >= 0],
                           [_matrix(model, inputs[p]) for p in _LSTM_RECURRENT
                            if inputs[p] >= 0], inputs[0], int(op.outputs[0])))
  _check_chain(model, layers)
  return layers


def _check_chain(model, layers):
  """Each weighted op must read (through weight-free ops) the previous one's output."""
  graph = model.subgraphs[0]
  producer = {}
  for op in graph.operators:
    for o in op.outputs:
      producer[int(o)] = op
  constant = {i for i, t in enumerate(graph.tensors)
              if len(sparse_tflite._buffer_bytes(model, t))}  # pylint: disable=protected-access
  for previous, layer in zip(layers, layers[1:]):
    index, hops = layer.input_tensor, 0
    while index != previous.output_tensor:
      op = producer.get(index)
      if op is None or hops > 32:
        raise ValueError(f"layer '{layer.name}' does not read the output of '{previous.name}': "
                         "MAC counting by unit needs a chain of LSTM/Dense layers")
      readers = [int(i) for i in op.inputs if int(i) >= 0 and int(i) not in constant]
      if len(readers) != 1:
        raise ValueError(f"layer '{layer.name}': an op with {len(readers)} non-constant inputs "
                         "sits between it and the previous layer")
      index, hops = readers[0], hops + 1


def count_macs(tflite_bytes, block_size=8):
  """Per-layer and total MACs per frame of an int8 `.tflite`; see the module docstring."""
  model = sparse_tflite._to_object(sparse_tflite.decode(tflite_bytes))  # pylint: disable=protected-access
  layers = _layers(model)
  # Which units of each layer are removed (unit model).
  removed = []
  for k, layer in enumerate(layers):
    out = layer.matrices[0].shape[0]
    if k == len(layers) - 1:
      removed.append(np.zeros(out, bool))
      continue
    no_input = np.all([~np.any(m != 0, axis=1) for m in layer.matrices + layer.recurrent],
                      axis=0)
    nobody_reads = np.all([~np.any(m != 0, axis=0) for m in layers[k + 1].matrices +
                           layer.recurrent], axis=0)
    removed.append(no_input & nobody_reads)
  out = []
  for k, layer in enumerate(layers):
    units = layer.matrices[0].shape[0]
    inputs = layer.matrices[0].shape[1]
    kept_units = int((~removed[k]).sum())
    kept_inputs = int((~removed[k - 1]).sum()) if k > 0 else inputs
    all_m = layer.matrices + layer.recurrent
    unit = len(layer.matrices) * kept_units * kept_inputs + len(layer.recurrent) * kept_units**2
    out.append(LayerMacs(
        name=layer.name, op=layer.op, units=units, kept_units=kept_units, inputs=inputs,
        kept_inputs=kept_inputs, dense=int(sum(m.size for m in all_m)),
        block=int(sum(block_macs(m, block_size) for m in all_m)), unit=int(unit),
        nonzero=int(sum(np.count_nonzero(m) for m in all_m))))
  return MacReport(layers=tuple(out), block_size=block_size)
