"""Vela runner: a real Ethos-U55 compile of the small model, and its failures."""
import os
import re
import subprocess
import sys

import pytest
from tensorflow.lite.python import schema_py_generated as schema

from tf_tinyse import fileio
from tf_tinyse.errors import UserError
from tflm_export import vela


@pytest.fixture(scope="module")
def tflite_file(int8_bytes, tmp_path_factory):
  path = os.path.join(tmp_path_factory.mktemp("vela"), "small.tflite")
  fileio.write_bytes_atomic(path, int8_bytes)
  return path


# Lines of Vela's console summary (`--verbose-cycle-estimate --verbose-weights`), each with the
# number it prints: memory in KiB with two decimals (kept as the printed text), cycles as
# integers, the inference rate with two decimals (7 significant digits here).
_CONSOLE = {
    "clock_mhz": r"^Accelerator clock\s+(\d+) MHz",
    "sram_kib": r"^Total SRAM used\s+([\d.]+) KiB",
    "off_chip_flash_kib": r"^Total Off-chip Flash used\s+([\d.]+) KiB",
    "original_weights_kib": r"^Original Weights Size\s+([\d.]+) KiB",
    "encoded_weights_kib": r"^NPU Encoded Weights Size\s+([\d.]+) KiB",
    "npu_cycles": r"^NPU cycles\s+(\d+) cycles/batch",
    "total_cycles": r"^Total cycles\s+(\d+) cycles/batch",
    "inferences_per_second": r"^Batch Inference time\s+[\d.]+ ms,\s+([\d.]+) inferences/s",
    "npu_ops": r"^NPU operators = (\d+)",
    "cpu_ops": r"^CPU operators = (\d+)",
}


def _vela_console(tflite_path, output_dir, accelerator):
  """Runs Vela directly (not through tflm_export.vela) and reads the numbers it prints."""
  done = subprocess.run([sys.executable, "-m", "ethosu.vela", str(tflite_path),
                         "--accelerator-config", accelerator, "--output-dir", str(output_dir),
                         "--verbose-cycle-estimate", "--verbose-weights"],
                        capture_output=True, text=True, check=True, timeout=600)
  numbers = {}
  for key, pattern in _CONSOLE.items():
    match = re.search(pattern, done.stdout, re.MULTILINE)
    assert match, f"no {key} line in Vela's output:\n{done.stdout}"
    numbers[key] = match.group(1) if key.endswith("_kib") else float(match.group(1))
  assert "On-chip Flash used" not in done.stdout  # the default system config has none
  return numbers


def _vela_tflite_tensors(path):
  """{tensor name: (shape, bytes of its buffer)} of the one subgraph of a Vela output, and the
  custom codes of its ops."""
  with open(path, "rb") as f:
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(f.read()), 0))
  (graph,) = model.subgraphs
  tensors = {}
  for t in graph.tensors:
    data = model.buffers[t.buffer].data
    tensors[t.name.decode()] = (tuple(int(d) for d in t.shape), 0 if data is None else len(data))
  ops = [model.operatorCodes[op.opcodeIndex].customCode for op in graph.operators]
  return tensors, ops


def test_report_matches_vela_summary(tflite_file, tmp_path):
  out = tmp_path / "out"
  report = vela.run_vela(tflite_file, out, accelerator="ethos-u55-128")
  assert os.path.isfile(report.vela_tflite_path)
  assert os.path.basename(report.vela_tflite_path) == "small_vela.tflite"
  assert sorted(os.listdir(out)) == sorted(
      ["small_vela.tflite", os.path.basename(report.summary_csv_path)])  # no temp folder left
  assert report.accelerator == "ethos-u55-128"
  assert report.system_config == "Ethos_U55_High_End_Embedded"  # Vela's default for U55
  assert report.memory_mode == "Shared_Sram"

  # 1. What Vela prints, from a run of its own: the same model, accelerator and defaults.
  # Measured (Vela 5.2.0): 500 MHz, NPU 11748 and total 44408 cycles, 11259.23 inferences/s,
  # SRAM 0.62 KiB, off-chip flash 39.78 KiB, weights 33.00 KiB (32.72 KiB encoded), 50 NPU ops.
  console = _vela_console(tflite_file, tmp_path / "console", "ethos-u55-128")
  assert report.core_clock_hz == console["clock_mhz"] * 1e6
  assert report.cycles_npu == console["npu_cycles"]
  assert report.cycles_total == console["total_cycles"]
  assert report.inference_time_s == pytest.approx(1.0 / console["inferences_per_second"],
                                                  rel=1e-6)
  # Memory is printed as f"{bytes / 1024:.2f}" KiB: the report's bytes must print the same.
  assert f"{report.sram_bytes / 1024:.2f}" == console["sram_kib"]
  assert f"{report.flash_bytes / 1024:.2f}" == console["off_chip_flash_kib"]
  assert f"{report.original_weight_bytes / 1024:.2f}" == console["original_weights_kib"]
  assert f"{report.encoded_weight_bytes / 1024:.2f}" == console["encoded_weights_kib"]
  assert (report.npu_ops, report.cpu_ops) == (console["npu_ops"], console["cpu_ops"])

  # 2. The compiled model itself, byte exact: the flash Vela reports is its read-only tensor
  # (encoded weights, biases and scales), the SRAM its scratch tensor (the feature-map arena).
  # Measured: read_only 40736 bytes = 39.78 KiB, scratch 640 bytes = 0.62 KiB.
  tensors, ops = _vela_tflite_tensors(report.vela_tflite_path)
  read_only_shape, read_only_bytes = tensors["read_only"]
  assert read_only_shape == (read_only_bytes,) and report.flash_bytes == read_only_bytes
  assert report.sram_bytes == tensors["scratch"][0][0]
  assert tensors["ethos_u_command_stream"][1] > 0
  # Everything runs on the NPU: the whole graph is one ethos-u custom op.
  assert ops == [b"ethos-u"] and report.cpu_ops == 0 and report.npu_op_fraction == 1.0
  assert 0 < report.cycles_npu <= report.cycles_total
  assert report.flash_bytes > report.encoded_weight_bytes > 0


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
