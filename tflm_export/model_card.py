"""The model card: sizes, speed and memory of an exported model, and its deployment checks.

Every number comes from an artifact that exists (the `.tflite` file on disk, the TFLM
interpreter that ran it, Vela's summary), never from a formula over the architecture. The four
deployment constraints of the method are each reported as "pass", "fail" or "not checked"
with the numbers they were judged on.
"""
import os

import numpy as np

from tf_tinyse import fileio
from tflm_export import convert
from tflm_export import tflite_graph

PASS, FAIL, NOT_CHECKED = "pass", "fail", "not checked"

# Ops that combine future with past frames; a streaming model must contain none of them.
LOOK_AHEAD_OPS = frozenset({"BIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_RNN",
                            "REVERSE_V2", "REVERSE_SEQUENCE"})


def _status(ok):
  return PASS if ok else FAIL


def count_parameters(keras_model):
  """(all, non-zero) trainable parameters of a Keras model."""
  total = nonzero = 0
  for w in keras_model.trainable_weights:
    values = np.asarray(w.numpy())
    total += values.size
    nonzero += int(np.count_nonzero(values))
  return total, nonzero


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


def check_latency(vela_report, hop_ms):
  if vela_report is None:
    return {"status": NOT_CHECKED, "reason": "no Vela estimate for the target"}
  ms = 1000.0 * vela_report.inference_time_s
  return {"status": _status(ms <= hop_ms), "target": vela_report.accelerator,
          "compute_ms_per_frame": ms, "budget_ms": hop_ms}


def check_memory(flash_bytes, working_bytes, sram_kib, flash_kib):
  """Weights against the flash budget, working memory (TFLM arena) against the SRAM budget."""
  if sram_kib is None and flash_kib is None:
    return {"status": NOT_CHECKED, "reason": "no sram_kib / flash_kib budget given",
            "flash_bytes": flash_bytes, "working_memory_bytes": working_bytes}
  checks = []
  if flash_kib is not None:
    checks.append(flash_bytes <= flash_kib * 1024)
  if sram_kib is not None:
    checks.append(working_bytes is not None and working_bytes <= sram_kib * 1024)
  return {"status": _status(all(checks)), "flash_bytes": flash_bytes,
          "flash_budget_bytes": None if flash_kib is None else int(flash_kib * 1024),
          "working_memory_bytes": working_bytes,
          "sram_budget_bytes": None if sram_kib is None else int(sram_kib * 1024)}


def build_model_card(*, keras_model, tflite_path, feature_config, tflm_model=None,
                     vela_report=None, sram_kib=None, flash_kib=None, output_path=None):
  """Collects the model card of an exported model; writes it as JSON when `output_path` is set.

  Args:
    keras_model: the float (or trained) Keras model the `.tflite` was converted from; its
      trainable weights give the parameter counts.
    tflite_path: the exported int8 `.tflite` file (its size on disk is reported).
    feature_config: `tf_tinyse.features.FeatureConfig` (frame, hop, sample rate) the model
      runs at; the hop is the per-frame compute budget.
    tflm_model: a `tflm_runner.TflmModel` of the same bytes that has run some frames (for
      arena bytes and host latency); None leaves those fields None.
    vela_report: a `vela.VelaReport` for the target; None marks the latency check and the
      Vela fields "not checked" / None.
    sram_kib, flash_kib: the device budgets; None for each budget not to check.
    output_path: where to write the card (JSON, atomically), or None.

  Returns:
    The card as a dict (what is written).
  """
  tflite_path = os.fspath(tflite_path)
  with open(tflite_path, "rb") as f:
    graph = tflite_graph.read_graph(f.read())
  tflite_bytes = os.path.getsize(tflite_path)
  params, nonzero = count_parameters(keras_model)
  hop_ms = 1000.0 * feature_config.hop_length / feature_config.sample_rate
  arena = tflm_model.arena_used_bytes if tflm_model is not None else None
  host_s = tflm_model.mean_invoke_seconds if tflm_model is not None else None
  # With Vela, the device holds the compiled model (weights encoded for the NPU).
  flash_needed = vela_report.flash_bytes if vela_report is not None else tflite_bytes
  working = arena if arena is not None else (
      vela_report.sram_bytes if vela_report is not None else None)
  card = {
      "tflite_path": tflite_path,
      "parameters": params,
      "nonzero_parameters": nonzero,
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
          "npu_op_fraction": vela_report.npu_op_fraction,
          "vela_tflite_path": vela_report.vela_tflite_path,
      },
      "algorithmic_latency_ms": feature_config.algorithmic_latency_ms,
      "hop_ms": hop_ms,
      "constraints": {
          "causal": check_causal(graph),
          "integer_only": check_integer_only(graph),
          "latency_per_frame": check_latency(vela_report, hop_ms),
          "memory": check_memory(flash_needed, working, sram_kib, flash_kib),
      },
  }
  if output_path is not None:
    fileio.write_json_atomic(output_path, card)
  return card
