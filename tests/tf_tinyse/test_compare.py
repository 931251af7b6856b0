import json
import subprocess
import sys

import numpy as np
import pytest

from tf_tinyse import compare
from tf_tinyse import metrics
from tf_tinyse.errors import UserError


def _evaluation(path, enhanced_si_sdr, noisy_si_sdr, names=None):
  """An `evaluate` JSON whose SI-SDR (and SDR) per utterance are given; PESQ/STOI fixed."""
  names = names or [f"utt{i}" for i in range(len(enhanced_si_sdr))]

  def scores(value):
    return {"sdr": float(value), "si_sdr": float(value), "pesq": 2.0, "stoi": 0.8, "skipped": []}

  per_file = [{"name": n, "noise": "rain", "snr_db": 0.0, "noisy": scores(a), "enhanced": scores(b)}
              for n, b, a in zip(names, enhanced_si_sdr, noisy_si_sdr)]
  path.write_text(json.dumps({"summary": metrics.summarize(per_file), "per_file": per_file}))
  return str(path)


def test_paired_interval_is_narrow_when_utterances_vary_but_the_difference_does_not(tmp_path):
  rng = np.random.default_rng(0)
  noisy = rng.normal(0, 5, 40)
  a = noisy + 5 + rng.normal(0, 8, 40)  # utterances differ by ±8 dB
  b = a + 0.3 + rng.normal(0, 0.2, 40)  # the candidate is 0.3 dB better on each
  result = compare.compare([_evaluation(tmp_path / "b.json", b, noisy)],
                           [_evaluation(tmp_path / "a.json", a, noisy)], resamples=4000)
  r = result["metrics"]["si_sdr"]
  assert r["difference"] == pytest.approx(np.mean(b - a))
  assert r["low"] < r["difference"] < r["high"]
  assert r["resolved"] and r["low"] > 0.15 and r["high"] < 0.45
  # The percentile interval agrees with the normal approximation of the paired mean.
  half = 1.96 * np.std(b - a, ddof=1) / np.sqrt(40)
  assert (r["high"] - r["low"]) / 2 == pytest.approx(half, rel=0.15)
  assert result["metrics"]["pesq"]["difference"] == 0.0


def test_a_difference_within_the_noise_is_reported_as_not_resolved(tmp_path):
  rng = np.random.default_rng(1)
  noisy = rng.normal(0, 5, 30)
  a = noisy + 5 + rng.normal(0, 1, 30)
  b = a + rng.normal(0, 1, 30)
  result = compare.compare([_evaluation(tmp_path / "b.json", b, noisy)],
                           [_evaluation(tmp_path / "a.json", a, noisy)], resamples=2000)
  r = result["metrics"]["si_sdr"]
  assert r["low"] < 0 < r["high"] and not r["resolved"]
  assert "interval spans 0: not resolved" in compare.format_comparison(result)


def test_without_a_baseline_it_is_the_improvement_over_the_noisy_input(tmp_path):
  rng = np.random.default_rng(2)
  noisy = rng.normal(0, 5, 25)
  b = noisy + 6 + rng.normal(0, 1, 25)
  r = compare.compare([_evaluation(tmp_path / "b.json", b, noisy)], resamples=2000)
  r = r["metrics"]["si_sdr"]
  assert r["difference"] == pytest.approx(np.mean(b - noisy))
  assert r["resolved"] and r["low"] > 5 and r["seeds"] == [1, 1]


def test_seeds_widen_the_interval_by_their_spread(tmp_path):
  rng = np.random.default_rng(3)
  noisy = rng.normal(0, 5, 40)
  a = noisy + 5 + rng.normal(0, 3, 40)
  offsets = [-0.4, 0.0, 0.4]  # training seeds move the whole test set by ±0.4 dB
  b_paths = [_evaluation(tmp_path / f"b{i}.json", a + 0.2 + o + rng.normal(0, 0.05, 40), noisy)
             for i, o in enumerate(offsets)]
  a_paths = [_evaluation(tmp_path / f"a{i}.json", a + rng.normal(0, 0.05, 40), noisy)
             for i in range(3)]
  seeds = compare.compare(b_paths, a_paths, resamples=4000)["metrics"]["si_sdr"]
  one = compare.compare(b_paths[1:2], a_paths[1:2], resamples=4000)["metrics"]["si_sdr"]
  assert seeds["seeds"] == [3, 3]
  assert one["resolved"]  # one seed alone looks like a clear +0.2 dB
  assert seeds["high"] - seeds["low"] > 5 * (one["high"] - one["low"])
  assert not seeds["resolved"]  # the seed spread (±0.4 dB) swallows it


def test_floored_scores_enter_as_in_the_summaries(tmp_path):
  noisy = np.zeros(10)
  b = np.full(10, 5.0)
  b[0] = -metrics.DB_LIMIT  # one silent output
  r = compare.compare([_evaluation(tmp_path / "b.json", b, noisy)], resamples=500)
  assert r["metrics"]["si_sdr"]["difference"] == pytest.approx(
      (9 * 5.0 + metrics.SUMMARY_DB_FLOOR) / 10)


def test_different_test_sets_cannot_be_paired(tmp_path):
  a = _evaluation(tmp_path / "a.json", [1, 2, 3], [0, 0, 0])
  b = _evaluation(tmp_path / "b.json", [1, 2, 3], [0, 0, 0], names=["x", "y", "z"])
  with pytest.raises(UserError, match="different utterances"):
    compare.compare([b], [a])
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(UserError, match="no per-file scores"):
    compare.compare([str(tmp_path / "bad.json")])
  with pytest.raises(UserError, match="does not exist"):
    compare.compare([str(tmp_path / "missing.json")])


def test_cli_prints_the_intervals_and_writes_json(tmp_path):
  rng = np.random.default_rng(4)
  noisy = rng.normal(0, 5, 20)
  a = _evaluation(tmp_path / "a.json", noisy + 4, noisy)
  b = _evaluation(tmp_path / "b.json", noisy + 5 + rng.normal(0, 0.1, 20), noisy)
  out = tmp_path / "diff.json"
  done = subprocess.run([sys.executable, "-m", "tf_tinyse.compare", f"--baseline={a}",
                         f"--candidate={b}", f"--compare_json={out}", "--resamples=500"],
                        capture_output=True, text=True, check=True)
  assert "si_sdr" in done.stdout and "95 % interval" in done.stdout
  saved = json.loads(out.read_text())
  assert saved["metrics"]["si_sdr"]["resolved"] is True
  bad = subprocess.run([sys.executable, "-m", "tf_tinyse.compare"], capture_output=True,
                       text=True)
  assert bad.returncode == 2 and "error: --candidate needs" in bad.stderr


def test_paired_seeds_cancel_what_the_seed_does_to_both_sides(tmp_path):
  # A QAT model and the float model it was fine-tuned from share their seed's offset
  # (±0.5 dB): paired by seed, the +0.1 dB difference is resolved; drawn apart it is not.
  rng = np.random.default_rng(5)
  noisy = rng.normal(0, 5, 30)
  base = noisy + 5 + rng.normal(0, 3, 30)
  offsets = [-0.5, 0.0, 0.5]
  a = [_evaluation(tmp_path / f"a{i}.json", base + o, noisy) for i, o in enumerate(offsets)]
  b = [_evaluation(tmp_path / f"b{i}.json", base + o + 0.1 + rng.normal(0, 0.02, 30), noisy)
       for i, o in enumerate(offsets)]
  paired = compare.compare(b, a, resamples=3000)["metrics"]["si_sdr"]
  apart = compare.compare(b, a, resamples=3000, pair_seeds=False)["metrics"]["si_sdr"]
  assert paired["seeds_paired"] and not apart["seeds_paired"]
  assert paired["resolved"] and 0.05 < paired["low"] < paired["high"] < 0.15
  assert not apart["resolved"]
