"""The model card: sizes, speed and memory of an exported model, and its deployment checks.

Every number comes from an artifact that exists (the `.tflite` file on disk, the TFLM
interpreter that ran it, Vela's summary), never from a formula over the architecture. The four
deployment constraints of the method are each reported as "pass", "fail" or "not checked"
with the numbers they were judged on.
"""
import dataclasses
import os

from tf_tinyse import fileio
from tf_tinyse import model as model_lib
from tflm_export import convert
from tflm_export import tflite_graph

PASS, FAIL, NOT_CHECKED = "pass", "fail", "not checked"

# Ops that combine future with past frames; a streaming model must contain none of them.
LOOK_AHEAD_OPS = frozenset({"BIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_RNN",
                            "REVERSE_V2", "REVERSE_SEQUENCE"})


def _status(ok):
  return PASS if ok else FAIL


def count_parameters(keras_model):
  """(all, non-zero) parameters of the network as it computes (after pruning masks;
  thresholds and mask variables are not parameters): `tf_tinyse.model.parameter_counts`."""
  return model_lib.parameter_counts(keras_model)


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


def build_model_card(*, keras_model, tflite_path, feature_config, tflm_model=None,
                     vela_report=None, sram_kib=None, flash_kib=None, output_path=None,
                     card_dir=None):
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
    card_dir: the folder the card will lie in; `tflite_path` and `vela.vela_tflite_path` are
      stored relative to it (`card_path`). None: the folder of `output_path`, or, without
      one, the paths as given.

  Returns:
    The card as a dict (what is written).
  """
  tflite_path = os.fspath(tflite_path)
  if card_dir is None and output_path is not None:
    card_dir = os.path.dirname(os.path.abspath(output_path))
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
      "tflite_path": card_path(tflite_path, card_dir),
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
          "vela_tflite_path": card_path(vela_report.vela_tflite_path, card_dir),
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
      "nonzero_parameters": count_parameters(keras_model)[1],
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
