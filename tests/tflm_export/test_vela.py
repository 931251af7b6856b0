"""Vela runner: a real Ethos-U55 compile of the small model, and its failures."""
import csv
import os
import sys

import pytest

from tf_tinyse import fileio
from tf_tinyse.errors import UserError
from tflm_export import vela


@pytest.fixture(scope="module")
def tflite_file(int8_bytes, tmp_path_factory):
  path = os.path.join(tmp_path_factory.mktemp("vela"), "small.tflite")
  fileio.write_bytes_atomic(path, int8_bytes)
  return path


def test_report_matches_vela_summary(tflite_file, tmp_path):
  out = tmp_path / "out"
  report = vela.run_vela(tflite_file, out, accelerator="ethos-u55-128")
  assert os.path.isfile(report.vela_tflite_path)
  assert os.path.basename(report.vela_tflite_path) == "small_vela.tflite"
  assert sorted(os.listdir(out)) == sorted(
      ["small_vela.tflite", os.path.basename(report.summary_csv_path)])  # no temp folder left
  with open(report.summary_csv_path, newline="") as f:
    row = next(csv.DictReader(f))
  assert report.cycles_total == int(float(row["cycles_total"]))
  assert report.cycles_npu == int(float(row["cycles_npu"]))
  assert 0 < report.cycles_npu <= report.cycles_total
  assert report.inference_time_s == pytest.approx(report.cycles_total / report.core_clock_hz)
  assert report.sram_bytes == round(float(row["sram_memory_used"]) * 1024)
  assert report.flash_bytes > report.encoded_weight_bytes > 0
  assert report.accelerator == "ethos-u55-128"
  assert report.npu_op_fraction == 1.0 and report.cpu_ops == 0


def test_named_system_config_and_memory_mode(tflite_file, tmp_path):
  report = vela.run_vela(tflite_file, tmp_path, accelerator="ethos-u55-256",
                         system_config="Ethos_U55_Deep_Embedded", memory_mode="Shared_Sram")
  assert report.system_config == "Ethos_U55_Deep_Embedded"
  assert report.memory_mode == "Shared_Sram"
  assert report.summary_csv_path.endswith("small_summary_Ethos_U55_Deep_Embedded.csv")


def test_missing_vela_is_a_clear_user_error(tflite_file, tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
  monkeypatch.setattr(vela, "VELA_MODULE", "no_such_package.vela")  # not installed here
  with pytest.raises(UserError, match=r"Vela is not installed for .*python.* and the 'vela' "
                                      r"command is not on PATH: pip install ethos-u-vela"):
    vela.run_vela(tflite_file, tmp_path / "out")


def test_runs_vela_of_this_interpreter_without_it_on_path(tflite_file, tmp_path, monkeypatch):
  """An un-activated venv, cron or Slurm: no `vela` on PATH, Vela installed for Python."""
  monkeypatch.setenv("PATH", str(tmp_path / "empty_bin"))
  report = vela.run_vela(tflite_file, tmp_path / "out")
  assert os.path.isfile(report.vela_tflite_path) and report.cycles_total > 0
  assert vela.vela_command() == [sys.executable, "-m", "ethosu.vela"]


def test_vela_failure_carries_its_message(tmp_path):
  bad = tmp_path / "broken.tflite"
  bad.write_bytes(b"this is not a flatbuffer at all" * 8)
  with pytest.raises(UserError, match="vela failed on"):
    vela.run_vela(bad, tmp_path / "out")
  assert not os.listdir(tmp_path / "out")  # nothing half-written


def test_unknown_config_and_missing_file(tflite_file, tmp_path):
  with pytest.raises(UserError, match="vela failed"):
    vela.run_vela(tflite_file, tmp_path, system_config="No_Such_System")
  with pytest.raises(UserError, match="does not exist"):
    vela.run_vela(tmp_path / "none.tflite", tmp_path)
  with pytest.raises(UserError, match="accelerator"):
    vela.run_vela(tflite_file, tmp_path, accelerator="ethos-u99")
