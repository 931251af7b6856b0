"""Model card: fields consistent with the files on disk, and the four deployment checks."""
import json
import os
import shutil

import pytest

from tf_tinyse import fileio
from tflm_export import model_card
from tflm_export import tflm_runner
from tflm_export import vela
from tests.tflm_export.conftest import SMALL_CONFIG


@pytest.fixture(scope="module")
def exported(int8_bytes, utterances, tmp_path_factory):
  folder = tmp_path_factory.mktemp("card")
  path = os.path.join(folder, "model.tflite")
  fileio.write_bytes_atomic(path, int8_bytes)
  tflm = tflm_runner.TflmModel(int8_bytes)
  tflm.run(utterances[1])
  report = vela.run_vela(path, os.path.join(folder, "vela"))
  return path, tflm, report


def test_card_fields_match_files(exported, streaming_model, tmp_path):
  path, tflm, report = exported
  out = tmp_path / "card.json"
  card = model_card.build_model_card(keras_model=streaming_model, tflite_path=path,
                                     feature_config=SMALL_CONFIG.feature, tflm_model=tflm,
                                     vela_report=report, output_path=out)
  with open(out) as f:
    assert json.load(f) == card
  assert card["tflite_bytes"] == os.path.getsize(path)
  assert card["parameters"] == streaming_model.count_params()
  assert 0 < card["nonzero_parameters"] <= card["parameters"]
  assert card["tflm"]["arena_used_bytes"] == tflm.arena_used_bytes
  assert card["tflm"]["host_ms_per_frame"] == pytest.approx(1000 * tflm.mean_invoke_seconds)
  assert card["vela"]["encoded_weight_bytes"] == report.encoded_weight_bytes
  assert card["vela"]["cycles_total"] == report.cycles_total
  assert card["algorithmic_latency_ms"] == pytest.approx(48.0)  # (512 + 256) / 16 kHz
  assert card["hop_ms"] == pytest.approx(16.0)
  constraints = card["constraints"]
  assert constraints["causal"]["status"] == model_card.PASS
  assert constraints["integer_only"]["status"] == model_card.PASS
  assert constraints["latency_per_frame"]["status"] == model_card.PASS
  assert constraints["memory"]["status"] == model_card.NOT_CHECKED


def test_paths_are_stored_relative_to_the_card_folder(exported, streaming_model, tmp_path):
  path, tflm, report = exported
  folder = os.path.dirname(path)
  kwargs = dict(keras_model=streaming_model, tflite_path=path,
                feature_config=SMALL_CONFIG.feature, tflm_model=tflm, vela_report=report)
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


def test_memory_budget_pass_and_fail(exported, streaming_model):
  path, tflm, report = exported
  kwargs = dict(keras_model=streaming_model, tflite_path=path,
                feature_config=SMALL_CONFIG.feature, tflm_model=tflm, vela_report=report)
  roomy = model_card.build_model_card(sram_kib=512, flash_kib=2048, **kwargs)
  assert roomy["constraints"]["memory"]["status"] == model_card.PASS
  tight_sram = model_card.build_model_card(sram_kib=1, **kwargs)
  assert tight_sram["constraints"]["memory"]["status"] == model_card.FAIL
  assert tight_sram["constraints"]["memory"]["working_memory_bytes"] == tflm.arena_used_bytes
  tight_flash = model_card.build_model_card(flash_kib=1, **kwargs)
  assert tight_flash["constraints"]["memory"]["status"] == model_card.FAIL


def test_without_vela_the_target_checks_are_not_checked(exported, streaming_model):
  path, _, _ = exported
  card = model_card.build_model_card(keras_model=streaming_model, tflite_path=path,
                                     feature_config=SMALL_CONFIG.feature)
  assert card["vela"] is None and card["tflm"]["arena_used_bytes"] is None
  assert card["constraints"]["latency_per_frame"]["status"] == model_card.NOT_CHECKED


def test_latency_check_fails_over_the_hop():
  slow = vela.VelaReport(accelerator="ethos-u55-128", system_config="s", memory_mode="m",
                         core_clock_hz=1e8, cycles_npu=1, cycles_total=2_000_000,
                         inference_time_s=0.02, sram_bytes=0, flash_bytes=0,
                         original_weight_bytes=0, encoded_weight_bytes=0, npu_ops=1, cpu_ops=0,
                         vela_tflite_path="", summary_csv_path="")
  assert model_card.check_latency(slow, 16.0)["status"] == model_card.FAIL
