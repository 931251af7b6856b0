"""Model card: fields consistent with the files on disk, parameters of the deployed int8 graph,
the front-end apart, and the four deployment checks each judging one deployment."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tf_tinyse import fileio
from tf_tinyse import model as model_lib
from tflm_export import convert
from tflm_export import frontend_cost
from tflm_export import model_card
from tflm_export import tflite_graph
from tflm_export import tflm_runner
from tflm_export import vela
from tests.tflm_export.conftest import SMALL_CONFIG
from tests.tflm_export.conftest import SMALL_FRONTEND


@pytest.fixture(scope="module")
def exported(int8_bytes, utterances, tmp_path_factory):
  folder = tmp_path_factory.mktemp("card")
  path = os.path.join(folder, "model.tflite")
  fileio.write_bytes_atomic(path, int8_bytes)
  tflm = tflm_runner.TflmModel(int8_bytes)
  tflm.run(utterances[1])
  report = vela.run_vela(path, os.path.join(folder, "vela"))
  return path, tflm, report


def _interpreter_counts(tflite_bytes):
  """(parameters, non-zero) of the weighted ops' constant inputs, their values read by
  tf.lite.Interpreter (not by the card's flatbuffer reader)."""
  graph = tflite_graph.read_graph(tflite_bytes)
  interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
  interpreter.allocate_tensors()
  tensors = {}
  for op in graph.operators:
    if op.name in ("FULLY_CONNECTED", convert.FUSED_LSTM):
      tensors.update({t.index: t for t in op.inputs[1:] if t is not None and t.is_constant})
  total = nonzero = 0
  for t in tensors.values():
    values = interpreter.get_tensor(t.index)
    zero = np.asarray(t.zero_points or (0,)).reshape(
        [-1 if d == t.quantized_dimension and len(t.zero_points) > 1 else 1
         for d in range(values.ndim)])
    total += values.size
    nonzero += int(np.count_nonzero(values != zero))
  return total, nonzero


def _card(exported, streaming_model, **kwargs):
  path, tflm, report = exported
  return model_card.build_model_card(**{
      "keras_model": streaming_model, "tflite_path": path,
      "feature_config": SMALL_CONFIG.feature, "tflm_model": tflm, "vela_report": report,
      "frontend_timing_hops": 20, **kwargs})


def test_card_fields_match_files(exported, streaming_model, tmp_path):
  path, tflm, report = exported
  out = tmp_path / "card.json"
  card = _card(exported, streaming_model, output_path=out)
  with open(out) as f:
    assert json.load(f) == card
  assert card["tflite_bytes"] == os.path.getsize(path)
  assert card["tflm"]["arena_used_bytes"] == tflm.arena_used_bytes
  assert card["tflm"]["host_ms_per_frame"] == pytest.approx(1000 * tflm.mean_invoke_seconds)
  assert card["vela"]["encoded_weight_bytes"] == report.encoded_weight_bytes
  assert card["vela"]["cycles_total"] == report.cycles_total
  assert card["vela"]["vela_tflite_bytes"] == os.path.getsize(report.vela_tflite_path)
  assert card["vela"]["cpu_ops"] == report.cpu_ops == 0
  assert card["vela"]["cpu_ops_in_vela_tflite"] == []
  assert card["algorithmic_latency_ms"] == pytest.approx(48.0)  # (512 + 256) / 16 kHz
  assert card["hop_ms"] == pytest.approx(16.0)
  constraints = card["constraints"]
  assert constraints["causal"]["status"] == model_card.PASS
  assert constraints["integer_only"]["status"] == model_card.PASS
  assert constraints["latency_per_frame"]["status"] == model_card.PASS
  assert constraints["memory"]["status"] == model_card.NOT_CHECKED


def test_parameters_are_the_weight_buffers_of_the_tflite(exported, streaming_model):
  card = _card(exported, streaming_model)
  with open(exported[0], "rb") as f:
    tflite_bytes = f.read()
  assert (card["parameters"], card["nonzero_parameters"]) == _interpreter_counts(tflite_bytes)
  counts = card["parameter_counts"]
  assert card["parameters"] == counts["weights"] + counts["biases"]
  assert [o["op"] for o in counts["ops"]] == [convert.FUSED_LSTM] * 2 + ["FULLY_CONNECTED"] * 2
  assert sum(o["weights"] + o["biases"] for o in counts["ops"]) == card["parameters"]
  # The untrained Dense biases are all zero and the converter drops them: they are in the
  # Keras count (labelled as such), not in the deployed one.
  keras = card["keras_parameters"]
  assert keras["parameters"] == streaming_model.count_params()
  dense_biases = SMALL_CONFIG.dense_units[0] + SMALL_CONFIG.feature.num_bands
  assert card["parameters"] == keras["parameters"] - dense_biases
  assert "not the deployed model" in keras["counted"]


@pytest.fixture(scope="module")
def tiny_weights(streaming_model, utterances, tmp_path_factory):
  """The shared model with 31 of every 32 dense_0 weights a millionth of their column's
  largest: in float they are non-zero, in int8 (per-channel scale) they are code 0."""
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = model_lib.build_mask_model(SMALL_CONFIG, streaming=True)
  model.set_weights(streaming_model.get_weights())
  kernel, *rest = model.get_layer("dense_0").get_weights()
  kernel[0, :] = 0.5
  kernel[1:, :] = 5e-7
  model.get_layer("dense_0").set_weights([kernel, *rest])
  path = str(tmp_path_factory.mktemp("tiny") / "model.tflite")
  fileio.write_bytes_atomic(path, convert.convert_to_int8(model, utterances))
  return model, path, (kernel.shape[0] - 1) * kernel.shape[1]


def test_weights_stored_as_code_zero_are_not_counted_non_zero(tiny_weights):
  model, path, tiny = tiny_weights
  card = model_card.build_model_card(keras_model=model, tflite_path=path,
                                     feature_config=SMALL_CONFIG.feature,
                                     frontend_timing_hops=0)
  with open(path, "rb") as f:
    assert (card["parameters"], card["nonzero_parameters"]) == _interpreter_counts(f.read())
  dense_0 = card["parameter_counts"]["ops"][2]
  assert dense_0["op"] == "FULLY_CONNECTED" and dense_0["weights"] == 32 * 32
  assert dense_0["nonzero_weights"] == 32  # only the 0.5 row survives quantization
  assert card["keras_parameters"]["nonzero_parameters"] - card["nonzero_parameters"] >= tiny


def test_frontend_qeq_is_listed_apart_from_the_deployed_parameters(exported, streaming_model):
  without = _card(exported, streaming_model)
  card = _card(exported, streaming_model, front_end=SMALL_FRONTEND)
  bands = SMALL_CONFIG.feature.num_bands
  fp = card["frontend_parameters"]
  assert (fp["qeq_gain"], fp["qeq_bias"], fp["total"], fp["nonzero"]) == (bands, bands,
                                                                           2 * bands, 2 * bands)
  assert card["parameters"] == without["parameters"]  # QEQ is not in the int8 graph
  assert without["frontend_parameters"]["total"] == 0  # this Keras model has no QEQ


def test_card_reports_the_frontend_cost_per_hop(exported, streaming_model):
  card = _card(exported, streaming_model, front_end=SMALL_FRONTEND)
  cost = card["frontend_cost"]
  assert cost["ops_per_hop"] == json.loads(json.dumps(
      frontend_cost.ops_per_hop(SMALL_CONFIG.feature, qeq=True)))
  assert cost["ops_per_hop"]["multiplies"] > 0 and cost["ops_per_hop"]["how_counted"]
  host = cost["host_ms_per_hop"]
  assert host["hops"] == 20 and host["statistic"] == "median"
  assert 0 < host["analysis"] and 0 < host["synthesis"]
  # The latency check says the front-end is not in what it judged.
  latency = card["constraints"]["latency_per_frame"]
  assert "front-end" in latency["not_included"]
  assert f"{cost['ops_per_hop']['multiplies']:,} multiplies" in latency["not_included"]


def test_paths_are_stored_relative_to_the_card_folder(exported, streaming_model, tmp_path):
  path, tflm, report = exported
  folder = os.path.dirname(path)
  kwargs = dict(keras_model=streaming_model, tflite_path=path,
                feature_config=SMALL_CONFIG.feature, tflm_model=tflm, vela_report=report,
                frontend_timing_hops=0)
  card = model_card.build_model_card(card_dir=folder, **kwargs)
  assert card["tflite_path"] == "model.tflite"
  assert card["vela"]["vela_tflite_path"] == os.path.join("vela", "model_vela.tflite")
  # A copy of the folder: the card's paths name the copy's files.
  copy = tmp_path / "copy"
  shutil.copytree(folder, copy)
  for stored in (card["tflite_path"], card["vela"]["vela_tflite_path"]):
    resolved = model_card.resolve_path(copy / "model_card.json", stored)
    assert resolved.startswith(str(copy)) and os.path.isfile(resolved)
  # Written elsewhere, the card stores the way from its own folder to the files.
  written = model_card.build_model_card(output_path=tmp_path / "card.json", **kwargs)
  assert written["tflite_path"] == os.path.relpath(path, tmp_path)
  assert os.path.samefile(model_card.resolve_path(tmp_path / "card.json",
                                                  written["tflite_path"]), path)
  # Neither a card folder nor an output: the paths as given.
  assert model_card.build_model_card(**kwargs)["tflite_path"] == path


def test_ethos_u_memory_is_vela_sram_and_the_vela_file(exported, streaming_model):
  _, tflm, report = exported
  vela_file = os.path.getsize(report.vela_tflite_path)
  # What this model makes of the figures: the host arena is far above Vela's SRAM, and the
  # file to flash is larger than Vela's flash figure (the command stream and graph).
  assert report.sram_bytes <= 1024 < tflm.arena_used_bytes
  assert report.flash_bytes < vela_file
  card = _card(exported, streaming_model, sram_kib=1)
  memory = card["constraints"]["memory"]
  assert memory["status"] == model_card.PASS  # the arena of the non-Vela model is not used
  assert memory["deployment"].startswith(report.accelerator)
  assert memory["sram"]["bytes"] == report.sram_bytes and "Vela" in memory["sram"]["source"]
  assert memory["sram"]["budget_bytes"] == 1024
  assert memory["flash"]["status"] == model_card.NOT_CHECKED  # no flash budget given
  # A flash budget between Vela's figure and the real file fails: the file is what counts.
  between = (report.flash_bytes + vela_file) / 2 / 1024
  tight = _card(exported, streaming_model, flash_kib=between)["constraints"]["memory"]
  assert tight["status"] == model_card.FAIL
  assert tight["flash"]["bytes"] == vela_file and "model_vela.tflite" in tight["flash"]["source"]
  roomy = _card(exported, streaming_model, sram_kib=512, flash_kib=2048)
  assert roomy["constraints"]["memory"]["status"] == model_card.PASS


def test_cortex_m_memory_is_the_tflite_and_the_tflm_arena(exported, streaming_model):
  path, tflm, _ = exported
  tight = _card(exported, streaming_model, vela_report=None, sram_kib=1)["constraints"]
  memory = tight["memory"]
  assert memory["status"] == model_card.FAIL
  assert memory["deployment"] == model_card.DEPLOYMENT_CORTEX_M
  assert memory["sram"]["bytes"] == tflm.arena_used_bytes
  roomy = _card(exported, streaming_model, vela_report=None, sram_kib=512, flash_kib=2048)
  memory = roomy["constraints"]["memory"]
  assert memory["status"] == model_card.PASS
  assert memory["flash"]["bytes"] == os.path.getsize(path)
  # No NPU: no device time for the network, so latency is not judged.
  assert roomy["constraints"]["latency_per_frame"]["status"] == model_card.NOT_CHECKED


def test_unmeasured_arena_is_not_checked_not_replaced(exported, streaming_model):
  card = _card(exported, streaming_model, vela_report=None, tflm_model=None, sram_kib=512,
               flash_kib=2048)
  memory = card["constraints"]["memory"]
  assert memory["status"] == model_card.NOT_CHECKED  # a given budget stayed unchecked
  assert memory["flash"]["status"] == model_card.PASS
  assert memory["sram"]["status"] == model_card.NOT_CHECKED and memory["sram"]["bytes"] is None
  assert "not measured" in memory["sram"]["reason"]


def test_without_vela_the_target_checks_are_not_checked(exported, streaming_model):
  path, _, _ = exported
  card = model_card.build_model_card(keras_model=streaming_model, tflite_path=path,
                                     feature_config=SMALL_CONFIG.feature,
                                     frontend_timing_hops=0)
  assert card["vela"] is None and card["tflm"]["arena_used_bytes"] is None
  assert card["constraints"]["latency_per_frame"]["status"] == model_card.NOT_CHECKED
  assert card["frontend_cost"]["host_ms_per_hop"] is None


def _report(**kwargs):
  return vela.VelaReport(**{
      "accelerator": "ethos-u55-128", "system_config": "s", "memory_mode": "m",
      "core_clock_hz": 1e8, "cycles_npu": 1, "cycles_total": 2_000_000,
      "inference_time_s": 0.02, "sram_bytes": 0, "flash_bytes": 0, "original_weight_bytes": 0,
      "encoded_weight_bytes": 0, "npu_ops": 1, "cpu_ops": 0, "vela_tflite_path": "",
      "summary_csv_path": "", **kwargs})


def test_latency_check_fails_over_the_hop():
  check = model_card.check_latency(_report(), 16.0)
  assert check["status"] == model_card.FAIL
  assert (check["compute_ms_per_frame"], check["budget_ms"]) == (pytest.approx(20.0), 16.0)


def test_latency_is_not_checked_when_vela_leaves_ops_on_the_cpu():
  check = model_card.check_latency(_report(inference_time_s=1e-4, cpu_ops=2), 16.0)
  assert check["status"] == model_card.NOT_CHECKED
  assert "2 op(s) on the CPU" in check["reason"]


def test_latency_reads_the_cpu_ops_of_the_vela_file(exported, streaming_model):
  """A Vela output whose ops are not the ethos-u op runs them on the CPU: the plain int8
  model itself stands in for such a file."""
  path, _, report = exported
  assert _card(exported, streaming_model)["constraints"]["latency_per_frame"]["status"] == \
      model_card.PASS
  on_cpu = dataclasses.replace(report, vela_tflite_path=path)
  card = _card(exported, streaming_model, vela_report=on_cpu)
  latency = card["constraints"]["latency_per_frame"]
  assert latency["status"] == model_card.NOT_CHECKED
  assert latency["cpu_ops"]["in_vela_tflite"] == card["ops"]
  assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in latency["reason"]
