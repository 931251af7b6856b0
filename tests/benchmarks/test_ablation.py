"""benchmarks/ablation.py: the held-out evaluation set, variant parsing, and a tiny real run."""
import glob
import json
import os
import shutil
import subprocess
import sys

from absl import flags
import pytest

from benchmarks import ablation
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import train  # pylint: disable=unused-import  (defines the training flags)
from tf_tinyse.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
TINY_FLAGS = ["--lstm_units=8,8", "--dense_units=8", "--batch_size=4", "--segment_seconds=0.4",
              "--max_validation_files=1", "--validate_every=2", "--checkpoint_every=2"]


def _copy_as(folder, names, kind="speech"):
  """Real demo audio under new file names (the names carry speaker and recording)."""
  sources = sorted(glob.glob(os.path.join(demo_data.path(), kind, "train", "*.flac")))
  os.makedirs(folder, exist_ok=True)
  for name, source in zip(names, sources):
    shutil.copy(source, os.path.join(folder, name + ".flac"))


def test_holdout_keeps_only_unseen_speakers_and_unseen_noise_recordings(tmp_path):
  source, training = tmp_path / "source", tmp_path / "training"
  _copy_as(source / "speech" / "train", ["ls_11_1_0000", "ls_11_1_0001", "ls_22_1_0000",
                                         "ls_33_2_0000", "ls_44_1_0000"])
  _copy_as(source / "speech" / "test", ["ls_55_1_0000"])
  _copy_as(source / "noise" / "train", ["rain__a_s00", "rain__a_s01", "wind__b_s00",
                                        "dog__esc_1-100-A", "dog__esc_1-100-B"], "noise")
  _copy_as(source / "noise" / "test", ["cat__c_s00"], "noise")
  # The training corpus holds speaker 11 (one file only) and 22, one piece of rain__a and one
  # take of the dog recording.
  _copy_as(training / "speech", ["ls_11_1_0000", "ls_22_1_0000", "ls_66_1_0000"])
  _copy_as(training / "noise", ["rain__a_s00", "dog__esc_1-100-A"], "noise")

  out = tmp_path / "holdout"
  counts = ablation.holdout_corpus(str(source), str(training), str(out),
                                   data.DEFAULT_SPEAKER_ID_PATTERN,
                                   data.DEFAULT_NOISE_SOURCE_PATTERN)

  speech = sorted(os.listdir(out / "speech" / "test"))
  noise = sorted(os.listdir(out / "noise" / "test"))
  # Speaker 11's second file and rain__a's second piece are not unseen; test files never enter.
  assert speech == ["ls_33_2_0000.flac", "ls_44_1_0000.flac"]
  assert noise == ["wind__b_s00.flac"]
  assert counts == {"speech": 2, "noise": 1}
  corpus = data.discover_corpus(str(out))
  assert len(corpus.test.clean) == 2 and len(corpus.test.noise) == 1


def test_holdout_with_nothing_unseen_is_one_clear_error(tmp_path):
  _copy_as(tmp_path / "source" / "speech" / "train", ["ls_11_1_0000"])
  _copy_as(tmp_path / "source" / "noise" / "train", ["wind__b_s00"], "noise")
  _copy_as(tmp_path / "training" / "speech", ["ls_11_1_0000", "ls_22_1_0000"])
  _copy_as(tmp_path / "training" / "noise", ["rain__a_s00"], "noise")
  with pytest.raises(UserError, match="no speakers that the training corpus"):
    ablation.holdout_corpus(str(tmp_path / "source"), str(tmp_path / "training"),
                            str(tmp_path / "out"), data.DEFAULT_SPEAKER_ID_PATTERN,
                            data.DEFAULT_NOISE_SOURCE_PATTERN)


@pytest.mark.parametrize("text", ["no colon --steps=3", ": --steps=3", "wide: lstm_units=256"])
def test_a_malformed_variant_is_refused(text):
  with pytest.raises(UserError, match="expected 'NAME: --flag=value"):
    ablation.parse_variant(text)


def test_variant_parsing_keeps_quoted_values():
  assert ablation.parse_variant("wide lr: --lstm_units=256,256 --learning_rate=0.004") == (
      "wide lr", ["--lstm_units=256,256", "--learning_rate=0.004"])


def test_every_builtin_variant_sets_a_real_training_flag_to_a_valid_value():
  assert ablation.AUGMENTATIONS["none"] == []
  assert set(ablation.AUGMENTATIONS["all"]) == {
      f for name, fs in ablation.AUGMENTATIONS.items() if name != "all" for f in fs}
  for name, args in ablation.AUGMENTATIONS.items():
    for arg in args:
      flag_name, value = arg[2:].split("=", 1)
      parsed = flags.FLAGS[flag_name].parser.parse(value)
      assert parsed != flags.FLAGS[flag_name].default, (name, arg)


def _run(args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ablation.py"), *args],
                        capture_output=True, text=True, env=ENV, cwd=ROOT, check=False)


def test_a_tiny_ablation_trains_scores_and_reuses_its_results(tmp_path):
  args = [f"--ablation_dir={tmp_path}", "--variants=none,spectral_shaping",
          "--variant=short lr: --learning_rate=0.01 --steps=3", "--ablation_steps=2",
          "--max_eval_files=1", "--parallel=2", "--probe_noises=clicks", *TINY_FLAGS]
  first = _run(args)
  assert first.returncode == 0, first.stderr[-3000:]
  table = json.loads((tmp_path / "ablation.json").read_text())
  rows = {r["variant"]: r for r in table["rows"]}
  assert list(rows) == ["none", "spectral_shaping", "short lr"]
  assert rows["spectral_shaping"]["flags"] == ["--augment_spectral_shaping=0.5"]
  for name, steps in (("none", 2), ("spectral_shaping", 2), ("short lr", 3)):
    with open(tmp_path / name / "best" / "info.json") as f:
      assert json.load(f)["step"] <= steps
    assert rows[name]["files"] == 1
    assert rows[name]["train_cpu_minutes"] > 0 and not rows[name]["resumed"]
    assert set(rows[name]["improvement"]) == {"sdr", "si_sdr", "pesq", "stoi"}
    assert list(rows[name]["probes"]) == ["clicks"]
    assert set(rows[name]["probes"]["clicks"]["improvement"]) == {"sdr", "si_sdr", "pesq", "stoi"}
  # The validation split of the demo corpus is scored, never its test split; the probe set
  # mixes the same validation speech with the probe clicks.
  with open(tmp_path / "none.scores.json") as f:
    assert json.load(f)["split"] == "valid"
  with open(tmp_path / "none.probe_clicks.json") as f:
    probe_scores = json.load(f)
  valid_speech = data.discover_corpus(demo_data.path()).valid.clean
  assert sorted(os.listdir(tmp_path / "probe_clicks" / "speech" / "test")) == sorted(
      os.path.basename(p) for p in valid_speech)
  assert all(r["noise"].startswith("probe_clicks_") for r in probe_scores["per_file"])
  assert "| short lr |" in first.stdout and "clicks ΔSI-SDR / ΔSTOI" in first.stdout

  mtimes = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "*.result.json"))}
  again = _run(args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert {p: os.path.getmtime(p) for p in mtimes} == mtimes
  assert again.stdout.splitlines()[-3:] == first.stdout.splitlines()[-3:]

  # Asked for another probe kind, the trained variants are scored on it, not trained again.
  logs = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "*.train.log"))}
  more = _run([a for a in args if not a.startswith("--probe_noises")]
              + ["--probe_noises=clicks,tones"])
  assert more.returncode == 0, more.stderr[-3000:]
  assert {p: os.path.getmtime(p) for p in logs} == logs
  rows = {r["variant"]: r for r in json.loads((tmp_path / "ablation.json").read_text())["rows"]}
  assert all(list(r["probes"]) == ["clicks", "tones"] for r in rows.values())
  assert "tones ΔSI-SDR / ΔSTOI" in more.stdout


def test_an_unknown_probe_kind_is_one_line(tmp_path):
  result = _run([f"--ablation_dir={tmp_path}", "--probe_noises=hum"])
  assert result.returncode != 0
  assert "unknown --probe_noises ['hum']" in result.stderr
  assert "Traceback" not in result.stderr


def test_an_unknown_builtin_variant_is_one_line(tmp_path):
  result = _run([f"--ablation_dir={tmp_path}", "--variants=none,echo"])
  assert result.returncode != 0
  assert "unknown --variants ['echo']" in result.stderr
  assert "Traceback" not in result.stderr
