"""The model card: sizes, speed and memory of an exported model, and its deployment checks.

Every number comes from an artifact that exists (the `.tflite` file on disk, the TFLM
interpreter that ran it, Vela's summary and its `model_vela.tflite`, the front-end run hop by
hop), never from a formula over the architecture; the only counted (not measured) number is
the front-end's operations per hop, from the actual sizes (`frontend_cost.HOW_COUNTED`). The
four deployment constraints of the method are each reported as "pass", "fail" or "not checked"
with the numbers they were judged on and where each number comes from.

The checks judge one deployment, never a mix: with a Vela report the Ethos-U (TFLM on the
Cortex-M driving the NPU with `model_vela.tflite`); without one TFLM alone on a Cortex-M
(`model.tflite`, no NPU).
"""
import dataclasses
import os

import numpy as np

from tf_tinyse import fileio
from tf_tinyse import model as model_lib
from tf_tinyse.errors import UserError
from tflm_export import convert
from tflm_export import frontend as frontend_lib
from tflm_export import frontend_cost
from tflm_export import tflite_graph

PASS, FAIL, NOT_CHECKED = "pass", "fail", "not checked"

# Ops that combine future with past frames; a streaming model must contain none of them.
LOOK_AHEAD_OPS = frozenset({"BIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_RNN",
                            "REVERSE_V2", "REVERSE_SEQUENCE"})
ETHOS_U_OP = "CUSTOM:ethos-u"  # What Vela puts in place of the ops the NPU runs.

# The weighted ops of the int8 graph and the input positions of their biases (TFLite's
# fully_connected.cc, lstm_shared.h); every other constant input but 0 is a weight (LSTM:
# 1-8 gate matrices, 9-11 peepholes, 16 projection, 20-23 layer norm).
WEIGHTED_OPS = {"FULLY_CONNECTED": frozenset({2}),
                convert.FUSED_LSTM: frozenset({12, 13, 14, 15, 17})}
DEPLOYED_PARAMETERS = (
    "elements of the constant weight and bias tensors of the FULLY_CONNECTED and "
    "UNIDIRECTIONAL_SEQUENCE_LSTM ops of the int8 .tflite, read from its buffers; non-zero: "
    "stored integer code != the tensor's zero point (0 for the symmetric int8 weights and the "
    "int32 biases). The front-end's QEQ runs on the CPU in float: frontend_parameters")
KERAS_PARAMETERS = (
    "Keras model, for comparison only (tf_tinyse.model.parameter_counts): its forward "
    "weights, QEQ included, non-zero in float (a weight that rounds to int8 code 0 counts), "
    "biases the converter drops (all zero) included; not the deployed model")
FRONTEND_PARAMETERS = ("QEQ gain and bias of the front-end (model_frontend.json), float32, "
                       "applied on the CPU before the int8 model; not in the .tflite")
DEPLOYMENT_ETHOS_U = "{accelerator}: TFLM on the Cortex-M runs model_vela.tflite on the NPU"
DEPLOYMENT_CORTEX_M = "TFLM on a Cortex-M without NPU runs the .tflite"


def _status(ok):
  return PASS if ok else FAIL


def _nonzero_codes(codes, tensor):
  """Elements of `codes` (the tensor's shape) whose stored code is not its zero point."""
  zero_points = np.asarray(tensor.zero_points, np.int64)
  if zero_points.size <= 1:
    return int(np.count_nonzero(codes != (zero_points.item() if zero_points.size else 0)))
  shape = [1] * codes.ndim
  shape[tensor.quantized_dimension] = zero_points.size
  return int(np.count_nonzero(codes != zero_points.reshape(shape)))


def deployed_parameter_counts(tflite_bytes):
  """Parameters of the int8 model as deployed (`DEPLOYED_PARAMETERS`), from its buffers.

  Returns {"parameters", "nonzero_parameters", "weights", "nonzero_weights", "biases",
  "nonzero_biases": totals; "ops": the same per weighted op, in graph order; "counted":
  DEPLOYED_PARAMETERS}. A tensor two ops share counts once.

  Raises:
    UserError: a weight's buffer does not hold its shape's elements (a sparse-encoded file:
      count its decoded twin).
  """
  graph = tflite_graph.read_graph(tflite_bytes)
  constants = tflite_graph.constant_bytes(tflite_bytes)
  seen, ops = set(), []
  for op in graph.operators:
    if op.name not in WEIGHTED_OPS:
      continue
    counts = {"weights": 0, "nonzero_weights": 0, "biases": 0, "nonzero_biases": 0}
    for position, tensor in enumerate(op.inputs):
      # Input 0 is the activation; a tensor without data is not a constant (LSTM state).
      if position == 0 or tensor is None or tensor.index in seen or tensor.index not in constants:
        continue
      seen.add(tensor.index)
      data = constants[tensor.index]
      dtype = np.dtype(tensor.dtype.lower()).newbyteorder("<")
      if tensor.is_sparse or len(data) != tensor.num_elements * dtype.itemsize:
        raise UserError(f"tensor '{tensor.name}' stores {len(data)} bytes for shape "
                        f"{list(tensor.shape)} of {dtype.name} (sparse-encoded?): count the "
                        "dense .tflite (tflm_export.sparse_tflite.decode)")
      codes = np.frombuffer(data, dtype)
      kind = "biases" if position in WEIGHTED_OPS[op.name] else "weights"
      counts[kind] += codes.size
      counts[f"nonzero_{kind}"] += _nonzero_codes(codes.reshape(tensor.shape), tensor)
    ops.append({"op": op.name, "output": op.outputs[0].name, **counts})
  totals = {key: sum(o[key] for o in ops)
            for key in ("weights", "nonzero_weights", "biases", "nonzero_biases")}
  return {"parameters": totals["weights"] + totals["biases"],
          "nonzero_parameters": totals["nonzero_weights"] + totals["nonzero_biases"],
          **totals, "ops": ops, "counted": DEPLOYED_PARAMETERS}


def keras_parameter_counts(keras_model):
  """The Keras side, labelled as such (`KERAS_PARAMETERS`); None without a model."""
  if keras_model is None:
    return None
  total, nonzero = model_lib.parameter_counts(keras_model)
  return {"parameters": total, "nonzero_parameters": nonzero, "counted": KERAS_PARAMETERS}


def frontend_parameter_counts(fe):
  """QEQ's gain and bias of the front-end `fe` (`FRONTEND_PARAMETERS`); zeros without QEQ."""
  gain = 0 if fe.qeq_gain is None else int(np.size(fe.qeq_gain))
  bias = 0 if fe.qeq_bias is None else int(np.size(fe.qeq_bias))
  nonzero = sum(int(np.count_nonzero(v)) for v in (fe.qeq_gain, fe.qeq_bias) if v is not None)
  return {"qeq_gain": gain, "qeq_bias": bias, "total": gain + bias, "nonzero": nonzero,
          "counted": FRONTEND_PARAMETERS}


def cpu_ops_of_vela_model(vela_tflite_path):
  """Names of the ops of Vela's output model that are not the NPU's ethos-u custom op (they
  run on the CPU), or None when the file is missing."""
  if not vela_tflite_path or not os.path.isfile(vela_tflite_path):
    return None
  with open(vela_tflite_path, "rb") as f:
    graph = tflite_graph.read_graph(f.read())
  return [name for name in graph.op_names() if name != ETHOS_U_OP]


def check_causal(graph):
  """Frame in, frame out, and no op that looks across time in both directions."""
  look_ahead = sorted({n for n in graph.op_names() if n in LOOK_AHEAD_OPS})
  frames_in = graph.inputs[0].shape[1] if len(graph.inputs[0].shape) == 3 else None
  ok = not look_ahead and frames_in == 1
  return {"status": _status(ok), "frames_per_invoke": frames_in, "look_ahead_ops": look_ahead}


def check_integer_only(graph):
  """Every op in the TFLM integer allow-list, every tensor between ops int8/int16/int32, and
  every int8 weight matrix symmetric (zero point 0)."""
  non_integer_ops = sorted({n for n in graph.op_names() if n not in convert.TFLM_INTEGER_OPS})
  float_tensors = [t.name for t in graph.activation_tensors()
                   if t.dtype not in convert.INTEGER_TYPES]
  weight_inputs = {}
  for op in graph.operators:
    if op.name in (convert.FUSED_LSTM, "FULLY_CONNECTED"):
      for t in op.inputs:
        if t is not None and t.is_constant and t.dtype == "INT8":
          weight_inputs[t.index] = t
  asymmetric = [t.name for t in weight_inputs.values() if any(z != 0 for z in t.zero_points)]
  activation_types = sorted({t.dtype for t in graph.activation_tensors()})
  ok = not non_integer_ops and not float_tensors and not asymmetric
  return {"status": _status(ok), "non_integer_ops": non_integer_ops,
          "float_tensors": float_tensors, "asymmetric_weights": asymmetric,
          "activation_types": activation_types}


def check_latency(vela_report, hop_ms, cpu_ops_in_file=None, frontend_ops=None):
  """Vela's estimate of one frame of the int8 network on the NPU against the hop.

  Judged only when all of the network runs on the NPU: an op Vela leaves on the CPU (its
  printout's `cpu_ops`, or `cpu_ops_in_file`: ops of model_vela.tflite other than the ethos-u
  op) is not in Vela's time, so the check is then "not checked". The CPU front-end of each hop
  (`frontend_ops`, `ops_per_hop`) is never in it either: the check says so, and the card
  reports that cost beside it (`frontend_cost`).
  """
  excluded = ("the CPU front-end of each hop (STFT, mel, QEQ, quantize, mask, iSTFT: "
              "frontend_cost), which has no device estimate")
  if frontend_ops is not None:
    excluded += (f"; counted: {frontend_ops['multiplies']:,} multiplies and "
                 f"{frontend_ops['adds']:,} adds per hop")
  if vela_report is None:
    return {"status": NOT_CHECKED, "deployment": DEPLOYMENT_CORTEX_M, "budget_ms": hop_ms,
            "reason": "no Vela estimate (no NPU target): no device time of the int8 network; "
                      "tflm.host_ms_per_frame is this host, not the device",
            "not_included": excluded}
  ms = 1000.0 * vela_report.inference_time_s
  cpu_ops = {"vela_summary": vela_report.cpu_ops, "in_vela_tflite": cpu_ops_in_file}
  result = {"deployment": DEPLOYMENT_ETHOS_U.format(accelerator=vela_report.accelerator),
            "target": vela_report.accelerator, "compute_ms_per_frame": ms, "budget_ms": hop_ms,
            "checked": "Vela's inference_time of one frame (cycles_total at the system "
                       "config's clock, summary CSV) <= hop_ms",
            "cpu_ops": cpu_ops, "not_included": excluded}
  if vela_report.cpu_ops or cpu_ops_in_file:
    on_cpu = vela_report.cpu_ops or len(cpu_ops_in_file)
    names = f" ({', '.join(sorted(set(cpu_ops_in_file)))})" if cpu_ops_in_file else ""
    return {"status": NOT_CHECKED, **result,
            "reason": f"Vela leaves {on_cpu} op(s) on the CPU{names}; their time is not in "
                      "Vela's estimate"}
  return {"status": _status(ms <= hop_ms), **result}


def _budget_check(value, budget_kib, source, what, missing):
  """One memory figure against its budget: pass / fail / not checked, with its source."""
  budget = None if budget_kib is None else int(budget_kib * 1024)
  check = {"bytes": value, "budget_bytes": budget, "source": source}
  if budget is None:
    return {"status": NOT_CHECKED, **check, "reason": f"no --{what}_kib budget given"}
  if value is None:
    return {"status": NOT_CHECKED, **check, "reason": missing}
  return {"status": _status(value <= budget), **check}


def check_memory(*, flash_bytes, flash_source, sram_bytes, sram_source, sram_missing,
                 deployment, sram_kib, flash_kib):
  """The deployment's flash and SRAM figures against `--flash_kib` / `--sram_kib`.

  Each budget is its own check ("flash", "sram"); the memory constraint fails when one
  fails, passes when every given budget was checked and passed, and is "not checked" when no
  budget was given or a budget's figure was not measured (never another number in its place).
  """
  flash = _budget_check(flash_bytes, flash_kib, flash_source, "flash",
                        "the model file to flash is missing")
  sram = _budget_check(sram_bytes, sram_kib, sram_source, "sram", sram_missing)
  budgeted = [c["status"] for c, kib in ((flash, flash_kib), (sram, sram_kib))
              if kib is not None]
  if FAIL in budgeted:
    status = FAIL
  elif budgeted and all(s == PASS for s in budgeted):
    status = PASS
  else:
    status = NOT_CHECKED
  result = {"status": status, "deployment": deployment, "flash": flash, "sram": sram}
  if not budgeted:
    result["reason"] = "no --sram_kib / --flash_kib budget given"
  return result


def card_path(path, card_dir):
  """`path` as a card in `card_dir` stores it: relative to that folder (a file of the export
  folder is just its name), so a copied or zipped export folder stays valid. Absolute where
  no relative path exists (another drive on Windows); as given when `card_dir` is None."""
  if path is None or card_dir is None:
    return path
  try:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(card_dir))
  except ValueError:
    return os.path.abspath(path)


def resolve_path(card_file, stored):
  """The file a path field of the card `card_file` names (relative to the card's folder)."""
  return os.path.join(os.path.dirname(os.path.abspath(card_file)), stored)


def _deployment_memory(tflite_path, tflite_bytes, arena, vela_report, vela_tflite_bytes):
  """(flash bytes, its source, SRAM bytes, its source, why SRAM may be missing, deployment)."""
  if vela_report is not None:
    return (vela_tflite_bytes,
            "size of model_vela.tflite on disk (Vela's output: command stream, encoded "
            "weights, the rest of the graph; what is flashed)",
            vela_report.sram_bytes,
            "Vela summary CSV sram_memory_used (the NPU's scratch and feature maps; TFLM's "
            "own structures and the LSTM state tensors on the Cortex-M are not in it)",
            "Vela's summary has no SRAM figure",
            DEPLOYMENT_ETHOS_U.format(accelerator=vela_report.accelerator))
  return (tflite_bytes, f"size of {os.path.basename(tflite_path)} on disk", arena,
          "tflm.arena_used_bytes (arena TFLM allocated for the .tflite, from its allocation "
          "printout)",
          "TFLM's arena was not measured (no TFLM run, or its allocation printout had no "
          "total): SRAM not checked", DEPLOYMENT_CORTEX_M)


def frontend_cost_section(fe, graph, timing_hops=200):
  """The card's `frontend_cost`: the CPU front-end of one hop around the int8 model `graph`,
  `ops_per_hop` counted from the sizes and `host_ms_per_hop` timed on this host
  (`tflm_export.frontend_cost`); `timing_hops` 0 leaves the host time None."""
  quantization = []
  for t in (graph.inputs[0], graph.outputs[0]):
    dtype = np.dtype(t.dtype.lower())
    quantization.append((t.scales[0], t.zero_points[0], dtype) if t.scales else None)
  hop = frontend_cost.HopFrontend(fe, *quantization)
  return {
      "runs_on": "the device's CPU every hop, outside the int8 model (and outside Vela's "
                 "estimate)",
      "signal_path": ("analysis window, rFFT, |Y|, mel G, compression, QEQ, quantize | int8 "
                      "model | dequantize, mask expansion Gᵀ, mask multiply, irFFT, "
                      "synthesis window, overlap-add"),
      "ops_per_hop": frontend_cost.ops_per_hop(fe.feature, qeq=fe.qeq_gain is not None),
      "host_ms_per_hop": (frontend_cost.host_ms_per_hop(hop, hops=timing_hops)
                          if timing_hops else None),
  }


def build_model_card(*, tflite_path, feature_config, keras_model=None, tflm_model=None,
                     vela_report=None, sram_kib=None, flash_kib=None, output_path=None,
                     card_dir=None, front_end=None, frontend_timing_hops=200):
  """Collects the model card of an exported model; writes it as JSON when `output_path` is set.

  Args:
    tflite_path: the exported int8 `.tflite` file: its size on disk, its graph and the
      parameter counts (`deployed_parameter_counts`) come from it.
    feature_config: `tf_tinyse.features.FeatureConfig` (frame, hop, sample rate) the model
      runs at; the hop is the per-frame compute budget.
    keras_model: the Keras model the `.tflite` was converted from, or None; only for the
      `keras_parameters` section (labelled: not the deployed model) and, without `front_end`,
      its QEQ.
    tflm_model: a `tflm_runner.TflmModel` of the same bytes that has run some frames (for
      arena bytes and host latency); None leaves those fields None.
    vela_report: a `vela.VelaReport` for the target: the card then judges the Ethos-U
      deployment (Vela's SRAM, the size of its `model_vela.tflite`, Vela's time). None: TFLM
      on a Cortex-M without NPU (the `.tflite`'s size, TFLM's arena; latency not checked).
    sram_kib, flash_kib: the device budgets; None for each budget not to check.
    output_path: where to write the card (JSON, atomically), or None.
    card_dir: the folder the card will lie in; `tflite_path` and `vela.vela_tflite_path` are
      stored relative to it (`card_path`). None: the folder of `output_path`, or, without
      one, the paths as given.
    front_end: the `tflm_export.frontend.Frontend` exported beside the model (QEQ, feature
      settings); None: taken from `keras_model`'s QEQ layer, or none without a model.
    frontend_timing_hops: hops the front-end is timed over on this host; 0: not timed.

  Returns:
    The card as a dict (what is written).
  """
  tflite_path = os.fspath(tflite_path)
  if card_dir is None and output_path is not None:
    card_dir = os.path.dirname(os.path.abspath(output_path))
  with open(tflite_path, "rb") as f:
    model_bytes = f.read()
  graph = tflite_graph.read_graph(model_bytes)
  tflite_bytes = os.path.getsize(tflite_path)
  deployed = deployed_parameter_counts(model_bytes)
  if front_end is None:
    front_end = (frontend_lib.Frontend.from_model(keras_model, feature_config)
                 if keras_model is not None else frontend_lib.Frontend(feature_config))
  hop_ms = 1000.0 * feature_config.hop_length / feature_config.sample_rate
  arena = tflm_model.arena_used_bytes if tflm_model is not None else None
  host_s = tflm_model.mean_invoke_seconds if tflm_model is not None else None
  vela_path = vela_report.vela_tflite_path if vela_report is not None else None
  vela_bytes = (os.path.getsize(vela_path) if vela_path and os.path.isfile(vela_path)
                else None)
  cpu_ops_in_file = cpu_ops_of_vela_model(vela_path)
  flash, flash_source, sram, sram_source, sram_missing, deployment = _deployment_memory(
      tflite_path, tflite_bytes, arena, vela_report, vela_bytes)
  fe_cost = frontend_cost_section(front_end, graph, frontend_timing_hops)
  card = {
      "tflite_path": card_path(tflite_path, card_dir),
      "parameters": deployed["parameters"],
      "nonzero_parameters": deployed["nonzero_parameters"],
      "parameter_counts": {k: v for k, v in deployed.items()
                           if k not in ("parameters", "nonzero_parameters")},
      "frontend_parameters": frontend_parameter_counts(front_end),
      "keras_parameters": keras_parameter_counts(keras_model),
      "tflite_bytes": tflite_bytes,
      "ops": graph.op_names(),
      "input": {"shape": list(graph.inputs[0].shape), "dtype": graph.inputs[0].dtype,
                "scale": graph.inputs[0].scales[0], "zero_point": graph.inputs[0].zero_points[0]},
      "output": {"shape": list(graph.outputs[0].shape), "dtype": graph.outputs[0].dtype,
                 "scale": graph.outputs[0].scales[0],
                 "zero_point": graph.outputs[0].zero_points[0]},
      "tflm": {"arena_used_bytes": arena,
               "host_ms_per_frame": None if host_s is None else 1000.0 * host_s},
      "vela": None if vela_report is None else {
          "accelerator": vela_report.accelerator,
          "system_config": vela_report.system_config,
          "memory_mode": vela_report.memory_mode,
          "encoded_weight_bytes": vela_report.encoded_weight_bytes,
          "cycles_npu": vela_report.cycles_npu,
          "cycles_total": vela_report.cycles_total,
          "inference_ms_per_frame": 1000.0 * vela_report.inference_time_s,
          "sram_bytes": vela_report.sram_bytes,
          "flash_bytes": vela_report.flash_bytes,
          "vela_tflite_bytes": vela_bytes,
          "npu_ops": vela_report.npu_ops,
          "cpu_ops": vela_report.cpu_ops,
          "cpu_ops_in_vela_tflite": cpu_ops_in_file,
          "npu_op_fraction": vela_report.npu_op_fraction,
          "vela_tflite_path": card_path(vela_path, card_dir),
      },
      "frontend_cost": fe_cost,
      "algorithmic_latency_ms": feature_config.algorithmic_latency_ms,
      "hop_ms": hop_ms,
      "constraints": {
          "causal": check_causal(graph),
          "integer_only": check_integer_only(graph),
          "latency_per_frame": check_latency(vela_report, hop_ms, cpu_ops_in_file,
                                             fe_cost["ops_per_hop"]),
          "memory": check_memory(flash_bytes=flash, flash_source=flash_source,
                                 sram_bytes=sram, sram_source=sram_source,
                                 sram_missing=sram_missing, deployment=deployment,
                                 sram_kib=sram_kib, flash_kib=flash_kib),
      },
  }
  if output_path is not None:
    fileio.write_json_atomic(output_path, card)
  return card


# Which runtime runs which file of a pruned export (`tflm_export.sparse_tflite`'s findings,
# measured with TF 2.21 and the installed tflite-micro).
RUNTIMES = {
    "tflite": "TFLite Micro (and Vela, whose compiled model_vela.tflite the Ethos-U runs): "
              "the dense int8 file, pruned weights stored as zeros",
    "sparse_tflite": "storage / transport format only (flash image, download): no runtime "
                     "runs it correctly (TFLite Micro ignores the sparsity tables and computes "
                     "wrong values; tf.lite.Interpreter's fused LSTM reads the packed weights "
                     "as dense, wrong); tflm_export.sparse_tflite.decode densifies it, on the "
                     "host or at boot, back into the .tflite byte for byte",
}
UNMASKED_REFERENCE = "built from the unmasked weights of model_dir"
PAPER_ESTIMATE = ("the paper's count: non-zero kernel weights x 1 byte (int8), no indices, "
                  "biases or graph; for comparison only")


@dataclasses.dataclass(frozen=True)
class DenseReference:
  """The dense int8 model a pruned export's speed is compared with, as measured.

  description: `UNMASKED_REFERENCE` or the `--reference_tflite` it came from; path: that file
  (None when built); tflite_bytes: the dense model; vela_report: Vela for the same
  accelerator; host_ms_per_frame: TFLM on this host, timed with the pruned model.
  """
  description: str
  path: str
  tflite_bytes: bytes
  vela_report: object
  host_ms_per_frame: float


def _ratio(reference, value):
  if reference is None or value is None:
    return None
  return reference / value if value else None


def _vela_speed(report):
  if report is None:
    return None
  return {"cycles_npu": report.cycles_npu, "cycles_total": report.cycles_total,
          "inference_ms_per_frame": 1000.0 * report.inference_time_s}


def _macs(report):
  d = {m: report.total(m) for m in ("dense", "block", "unit", "nonzero")}
  d["block_size"] = report.block_size
  return d


def build_sparsity_section(*, config, keras_model, tflite_path, sparse_tflite_path=None,
                           vela_report=None, host_ms_per_frame=None, timing=None, target=None,
                           reference=None, no_reference_reason=None, card_dir=None):
  """The card's `sparsity` section of a pruned model (`config.sparsity_structure` set).

  Args:
    config: the `tf_tinyse.model.ModelConfig` (structure, block size, strategy).
    keras_model: the trained model (`tf_tinyse.sparsity.measure`: achieved sparsity).
    tflite_path: the dense int8 `.tflite` of the export (the file TFLM runs).
    sparse_tflite_path: its `sparse_tflite.encode`d twin, or None (unit pruning: the export
      is shrunk instead).
    vela_report: Vela's report of `tflite_path`, or None.
    host_ms_per_frame: TFLM on this host, median ms per frame (`timing` says how measured).
    target: the target sparsity of the run (`sparsity.json`), or None.
    reference: a `DenseReference`, or None (speedups None, `no_reference_reason` says why).
    card_dir: the folder of the card (paths stored relative to it).
  """
  from tf_tinyse import sparsity  # pylint: disable=g-import-not-at-top
  from tflm_export import macs  # pylint: disable=g-import-not-at-top
  from tflm_export import sparse_tflite  # pylint: disable=g-import-not-at-top
  measured = sparsity.measure(keras_model)
  with open(tflite_path, "rb") as f:
    tflite_bytes = f.read()
  mac_report = macs.count_macs(tflite_bytes, config.block_size)
  sparse = None
  if sparse_tflite_path is not None:
    with open(sparse_tflite_path, "rb") as f:
      size_report = sparse_tflite.sparse_size_report(f.read())
    totals = size_report.totals()
    stored = totals["values_bytes"] + totals["index_bytes"] + totals["metadata_bytes"]
    sparse = {
        "path": card_path(sparse_tflite_path, card_dir),
        "file_bytes": os.path.getsize(sparse_tflite_path),
        "block_size": config.block_size if config.sparsity_structure == "block" else 1,
        "encoded_tensors": len(size_report.tensors),
        "dense_weight_bytes": totals["dense_bytes"],
        "values_bytes": totals["values_bytes"],
        "segments_bytes": totals["segments_bytes"],
        "indices_bytes": totals["indices_bytes"],
        "index_bytes": totals["index_bytes"],
        "metadata_bytes": totals["metadata_bytes"],
        "other_bytes": os.path.getsize(sparse_tflite_path) - stored,
        "decodes_to": card_path(tflite_path, card_dir),
    }
  model_macs = _macs(mac_report)
  model_vela = _vela_speed(vela_report)
  speed = {"macs_per_frame": model_macs, "vela": model_vela,
           "tflm_host_ms_per_frame": host_ms_per_frame, "tflm_timing": timing}
  if reference is not None:
    ref_macs = _macs(macs.count_macs(reference.tflite_bytes, config.block_size))
    ref_vela = _vela_speed(reference.vela_report)
    speed["reference"] = {
        "description": reference.description,
        "path": card_path(reference.path, card_dir),
        "tflite_bytes": len(reference.tflite_bytes),
        "macs_per_frame": ref_macs, "vela": ref_vela,
        "tflm_host_ms_per_frame": reference.host_ms_per_frame,
    }
    base = ref_macs["dense"]
    speed["speedup_over_reference"] = {
        "macs_dense": _ratio(base, model_macs["dense"]),
        "macs_block": _ratio(base, model_macs["block"]),
        "macs_unit": _ratio(base, model_macs["unit"]),
        "vela_cycles_npu": _ratio(ref_vela and ref_vela["cycles_npu"],
                                  model_vela and model_vela["cycles_npu"]),
        "vela_cycles_total": _ratio(ref_vela and ref_vela["cycles_total"],
                                    model_vela and model_vela["cycles_total"]),
        "vela_inference_time": _ratio(ref_vela and ref_vela["inference_ms_per_frame"],
                                      model_vela and model_vela["inference_ms_per_frame"]),
        "tflm_host": _ratio(reference.host_ms_per_frame, host_ms_per_frame),
    }
  else:
    speed["reference"] = None
    speed["speedup_over_reference"] = None
    speed["no_reference_reason"] = no_reference_reason
  return {
      "structure": config.sparsity_structure,
      "block_size": config.block_size if config.sparsity_structure == "block" else None,
      "strategy": config.pruning,
      "target": target,
      "achieved": measured["overall"],
      "kernel_weights": measured["kernel_weights"],
      "nonzero_kernel_weights": measured["nonzero_weights"],
      "nonzero_parameters": deployed_parameter_counts(tflite_bytes)["nonzero_parameters"],
      "layers": {name: {"sparsity": layer["sparsity"], "weights": layer["weights"],
                        "zeros": layer["zeros"], "threshold": layer["threshold"]}
                 for name, layer in measured["layers"].items()},
      "bytes": {
          "tflite": os.path.getsize(tflite_path),
          "sparse_tflite": sparse,
          "vela_flash": None if vela_report is None else vela_report.flash_bytes,
          "vela_encoded_weights": (None if vela_report is None
                                   else vela_report.encoded_weight_bytes),
          "paper_estimate": measured["nonzero_weights"],
          "paper_estimate_note": PAPER_ESTIMATE,
      },
      "runtimes": {card_path(tflite_path, card_dir): RUNTIMES["tflite"],
                   **({} if sparse is None else {sparse["path"]: RUNTIMES["sparse_tflite"]})},
      "speed": speed,
  }
