"""Compiles an int8 `.tflite` for the Arm Ethos-U NPU with Vela and reads its performance estimate.

Vela writes `<name>_vela.tflite` (NPU operators replaced by one ethos-u custom op per
subgraph that the NPU runs; what stays a normal op runs on the CPU) and
`<name>_summary_<system config>.csv` (one row: cycles, inference time, memory used, ...).
Memory figures in the CSV are in KiB; they are converted to bytes here.
"""
import csv
import dataclasses
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

from tf_tinyse.errors import UserError

ACCELERATORS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256",
                "ethos-u65-256", "ethos-u65-512")

_OPERATOR_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+)", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class VelaReport:
  """Vela's estimate for one inference (here: one frame) of a model.

  Attributes:
    accelerator: e.g. "ethos-u55-128"; system_config, memory_mode as Vela used them.
    core_clock_hz: NPU clock of the system config the cycles were counted at.
    cycles_npu: NPU compute cycles; cycles_total: including memory access stalls.
    inference_time_s: cycles_total / core_clock_hz.
    sram_bytes: SRAM used (tensor arena for the NPU's feature maps).
    flash_bytes: off-chip plus on-chip flash used (weights and the command stream).
    original_weight_bytes / encoded_weight_bytes: weights before / after Vela's compression.
    npu_ops, cpu_ops: operators Vela mapped to the NPU / left on the CPU.
    vela_tflite_path, summary_csv_path: the files Vela wrote.
  """
  accelerator: str
  system_config: str
  memory_mode: str
  core_clock_hz: float
  cycles_npu: int
  cycles_total: int
  inference_time_s: float
  sram_bytes: int
  flash_bytes: int
  original_weight_bytes: int
  encoded_weight_bytes: int
  npu_ops: int
  cpu_ops: int
  vela_tflite_path: str
  summary_csv_path: str

  @property
  def npu_op_fraction(self):
    total = self.npu_ops + self.cpu_ops
    return self.npu_ops / total if total else 0.0

  def to_dict(self):
    d = dataclasses.asdict(self)
    d["npu_op_fraction"] = self.npu_op_fraction
    return d


def _kib_to_bytes(value):
  return int(round(float(value) * 1024))


def parse_summary_csv(path):
  """The single row of a Vela summary CSV as a dict keyed by column name."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if len(rows) != 1:
    raise UserError(f"Vela summary '{path}' has {len(rows)} rows, expected 1: rerun vela")
  return rows[0]


def parse_operator_counts(stdout):
  """{'CPU': n, 'NPU': m} from Vela's printed network summary."""
  counts = {kind: int(n) for kind, n in _OPERATOR_COUNT.findall(stdout)}
  if set(counts) != {"CPU", "NPU"}:
    raise UserError("Vela's output has no 'CPU operators = ' / 'NPU operators = ' lines; "
                    "is the installed vela version 5.x?")
  return counts


def _report(row, counts, accelerator, vela_tflite, summary_csv):
  try:
    flash = _kib_to_bytes(row["off_chip_flash_memory_used"]) + _kib_to_bytes(
        row["on_chip_flash_memory_used"])
    return VelaReport(
        accelerator=accelerator, system_config=row["system_config"],
        memory_mode=row["memory_mode"], core_clock_hz=float(row["core_clock"]),
        cycles_npu=int(float(row["cycles_npu"])), cycles_total=int(float(row["cycles_total"])),
        inference_time_s=float(row["inference_time"]),
        sram_bytes=_kib_to_bytes(row["sram_memory_used"]), flash_bytes=flash,
        original_weight_bytes=int(float(row["total_original_weights"])),
        encoded_weight_bytes=int(float(row["total_npu_encoded_weights"])),
        npu_ops=counts["NPU"], cpu_ops=counts["CPU"], vela_tflite_path=vela_tflite,
        summary_csv_path=summary_csv)
  except (KeyError, ValueError) as e:
    raise UserError(f"Vela summary '{summary_csv}' lacks or garbles column {e}; "
                    "is the installed vela version 5.x?") from e


# The package's `__main__` (what `vela`'s console script calls: ethosu.vela.vela:main). Not
# `-m ethosu.vela.vela`: that module has no `__main__` guard, so it exits 0 doing nothing.
VELA_MODULE = "ethosu.vela"


def vela_command():
  """The command that runs Vela, as a list to put the arguments after.

  Vela installed for this interpreter runs as `python -m ethosu.vela` with `sys.executable`,
  so an un-activated venv, cron or Slurm (a PATH without the venv's bin folder) still finds
  it; otherwise a `vela` on PATH (e.g. installed with pipx).

  Raises:
    UserError: neither exists.
  """
  try:
    found = importlib.util.find_spec(VELA_MODULE) is not None
  except ImportError:  # No `ethosu` package at all.
    found = False
  if found:
    return [sys.executable, "-m", VELA_MODULE]
  on_path = shutil.which("vela")
  if on_path is not None:
    return [on_path]
  raise UserError(f"Vela is not installed for {sys.executable} and the 'vela' command is not "
                  "on PATH: pip install ethos-u-vela==5.2.0 (needed for the Ethos-U55 estimate)")


def run_vela(tflite_path, output_dir, accelerator="ethos-u55-128", system_config=None,
             memory_mode=None, config_file=None, timeout_s=600):
  """Runs `vela` on `tflite_path`, writing its files into `output_dir`; returns a VelaReport.

  Args:
    tflite_path: an int8 `.tflite` (from `convert.convert_to_int8`).
    output_dir: where `<name>_vela.tflite` and `<name>_summary_<config>.csv` end up. Vela
      writes into a temporary folder beside it first; files are moved in only when it
      succeeded, so a failed run leaves no half-written outputs.
    accelerator: one of ACCELERATORS.
    system_config, memory_mode: names from the Vela config file (`vela --list-configs
      <file>`); None takes Vela's defaults (Ethos_U55_High_End_Embedded, Shared_Sram for U55).
    config_file: a Vela .ini (`--config`); None uses the Arm/vela.ini shipped with Vela when
      a system config or memory mode is named.

  Raises:
    UserError: vela is not installed, the model file is missing, or vela failed (its stderr
      tail is in the message).
  """
  tflite_path = os.fspath(tflite_path)
  if not os.path.isfile(tflite_path):
    raise UserError(f"model file '{tflite_path}' does not exist: export the model first")
  if accelerator not in ACCELERATORS:
    raise UserError(f"accelerator '{accelerator}' is not one of {', '.join(ACCELERATORS)}")
  vela = vela_command()
  if config_file is None and (system_config or memory_mode):
    config_file = "Arm/vela.ini"
  name = os.path.splitext(os.path.basename(tflite_path))[0]
  output_dir = os.fspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(prefix=".vela.", dir=output_dir) as tmp:
    command = [*vela, os.path.abspath(tflite_path), "--accelerator-config", accelerator,
               "--output-dir", tmp]
    if config_file:
      command += ["--config", config_file]
    if system_config:
      command += ["--system-config", system_config]
    if memory_mode:
      command += ["--memory-mode", memory_mode]
    try:
      done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                            check=False)
    except subprocess.TimeoutExpired as e:
      raise UserError(f"vela took over {timeout_s} s on '{tflite_path}'") from e
    if done.returncode != 0:
      tail = " ".join((done.stderr or done.stdout).split())[-500:]
      raise UserError(f"vela failed on '{tflite_path}' (exit {done.returncode}): {tail}")
    summaries = glob.glob(os.path.join(tmp, f"{name}_summary_*.csv"))
    vela_tflite = os.path.join(tmp, f"{name}_vela.tflite")
    if len(summaries) != 1 or not os.path.isfile(vela_tflite):
      raise UserError(f"vela wrote no {name}_vela.tflite / summary csv for '{tflite_path}': "
                      f"{' '.join(done.stdout.split())[-300:]}")
    row = parse_summary_csv(summaries[0])
    counts = parse_operator_counts(done.stdout)
    final_csv = os.path.join(output_dir, os.path.basename(summaries[0]))
    final_tflite = os.path.join(output_dir, os.path.basename(vela_tflite))
    # Same filesystem (the temp folder is inside output_dir), so each move is an atomic rename.
    os.replace(vela_tflite, final_tflite)
    os.replace(summaries[0], final_csv)
  return _report(row, counts, accelerator, final_tflite, final_csv)
