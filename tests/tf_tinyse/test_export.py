"""Export of a trained QAT model dir: the artifacts (int8 model, its front-end, Vela, card), the
card against them, the tolerance rule, the CLI, and the exported pair run by `enhance --tflite`
and `evaluate --tflite` without the model dir."""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from keras_layers.qeq import QEQ
from tf_tinyse import audio
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import enhancer
from tf_tinyse import evaluate
from tf_tinyse import export
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse import train
from tf_tinyse.errors import UserError
from tflm_export import convert
from tflm_export import frontend
from tflm_export import model_card
from tflm_export import tflite_graph
from tflm_export import vela

TINY_QAT = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(16,), quantize=True)
TINY_DATA = data.DataConfig(batch_size=4, segment_seconds=0.4)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
# The export's default: 99 % of the mask values within 2 output LSBs (1/256) of Keras QAT.
# Measured for this briefly trained model over 2 test utterances: mean 0.04 LSB, 99th
# percentile 2, max 2 (one step of the pinned sigmoid input grid, 8/255, is up to 2 LSBs).
TOLERANCE_LSB = 8.0  # export's default 99th percentile (the demo main job measured 4-6 LSB)
FAST = ["--representative_files=1", "--validation_files=1"]
# One 16-bit step for writing the WAV, one for the float → int16 → float round trip.
WAV_TOLERANCE = 2.0 / 32768 + 1e-6


@pytest.fixture(scope="module")
def corpus():
  return data.discover_corpus(demo_data.path())


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, corpus):
  """A QAT model trained for a few steps, with best/ weights from its final validation."""
  model_dir = str(tmp_path_factory.mktemp("qat_model"))
  train.train(TINY_QAT, TINY_DATA, corpus, model_dir, steps=4, checkpoint_every=4,
              validate_every=4, max_validation_files=1, log_every=4, progress=False)
  return model_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained_dir, corpus):
  output = str(tmp_path_factory.mktemp("export") / "model.tflite")
  card = export.export_model_dir(trained_dir, output, corpus, TINY_DATA,
                                 accelerator="ethos-u55-64", sram_kib=512, flash_kib=4096,
                                 representative_files=2, validation_files=2)
  return output, card


def _cli(*args, module="tf_tinyse.export", env=ENV):
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                        text=True, env=env, timeout=300, check=False)


def test_writes_the_artifacts_and_a_consistent_card(exported):
  output, card = exported
  folder = os.path.dirname(output)
  vela_tflite = os.path.join(folder, "model_vela.tflite")
  card_path = os.path.join(folder, export.CARD_FILE)
  frontend_json = os.path.join(folder, "model_frontend.json")
  summary_csv = os.path.join(folder, card["vela_summary_csv"])
  for path in (output, frontend_json, vela_tflite, summary_csv, card_path):
    assert os.path.isfile(path)
  assert card["frontend"] == "model_frontend.json"
  with open(card_path) as f:
    assert json.load(f) == json.loads(json.dumps(card))
  assert card["tflite_bytes"] == os.path.getsize(output)
  assert card["vela"]["vela_tflite_path"] == "model_vela.tflite"
  row = vela.parse_summary_csv(summary_csv)
  assert card["vela"]["cycles_total"] == int(float(row["cycles_total"]))
  assert card["vela"]["accelerator"] == "ethos-u55-64"
  with open(output, "rb") as f:
    graph = convert.check_tflm_integer(f.read(), 2)
  assert graph.inputs[0].shape == (1, 1, TINY_QAT.feature.num_bands)
  assert card["tflm"]["arena_used_bytes"] > 0 and card["tflm"]["host_ms_per_frame"] > 0
  assert card["constraints"]["integer_only"]["status"] == "pass"
  assert card["constraints"]["causal"]["status"] == "pass"
  # The Ethos-U deployment's figures: Vela's SRAM and the file it flashes.
  memory = card["constraints"]["memory"]
  assert memory["status"] == "pass" and memory["deployment"].startswith("ethos-u55-64")
  assert memory["flash"]["bytes"] == os.path.getsize(vela_tflite)
  assert card["vela"]["vela_tflite_bytes"] == os.path.getsize(vela_tflite)
  assert memory["sram"]["bytes"] == card["vela"]["sram_bytes"] == int(round(
      float(row["sram_memory_used"]) * 1024))


def test_card_counts_the_deployed_parameters_and_the_frontend_apart(exported):
  """A 16x2 + 16 model trained with QEQ: the .tflite holds every LSTM/Dense weight and bias
  (trained biases are non-zero, so none is dropped), QEQ's 2 x 128 run in the front-end."""
  output, card = exported
  bands = TINY_QAT.feature.num_bands
  keras_total = model_lib.count_parameters(model_lib.build_mask_model(TINY_QAT))
  assert card["parameters"] == keras_total - 2 * bands
  assert card["keras_parameters"]["parameters"] == keras_total
  assert card["frontend_parameters"]["total"] == 2 * bands
  with open(output, "rb") as f:
    deployed = model_card.deployed_parameter_counts(f.read())
  assert (card["parameters"], card["nonzero_parameters"]) == (
      deployed["parameters"], deployed["nonzero_parameters"])
  assert card["nonzero_parameters"] <= card["parameters"]
  # The front-end's cost per hop beside the network's.
  cost = card["frontend_cost"]
  assert cost["ops_per_hop"]["stages"]["qeq"]["multiplies"] == bands
  assert cost["host_ms_per_hop"]["total"] > 0


def test_frontend_file_holds_the_trained_qeq_and_features(exported, trained_dir):
  output, card = exported
  fe = frontend.Frontend.load(os.path.join(os.path.dirname(output), card["frontend"]))
  config, model = model_lib.load_trained(trained_dir, streaming=True)
  assert fe.feature == config.feature
  gain, bias = next(l for l in model.layers if isinstance(l, QEQ)).get_weights()
  np.testing.assert_array_equal(fe.qeq_gain, gain)
  np.testing.assert_array_equal(fe.qeq_bias, bias)
  # The int8 model starts at the first LSTM: its input is the front-end output on the QAT grid.
  with open(output, "rb") as f:
    graph = tflite_graph.read_graph(f.read())
  first_lstm = next(op for op in graph.operators if op.name == convert.FUSED_LSTM)
  assert graph.inputs[0].index == first_lstm.inputs[0].index
  assert graph.inputs[0].scales == (pytest.approx(2.0 / 255.0),)


def test_validation_section_agrees_within_tolerance(exported, trained_dir):
  output, card = exported
  v = card["validation"]
  assert v["reference"] == "keras_qat" and v["tolerance_lsb"] == TOLERANCE_LSB
  assert v["tolerance_si_sdr_db"] == 0.1 and v["tolerance_mean_lsb"] == 1.0
  assert len(v["utterances"]) == 2 and v["frames"] > 500
  assert v["mask_p99_abs_error_lsb"] <= TOLERANCE_LSB and v["mask_mean_abs_error_lsb"] < 0.5
  assert v["mask_fraction_within_2_lsb"] >= 0.99
  assert v["mask_mean_abs_error_lsb"] <= v["mask_p99_abs_error_lsb"] <= v["mask_max_abs_error_lsb"]
  assert v["mask_max_abs_error"] == pytest.approx(v["mask_max_abs_error_lsb"] / 256.0)
  # The same model computes the same enhancement: SI-SDRs within a few hundredths of a dB.
  assert abs(v["si_sdr_tflm_db"] - v["si_sdr_keras_db"]) < 0.1
  # The LSTM grids of the file are the QAT grid (scale 2/255), not calibrated ones.
  with open(output, "rb") as f:
    graph = tflite_graph.read_graph(f.read())
  lstm_outputs = [op.outputs[0] for op in graph.operators if op.name == convert.FUSED_LSTM]
  assert [t.scales[0] for t in lstm_outputs] == [pytest.approx(2.0 / 255.0)] * 2
  summary = export.format_card(card)
  assert f"99 % within {v['mask_p99_abs_error_lsb']:.0f} LSB (tolerance 8)" in summary
  assert f"max {v['mask_max_abs_error_lsb']:.0f} LSB" in summary


def test_cli_missing_checkpoint_is_a_clear_error(tmp_path):
  model_lib.save_config(str(tmp_path), TINY_QAT)
  done = _cli(f"--model_dir={tmp_path}", f"--output={tmp_path / 'm.tflite'}",
              f"--data_dir={demo_data.path()}")
  assert done.returncode == 2
  assert "error:" in done.stderr and "no trained weights" in done.stderr
  assert "Traceback" not in done.stderr
  assert not os.path.exists(tmp_path / "m.tflite")


def test_disagreement_beyond_tolerance_writes_nothing(trained_dir, corpus, tmp_path):
  output = tmp_path / "model.tflite"
  # Both masks lie on the 1/256 output grid, so the errors are whole LSBs; about 2 % of this
  # model's mask values differ (by 2 LSB), so its 99th percentile is above 0.5.
  with pytest.raises(UserError, match=r"disagrees with its Keras QAT model over 1 test "
                                      r"utterances: 99 % of mask values within [\d.]+ LSB "
                                      r"\(max [\d.]+, mean [\d.]+; --tolerance_lsb=0\.5, "
                                      r"--tolerance_mean_lsb=1\).*"
                                      r"nothing was written"):
    export.export_model_dir(trained_dir, output, corpus, TINY_DATA, representative_files=1,
                            validation_files=1, tolerance_lsb=0.5)
  assert not os.listdir(tmp_path)


def test_quality_disagreement_writes_nothing(trained_dir, corpus, tmp_path, monkeypatch):
  """Masks within the LSB tolerance but enhancing differently (SI-SDR) still fail."""
  measure = export.validate

  def validate_with_a_quality_gap(*args):
    v = measure(*args)
    assert v["mask_p99_abs_error_lsb"] <= TOLERANCE_LSB
    v["si_sdr_tflm_db"] = v["si_sdr_keras_db"] - 0.5
    return v

  monkeypatch.setattr(export, "validate", validate_with_a_quality_gap)
  with pytest.raises(UserError, match=r"SI-SDR [-\d.]+ vs [-\d.]+ dB "
                                      r"\(--tolerance_si_sdr_db=0\.1\); nothing was written"):
    export.export_model_dir(trained_dir, tmp_path / "model.tflite", corpus, TINY_DATA,
                            representative_files=1, validation_files=1)
  assert not os.listdir(tmp_path)


def test_a_mean_disagreement_writes_nothing(trained_dir, corpus, tmp_path, monkeypatch):
  """A 99th percentile within tolerance but a mean of a grid mismatch (about 2 LSB) fails."""
  measure = export.validate

  def validate_with_a_mean_gap(*args):
    v = measure(*args)
    assert v["mask_p99_abs_error_lsb"] <= TOLERANCE_LSB
    v["mask_mean_abs_error_lsb"] = 2.2
    return v

  monkeypatch.setattr(export, "validate", validate_with_a_mean_gap)
  with pytest.raises(UserError, match=r"mean 2\.20; --tolerance_lsb=8, --tolerance_mean_lsb=1\)"
                                      r".*nothing was written"):
    export.export_model_dir(trained_dir, tmp_path / "model.tflite", corpus, TINY_DATA,
                            representative_files=1, validation_files=1)
  assert not os.listdir(tmp_path)


def test_tolerance_applies_to_the_99th_percentile_not_the_max(trained_dir, corpus, tmp_path,
                                                              monkeypatch):
  """A few outliers beyond the tolerance (the card reports them) do not fail the export."""
  measure = export.validate

  def validate_with_an_outlier(*args):
    v = measure(*args)
    assert v["mask_p99_abs_error_lsb"] <= TOLERANCE_LSB
    v["mask_max_abs_error_lsb"] = 3.0 * TOLERANCE_LSB  # e.g. one frame far off
    return v

  monkeypatch.setattr(export, "validate", validate_with_an_outlier)
  card = export.export_model_dir(trained_dir, tmp_path / "model.tflite", corpus, TINY_DATA,
                                 representative_files=1, validation_files=1)
  assert card["validation"]["mask_max_abs_error_lsb"] > card["validation"]["tolerance_lsb"]
  assert os.path.isfile(tmp_path / "model.tflite")
  assert os.path.isfile(tmp_path / "model_frontend.json")


def test_cli_missing_data_dir_is_a_clear_error(trained_dir, tmp_path):
  done = _cli(f"--model_dir={trained_dir}", f"--output={tmp_path / 'm.tflite'}")
  assert done.returncode == 2
  assert "--data_dir is required" in done.stderr and "Traceback" not in done.stderr


def test_cli_budget_fails_only_with_strict(trained_dir, tmp_path):
  args = [f"--model_dir={trained_dir}", f"--data_dir={demo_data.path()}", "--flash_kib=1",
          *FAST]
  relaxed = _cli(*args, f"--output={tmp_path / 'relaxed' / 'model.tflite'}")
  assert relaxed.returncode == 0, relaxed.stderr[-2000:]
  assert "memory fail" in relaxed.stdout and "warning" in relaxed.stdout
  with open(tmp_path / "relaxed" / export.CARD_FILE) as f:
    card = json.load(f)
  assert card["constraints"]["memory"]["status"] == "fail"
  flash = card["constraints"]["memory"]["flash"]
  assert flash["budget_bytes"] == 1024 and flash["status"] == "fail"
  assert flash["bytes"] == os.path.getsize(tmp_path / "relaxed" / "model_vela.tflite")
  strict = _cli(*args, "--strict", f"--output={tmp_path / 'strict' / 'model.tflite'}")
  assert strict.returncode == 2
  assert "constraint(s) failed: memory" in strict.stderr
  # --strict judges the written card; the artifacts are there to inspect.
  assert os.path.isfile(tmp_path / "strict" / export.CARD_FILE)
  assert os.path.isfile(tmp_path / "strict" / "model_frontend.json")


@pytest.fixture(scope="module")
def tflite_cli_runs(exported, tmp_path_factory, noisy_clip):
  """`enhance --tflite` and `evaluate --tflite` on the exported pair, no --model_dir, run
  concurrently (each is a process that imports TensorFlow)."""
  output, _ = exported
  tmp = tmp_path_factory.mktemp("tflite_cli")
  noisy = str(tmp / "noisy.wav")
  audio.write_audio(noisy, noisy_clip[0])
  jobs = {
      "enhance": ["tf_tinyse.enhance", f"--tflite={output}", f"--input={noisy}",
                  f"--output={tmp / 'enhanced.wav'}"],
      "evaluate": ["tf_tinyse.evaluate", f"--tflite={output}", f"--data_dir={demo_data.path()}",
                   "--max_files=1", f"--output_json={tmp / 'scores.json'}"],
  }
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
    done = dict(zip(jobs, pool.map(lambda a: _cli(*a[1:], module=a[0]), jobs.values())))
  return {"tmp": tmp, "noisy": noisy, "done": done}


def test_enhance_cli_runs_the_exported_model_without_model_dir(exported, tflite_cli_runs):
  done = tflite_cli_runs["done"]["enhance"]
  assert done.returncode == 0, done.stderr[-3000:]
  written, rate = sf.read(str(tflite_cli_runs["tmp"] / "enhanced.wav"), dtype="float32")
  noisy = audio.read_audio(tflite_cli_runs["noisy"])
  assert rate == 16000 and written.shape == noisy.shape
  # The same int8 model behind the same front-end file, in this process.
  expected = enhancer.StreamingEnhancer.from_tflite_file(exported[0])(noisy)
  np.testing.assert_allclose(written, expected, rtol=0, atol=WAV_TOLERANCE)
  assert np.max(np.abs(written - noisy)) > 100 * WAV_TOLERANCE  # the model did something


def test_evaluate_cli_scores_the_exported_model(exported, tflite_cli_runs, corpus):
  done = tflite_cli_runs["done"]["evaluate"]
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tflite_cli_runs["tmp"] / "scores.json") as f:
    report = json.load(f)
  assert report["tflite"] == exported[0] and report["model_dir"] is None
  assert report["streaming"] is True and report["summary"]["files"] == 1
  examples = data.make_evaluation_set(corpus, "test", seed=0, max_files=1)
  mine = evaluate.evaluate_examples(enhancer.make_enhancer(None, tflite=exported[0]), examples,
                                    progress=False)
  assert [e["name"] for e in report["per_file"]] == [e.name for e in examples]
  for side in ("noisy", "enhanced"):
    for name in metrics.METRIC_NAMES:
      assert report["per_file"][0][side][name] == pytest.approx(
          mine["per_file"][0][side][name], rel=1e-4, abs=1e-4)


def test_tflite_without_its_frontend_file_is_a_clear_error(exported, tmp_path):
  lone = tmp_path / "lone.tflite"
  shutil.copy(exported[0], lone)
  with pytest.raises(UserError, match=r"lone_frontend\.json' is missing.*tf_tinyse\.export"):
    enhancer.make_enhancer(None, tflite=str(lone))
  with pytest.raises(UserError, match=r"--tflite '.*absent\.tflite' does not exist"):
    enhancer.StreamingEnhancer.from_tflite_file(str(tmp_path / "absent.tflite"))


def _fail_at(stage, monkeypatch):
  """Makes an export fail at `stage` after that stage did its work; returns the error's text."""
  if stage == "validation":
    measure = export.validate

    def far_off(*args):
      v = measure(*args)
      v["mask_p99_abs_error_lsb"] = 100 * TOLERANCE_LSB
      return v

    monkeypatch.setattr(export, "validate", far_off)
    return "disagrees with its Keras QAT model"
  if stage == "vela":
    compile_model = vela.run_vela

    def compile_then_fail(*args, **kwargs):
      compile_model(*args, **kwargs)  # Vela's files are there; then it fails.
      raise UserError("vela failed on purpose")

    monkeypatch.setattr(vela, "run_vela", compile_then_fail)
    return "vela failed on purpose"
  build = model_card.build_model_card

  def build_then_fail(**kwargs):
    build(**kwargs)
    raise RuntimeError("model card failed on purpose")

  monkeypatch.setattr(model_card, "build_model_card", build_then_fail)
  return "model card failed on purpose"


def _state(folder):
  """Each entry of `folder`, hidden ones included: its bytes, inode and modification time."""
  state = {}
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    with open(path, "rb") as f:
      state[name] = (f.read(), os.stat(path).st_ino, os.stat(path).st_mtime_ns)
  return state


def _export_fast(trained_dir, corpus, output):
  return export.export_model_dir(trained_dir, output, corpus, TINY_DATA, representative_files=1,
                                 validation_files=1)


@pytest.mark.parametrize("stage", ["validation", "vela", "model_card"])
def test_failed_reexport_leaves_an_earlier_export_untouched(stage, exported, trained_dir, corpus,
                                                            tmp_path, monkeypatch):
  folder = tmp_path / "export"
  shutil.copytree(os.path.dirname(exported[0]), folder)
  before = _state(folder)
  with pytest.raises((UserError, RuntimeError), match=_fail_at(stage, monkeypatch)):
    _export_fast(trained_dir, corpus, folder / "model.tflite")
  # The same files (no temp folder left), each byte and each inode as it was.
  assert _state(folder) == before


@pytest.mark.parametrize("stage,into", [("vela", "."), ("model_card", "new")])
def test_export_failing_after_validation_writes_nothing(stage, into, trained_dir, corpus,
                                                        tmp_path, monkeypatch):
  """Into a folder with other files, or one the export has to make (not left behind)."""
  (tmp_path / "notes.txt").write_text("not the export's")
  with pytest.raises((UserError, RuntimeError), match=_fail_at(stage, monkeypatch)):
    _export_fast(trained_dir, corpus, tmp_path / into / "model.tflite")
  assert os.listdir(tmp_path) == ["notes.txt"]  # hidden files included


def test_cli_runs_vela_without_it_on_path(trained_dir, tmp_path):
  """An un-activated venv, cron or Slurm: the interpreter's bin folder is not on PATH."""
  bin_dir = os.path.dirname(sys.executable)
  path = os.pathsep.join(d for d in ("/usr/local/bin", "/usr/bin", "/bin")
                         if d != bin_dir and shutil.which("vela", path=d) is None)
  assert shutil.which("vela", path=path) is None
  done = _cli(f"--model_dir={trained_dir}", f"--data_dir={demo_data.path()}",
              f"--output={tmp_path / 'model.tflite'}", *FAST, env=dict(ENV, PATH=path))
  assert done.returncode == 0, done.stderr[-2000:]
  with open(tmp_path / export.CARD_FILE) as f:
    card = json.load(f)
  assert card["vela"]["cycles_total"] > 0
  summary_csv = tmp_path / card["vela_summary_csv"]
  assert vela.parse_summary_csv(summary_csv)["cycles_total"]
  assert os.path.isfile(tmp_path / "model_vela.tflite")
  # The message names the files where they are, not as the card stores them.
  assert f"wrote {tmp_path / 'model.tflite'}, {tmp_path / 'model_frontend.json'}, " \
         f"{tmp_path / 'model_vela.tflite'}, {summary_csv}, {tmp_path / export.CARD_FILE}" \
         in done.stdout


def test_card_paths_are_relative_and_survive_a_copy(exported, trained_dir, tmp_path):
  output, card = exported
  assert os.path.samefile(os.path.join(os.path.dirname(output), card["model_dir"]), trained_dir)
  original = tmp_path / "original"
  shutil.copytree(os.path.dirname(output), original)
  copy = tmp_path / "elsewhere" / "export"
  shutil.copytree(original, copy)
  shutil.rmtree(original)
  card_file = copy / export.CARD_FILE
  with open(card_file) as f:
    card = json.load(f)
  paths = {"tflite_path": card["tflite_path"], "frontend": card["frontend"],
           "vela_tflite_path": card["vela"]["vela_tflite_path"],
           "vela_summary_csv": card["vela_summary_csv"]}
  assert paths == {"tflite_path": "model.tflite", "frontend": "model_frontend.json",
                   "vela_tflite_path": "model_vela.tflite",
                   "vela_summary_csv": f"model_summary_{card['vela']['system_config']}.csv"}
  resolved = {k: model_card.resolve_path(card_file, v) for k, v in paths.items()}
  assert all(os.path.isfile(p) and p.startswith(str(copy)) for p in resolved.values())
  assert os.path.getsize(resolved["tflite_path"]) == card["tflite_bytes"]
  row = vela.parse_summary_csv(resolved["vela_summary_csv"])
  assert card["vela"]["cycles_total"] == int(float(row["cycles_total"]))
  assert frontend.Frontend.load(resolved["frontend"]).feature == TINY_QAT.feature
  enhancer.StreamingEnhancer.from_tflite_file(resolved["tflite_path"])  # the copied pair loads


def test_every_card_field_the_readme_names_is_in_a_real_card(exported):
  from tests.tf_tinyse import readme_card_fields  # pylint: disable=g-import-not-at-top
  _, card = exported
  paths = readme_card_fields.documented_paths()
  assert len(paths) > 40  # the table was found and parsed
  # The sparsity fields are checked on a pruned card (test_export_sparsity).
  assert readme_card_fields.missing_from(card, {p[0] for p, _ in paths} - {"sparsity"}) == []
