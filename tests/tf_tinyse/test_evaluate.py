"""The evaluate CLI and `evaluate_examples`: per-file and mean scores, skips, NaN output."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import enhancer
from tf_tinyse import evaluate
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse import train
from tf_tinyse.errors import UserError

TINY = model_lib.ModelConfig(lstm_units=(8, 8), dense_units=(8,))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
SIDES = ("noisy", "enhanced")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A model dir after a tiny training run (6 steps, validated at the end: best/ exists)."""
  folder = str(tmp_path_factory.mktemp("evaluate_model"))
  train.train(TINY, data.DataConfig(batch_size=4, segment_seconds=0.4),
              data.discover_corpus(demo_data.path()), folder, 6, validate_every=1000,
              max_validation_files=1, progress=False)
  return folder


@pytest.fixture(scope="module")
def test_examples():
  return data.make_evaluation_set(data.discover_corpus(demo_data.path()), "test", seed=0,
                                  max_files=2)


@pytest.fixture(scope="module")
def cli_report(model_dir, tmp_path_factory):
  output = tmp_path_factory.mktemp("evaluate_cli") / "scores.json"
  proc = subprocess.run(
      [sys.executable, "-m", "tf_tinyse.evaluate", f"--model_dir={model_dir}",
       f"--data_dir={demo_data.path()}", "--max_files=2", f"--output_json={output}"],
      capture_output=True, text=True, env=ENV, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(output) as f:
    return json.load(f), proc.stdout


def test_cli_writes_per_file_and_mean_scores(cli_report, test_examples):
  report, stdout = cli_report
  assert [entry["name"] for entry in report["per_file"]] == [e.name for e in test_examples]
  for entry in report["per_file"]:
    assert entry["noise"] and np.isfinite(entry["snr_db"])
    for side in SIDES:
      assert entry[side]["skipped"] == []
      for name in metrics.METRIC_NAMES:
        assert np.isfinite(entry[side][name]), (entry["name"], side, name)
  summary = report["summary"]
  assert summary["files"] == 2 and summary["skipped"] == {}
  for name in metrics.METRIC_NAMES:
    means = summary["metrics"][name]
    assert means["files"] == 2
    for side in SIDES:
      assert means[side] == pytest.approx(np.mean([e[side][name] for e in report["per_file"]]))
    assert means["improvement"] == pytest.approx(means["enhanced"] - means["noisy"])
  assert report["split"] == "test" and report["streaming"] is False
  assert report["audio_seconds"] == pytest.approx(
      sum(len(e.noisy) for e in test_examples) / 16000)
  assert "wrote" in stdout


def test_cli_scores_equal_the_library_path(cli_report, model_dir, test_examples):
  report = evaluate.evaluate_examples(enhancer.Enhancer.from_model_dir(model_dir),
                                      test_examples, progress=False)
  for mine, theirs in zip(report["per_file"], cli_report[0]["per_file"]):
    for side in SIDES:
      for name in metrics.METRIC_NAMES:
        assert mine[side][name] == pytest.approx(theirs[side][name], rel=1e-4, abs=1e-4)


def test_streaming_scores_match_whole_utterance(model_dir, test_examples):
  whole = evaluate.evaluate_examples(enhancer.Enhancer.from_model_dir(model_dir),
                                     test_examples[:1], progress=False)
  streamed = evaluate.evaluate_examples(enhancer.StreamingEnhancer.from_model_dir(model_dir),
                                        test_examples[:1], progress=False)
  for name in ("sdr", "si_sdr", "stoi"):
    assert streamed["summary"]["metrics"][name]["enhanced"] == pytest.approx(
        whole["summary"]["metrics"][name]["enhanced"], abs=1e-3)


def test_silent_reference_is_counted_as_a_pesq_skip(model_dir, test_examples):
  # read_audio refuses silent files, so the silent-reference example is built in memory.
  speech = test_examples[0]
  silent = data.Example(name="silent_reference", noisy=speech.noisy - speech.clean,
                        clean=np.zeros_like(speech.clean))
  report = evaluate.evaluate_examples(enhancer.Enhancer.from_model_dir(model_dir),
                                      [silent, speech], progress=False)
  silent_scores = report["per_file"][0]
  for side in SIDES:
    assert silent_scores[side]["pesq"] is None
  summary = report["summary"]
  assert summary["skipped"]["pesq"] == {metrics.REASON_PESQ_NO_UTTERANCES: 1}
  assert summary["metrics"]["pesq"]["files"] == 1
  assert summary["metrics"]["pesq"]["enhanced"] == pytest.approx(
      report["per_file"][1]["enhanced"]["pesq"])
  assert "skipped PESQ: 1 of 2 files" in metrics.format_table(summary)


def test_a_model_that_outputs_nan_is_reported(test_examples):
  with pytest.raises(UserError, match=r"produced NaN/inf for '.+': the model is broken"):
    evaluate.evaluate_examples(lambda noisy: noisy * np.nan, test_examples[:1], progress=False)


def test_cli_scores_each_utterance_under_several_mixtures(model_dir, tmp_path):
  output = tmp_path / "valid.json"
  proc = subprocess.run(
      [sys.executable, "-m", "tf_tinyse.evaluate", f"--model_dir={model_dir}",
       f"--data_dir={demo_data.path()}", "--split=valid", "--max_files=1",
       "--mixtures_per_file=3", f"--output_json={output}"],
      capture_output=True, text=True, env=ENV, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(output) as f:
    report = json.load(f)
  expected = data.make_evaluation_set(data.discover_corpus(demo_data.path()), "valid", seed=0,
                                      max_files=1, mixtures_per_file=3)
  names = [entry["name"] for entry in report["per_file"]]
  assert names == [e.name for e in expected]
  assert names[1:] == [f"{names[0]}~mix1", f"{names[0]}~mix2"]
  # Each mixture is its own noisy input of the same speech.
  assert len({round(entry["noisy"]["si_sdr"], 6) for entry in report["per_file"]}) == 3
  assert report["split"] == "valid" and report["mixtures_per_file"] == 3
  assert report["summary"]["files"] == 3


def test_cli_refuses_zero_mixtures(model_dir):
  proc = subprocess.run(
      [sys.executable, "-m", "tf_tinyse.evaluate", f"--model_dir={model_dir}",
       f"--data_dir={demo_data.path()}", "--mixtures_per_file=0"],
      capture_output=True, text=True, env=ENV, timeout=180)
  assert proc.returncode != 0
  assert "mixtures_per_file" in proc.stderr
