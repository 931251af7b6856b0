"""Behaviour of tf_tinyse.metrics against analytic values and real speech."""
import json
import math
import pathlib
import pickle

import numpy as np
import pytest

import tf_tinyse
from tf_tinyse import audio as audio_io
from tf_tinyse import metrics

SR = 16000
DEMO_SPEECH = pathlib.Path(tf_tinyse.__file__).parent / "demo_data" / "speech" / "test"


@pytest.fixture(scope="module")
def speech():
  """3 s of real read speech (float64) from the built-in demo corpus."""
  files = sorted(DEMO_SPEECH.glob("*.flac"))
  if not files:
    pytest.skip(f"no demo speech clips in {DEMO_SPEECH} (the demo corpus is not installed)")
  audio = audio_io.read_audio(files[0], SR).astype(np.float64)
  # Start 0.5 s in so the clip is mostly speech, not leading silence.
  return audio[SR // 2:SR // 2 + 3 * SR]


def white_noise(n, seed=0):
  return np.random.default_rng(seed).standard_normal(n)


def at_snr(signal, noise, snr_db):
  """`noise` scaled so that energy(signal) / energy(noise) is `snr_db`."""
  gain = np.sqrt(np.sum(signal**2) / np.sum(noise**2) / 10.0**(snr_db / 10.0))
  return noise * gain


# --- SI-SDR ---------------------------------------------------------------


def test_si_sdr_of_identical_signals_is_very_large(speech):
  assert metrics.si_sdr(speech, speech) > 100.0


def test_si_sdr_is_invariant_to_the_estimate_scale(speech):
  estimate = speech + at_snr(speech, white_noise(speech.size), 5.0)
  unscaled = metrics.si_sdr(speech, estimate)
  assert metrics.si_sdr(speech, 0.5 * estimate) == pytest.approx(unscaled, abs=1e-9)
  assert metrics.si_sdr(speech, 3.0 * estimate) == pytest.approx(unscaled, abs=1e-9)


def test_si_sdr_with_orthogonal_noise_equals_the_snr(speech):
  s = speech - speech.mean()
  noise = white_noise(s.size, seed=1)
  noise -= noise.mean()
  noise -= np.dot(noise, s) / np.dot(s, s) * s  # Orthogonal to s: alpha is exactly 1.
  noise = at_snr(s, noise, 10.0)
  assert metrics.si_sdr(s, s + noise) == pytest.approx(10.0, abs=0.1)
  # Doubling the estimate's speech part leaves SI-SDR at 10 log10(4 |s|^2 / |n|^2).
  assert metrics.si_sdr(s, 2.0 * s + noise) == pytest.approx(10.0 + 20.0 * math.log10(2.0),
                                                             abs=0.1)


def test_si_sdr_ignores_dc_offsets(speech):
  estimate = speech + at_snr(speech, white_noise(speech.size), 10.0)
  assert metrics.si_sdr(speech + 0.2, estimate - 0.1) == pytest.approx(
      metrics.si_sdr(speech, estimate), abs=1e-6)


def test_si_sdr_rejects_a_zero_energy_reference(speech):
  with pytest.raises(ValueError, match="zero-energy reference"):
    metrics.si_sdr(np.zeros_like(speech), speech)
  # A constant is zero after removing the mean.
  with pytest.raises(ValueError, match="zero-energy reference"):
    metrics.si_sdr(np.full_like(speech, 0.3), speech)


def test_si_sdr_of_a_silent_estimate_is_the_floor(speech):
  assert metrics.si_sdr(speech, np.zeros_like(speech)) == -metrics.DB_LIMIT


def test_length_mismatch_trims_to_the_shorter_signal(speech):
  estimate = speech + at_snr(speech, white_noise(speech.size), 10.0)
  padded = np.concatenate([estimate, np.ones(300)])  # Junk beyond the reference.
  assert metrics.si_sdr(speech, padded) == pytest.approx(metrics.si_sdr(speech, estimate))
  assert metrics.si_sdr(speech[:-300], estimate) == pytest.approx(
      metrics.si_sdr(speech[:-300], estimate[:-300]))


def test_bad_inputs_are_rejected(speech):
  with_nan = speech.copy()
  with_nan[10] = np.nan
  for fn in (metrics.si_sdr, metrics.sdr, metrics.pesq_wb, metrics.stoi):
    with pytest.raises(ValueError, match="NaN"):
      fn(speech, with_nan)
  with pytest.raises(ValueError, match="1-D"):
    metrics.si_sdr(np.stack([speech, speech]), speech)
  with pytest.raises(ValueError, match="16000"):
    metrics.pesq_wb(speech, speech, sample_rate=8000)


# --- BSS-eval SDR ---------------------------------------------------------


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_sdr_of_speech_plus_white_noise_is_close_to_the_snr(speech, snr_db):
  noisy = speech + at_snr(speech, white_noise(speech.size, seed=2), snr_db)
  assert metrics.sdr(speech, noisy) == pytest.approx(snr_db, abs=0.5)


def test_sdr_forgives_a_short_filter_that_si_sdr_punishes(speech):
  # An echo 3 ms later is within bss_eval's 512-tap distortion filter, so SDR
  # treats it as (allowed) filtering, while SI-SDR counts it as error.
  echo = np.concatenate([np.zeros(48), speech[:-48]])
  estimate = speech + 0.7 * echo
  assert metrics.sdr(speech, estimate) > 40.0
  assert metrics.si_sdr(speech, estimate) < 10.0


def test_sdr_limits_are_finite(speech):
  assert metrics.sdr(speech, speech) == metrics.DB_LIMIT
  assert metrics.sdr(speech, np.zeros_like(speech)) == -metrics.DB_LIMIT
  with pytest.raises(metrics.MetricUndefined, match="zero-energy reference"):
    metrics.sdr(np.zeros_like(speech), speech)


# --- PESQ -----------------------------------------------------------------


def test_pesq_of_identical_speech_is_the_wideband_maximum(speech):
  assert metrics.pesq_wb(speech, speech) == pytest.approx(4.64, abs=0.01)


def test_pesq_decreases_with_added_noise(speech):
  noise = white_noise(speech.size, seed=3)
  light = metrics.pesq_wb(speech, speech + at_snr(speech, noise, 30.0))
  heavy = metrics.pesq_wb(speech, speech + at_snr(speech, noise, 5.0))
  assert 4.64 > light > heavy >= 1.0


def test_pesq_of_a_silent_reference_is_undefined_with_the_reason(speech):
  with pytest.raises(metrics.MetricUndefined) as info:
    metrics.pesq_wb(np.zeros_like(speech), speech)
  assert info.value.reason == metrics.REASON_PESQ_NO_UTTERANCES
  assert isinstance(info.value, ValueError)
  scores = metrics.score(np.zeros_like(speech), speech)
  assert scores["pesq"] is None
  assert {"metric": "pesq", "reason": metrics.REASON_PESQ_NO_UTTERANCES} in scores["skipped"]


def test_pesq_of_too_short_or_silent_estimates_is_undefined(speech):
  with pytest.raises(metrics.MetricUndefined) as info:
    metrics.pesq_wb(speech[:SR // 8], speech[:SR // 8])
  assert info.value.reason == metrics.REASON_PESQ_TOO_SHORT
  with pytest.raises(metrics.MetricUndefined) as info:
    metrics.pesq_wb(speech, np.zeros_like(speech))
  assert info.value.reason == metrics.REASON_PESQ_SILENT_ESTIMATE


# --- STOI -----------------------------------------------------------------


def test_stoi_of_identical_speech_is_one(speech):
  assert metrics.stoi(speech, speech) == pytest.approx(1.0, abs=1e-6)


def test_stoi_is_lower_with_heavy_noise(speech):
  noise = white_noise(speech.size, seed=4)
  light = metrics.stoi(speech, speech + at_snr(speech, noise, 20.0))
  heavy = metrics.stoi(speech, speech + at_snr(speech, noise, -5.0))
  assert 1.0 > light > heavy
  assert heavy < 0.7


def test_stoi_of_a_clip_too_short_to_measure_is_undefined(speech):
  with pytest.raises(metrics.MetricUndefined) as info:
    metrics.stoi(speech[:SR // 4], speech[:SR // 4])
  assert info.value.reason == metrics.REASON_STOI_TOO_SHORT


# --- score, summarize, format_table ---------------------------------------


def test_score_utterance_gives_plain_json_floats(speech):
  noisy = speech + at_snr(speech, white_noise(speech.size, seed=5), 0.0)
  enhanced = speech + at_snr(speech, white_noise(speech.size, seed=5), 15.0)
  result = metrics.score_utterance(speech, noisy, enhanced, SR)
  assert set(result) == {"noisy", "enhanced"}
  for scores in result.values():
    assert set(scores) == {"sdr", "si_sdr", "pesq", "stoi", "skipped"}
    assert scores["skipped"] == []
    assert all(type(scores[m]) is float for m in metrics.METRIC_NAMES)
  for m in metrics.METRIC_NAMES:
    assert result["enhanced"][m] > result["noisy"][m]
  json.dumps(result, allow_nan=False)  # Raises on NaN/inf or numpy types.


def _scores(sdr, si_sdr, pesq, stoi, skipped=()):
  return {"sdr": sdr, "si_sdr": si_sdr, "pesq": pesq, "stoi": stoi,
          "skipped": [{"metric": m, "reason": r} for m, r in skipped]}


SILENT = metrics.REASON_PESQ_NO_UTTERANCES


def test_summarize_means_improvements_and_skip_counts():
  per_file = [
      {"file": "a.flac",
       "noisy": _scores(2.0, 1.0, 1.5, 0.70), "enhanced": _scores(10.0, 9.0, 2.5, 0.80)},
      {"file": "b.flac",
       "noisy": _scores(4.0, 3.0, 2.0, 0.80), "enhanced": _scores(8.0, 7.0, 3.0, 0.90)},
      {"noisy": _scores(0.0, 0.0, None, 0.5, [("pesq", SILENT)]),
       "enhanced": _scores(6.0, 5.0, None, 0.6, [("pesq", SILENT)])},
      {"noisy": _scores(0.0, 0.0, None, 0.5, [("pesq", SILENT)]),
       "enhanced": _scores(6.0, 5.0, None, 0.6, [("pesq", SILENT)])},
      # Only the enhanced side lacks PESQ: the file leaves the PESQ average.
      {"noisy": _scores(1.0, 1.0, 1.2, 0.5),
       "enhanced": _scores(2.0, 2.0, None, 0.6, [("pesq", metrics.REASON_PESQ_SILENT_ESTIMATE)])},
  ]
  summary = metrics.summarize(per_file)
  assert summary["files"] == 5
  sdr = summary["metrics"]["sdr"]
  assert sdr["files"] == 5
  assert sdr["noisy"] == pytest.approx(7.0 / 5)
  assert sdr["enhanced"] == pytest.approx(32.0 / 5)
  assert sdr["improvement"] == pytest.approx(5.0)
  pesq = summary["metrics"]["pesq"]
  assert pesq["files"] == 2
  assert pesq["noisy"] == pytest.approx(1.75)
  assert pesq["enhanced"] == pytest.approx(2.75)
  assert pesq["improvement"] == pytest.approx(1.0)
  assert summary["metrics"]["stoi"]["improvement"] == pytest.approx(0.1)
  assert summary["skipped"] == {
      "pesq": {SILENT: 2, f"enhanced: {metrics.REASON_PESQ_SILENT_ESTIMATE}": 1}}
  json.dumps(summary, allow_nan=False)


def test_a_silent_output_is_floored_and_reported_not_averaged_at_minus_150_db(speech):
  # Ten real utterance scores near +10 dB and one all-zero output: the broken file must not
  # drag the SI-SDR mean down by 15 dB, and the summary must say that it happened.
  noisy = speech + at_snr(speech, white_noise(speech.size, seed=4), 0.0)
  good = metrics.score_utterance(speech, noisy, speech + at_snr(speech, white_noise(
      speech.size, seed=5), 10.0), SR)
  broken = metrics.score_utterance(speech, noisy, np.zeros_like(speech), SR)
  assert broken["enhanced"]["si_sdr"] == -metrics.DB_LIMIT
  summary = metrics.summarize([good] * 10 + [broken])
  si_sdr = summary["metrics"]["si_sdr"]
  expected = (10 * good["enhanced"]["si_sdr"] + metrics.SUMMARY_DB_FLOOR) / 11
  assert si_sdr["enhanced"] == pytest.approx(expected)
  assert si_sdr["enhanced"] > good["enhanced"]["si_sdr"] - 6.0  # -150 would cost 14.6 dB
  assert si_sdr["improvement"] == pytest.approx(si_sdr["enhanced"] - si_sdr["noisy"])
  assert summary["floored"]["si_sdr"] == {"noisy": 0, "enhanced": 1}
  assert summary["floored"]["sdr"] == {"noisy": 0, "enhanced": 1}
  assert "pesq" not in summary["floored"]
  table = metrics.format_table(summary)
  assert "SI-SDR (dB) of 1 enhanced file(s) below -50 dB" in table
  assert metrics.summarize([good])["floored"] == {}


def test_summarize_of_no_usable_files_has_no_means():
  summary = metrics.summarize([])
  assert summary["files"] == 0
  assert summary["metrics"]["sdr"] == {"noisy": None, "enhanced": None,
                                       "improvement": None, "files": 0}
  assert summary["skipped"] == {}
  assert "n/a" in metrics.format_table(summary)


def test_real_silent_reference_is_counted_as_skipped(speech):
  noisy = speech + at_snr(speech, white_noise(speech.size, seed=6), 5.0)
  per_file = [metrics.score_utterance(speech, noisy, speech, SR),
              metrics.score_utterance(np.zeros_like(speech), noisy, speech, SR)]
  summary = metrics.summarize(per_file)
  assert summary["metrics"]["pesq"]["files"] == 1
  assert summary["skipped"]["pesq"] == {SILENT: 1}
  assert summary["skipped"]["si_sdr"] == {metrics.REASON_ZERO_REFERENCE: 1}


def test_format_table_shows_the_numbers_and_the_skips():
  per_file = [
      {"noisy": _scores(2.0, 1.0, 1.5, 0.70), "enhanced": _scores(10.4, 9.0, 2.5, 0.85)},
      {"noisy": _scores(0.0, 0.0, None, 0.5, [("pesq", SILENT)]),
       "enhanced": _scores(6.0, 5.0, None, 0.6, [("pesq", SILENT)])},
  ]
  table = metrics.format_table(metrics.summarize(per_file))
  lines = table.splitlines()
  assert [c.strip() for c in lines[0].split("|")] == ["metric", "noisy", "enhanced", "Δ", "files"]
  sdr_line = next(line for line in lines if line.startswith("SDR"))
  assert [c.strip() for c in sdr_line.split("|")] == ["SDR (dB)", "1.00", "8.20", "+7.20", "2"]
  pesq_line = next(line for line in lines if line.startswith("PESQ"))
  assert [c.strip() for c in pesq_line.split("|")] == ["PESQ", "1.50", "2.50", "+1.00", "1"]
  stoi_line = next(line for line in lines if line.startswith("STOI"))
  assert [c.strip() for c in stoi_line.split("|")] == ["STOI", "0.600", "0.725", "+0.125", "2"]
  assert any("PESQ" in line and "1 of 2" in line and SILENT in line for line in lines)


def test_metric_undefined_survives_pickling_across_processes():
  error = pickle.loads(pickle.dumps(metrics.MetricUndefined("pesq", SILENT)))
  assert (error.metric, error.reason) == ("pesq", SILENT)
  assert str(error) == f"pesq is undefined for this input: {SILENT}"


# --- SDR against an independent implementation ----------------------------


def _delayed(signal, samples):
  return np.concatenate([np.zeros(samples), signal[:-samples]])


@pytest.mark.filterwarnings("ignore:mir_eval.separation.bss_eval_sources:FutureWarning")
def test_sdr_equals_mir_eval_bss_eval_sources(speech, noise_clip):
  """`sdr` (fast_bss_eval, 512 taps) against mir_eval's bss_eval_sources (the reference BSS-eval
  v3 code, 512 taps, one source: no interference term) on real speech and real noise."""
  from mir_eval import separation  # pylint: disable=g-import-not-at-top
  import scipy.signal  # pylint: disable=g-import-not-at-top
  noise = np.asarray(noise_clip, np.float64)[:speech.size]
  lowpass = scipy.signal.lfilter(*scipy.signal.butter(4, 2000, fs=SR), speech)
  cases = {f"speech + noise at {snr} dB": speech + at_snr(speech, noise, snr)
           for snr in (-5, 0, 5, 10, 20)}
  cases["speech low-passed at 2 kHz"] = lowpass
  cases["low-passed speech + noise at 5 dB"] = lowpass + at_snr(speech, noise, 5)
  # A delay inside the 512-tap filter is forgiven, one beyond it is not: the filter length of
  # both implementations must agree (256 or 1024 taps would swap these two results).
  cases["speech delayed 300 samples + noise at 10 dB"] = (_delayed(speech, 300) +
                                                          at_snr(speech, noise, 10))
  cases["speech delayed 700 samples + noise at 10 dB"] = (_delayed(speech, 700) +
                                                          at_snr(speech, noise, 10))
  ours = {name: metrics.sdr(speech, estimate) for name, estimate in cases.items()}
  theirs = {name: float(separation.bss_eval_sources(speech[None], estimate[None],
                                                    compute_permutation=False)[0][0])
            for name, estimate in cases.items()}
  # Both solve the same least-squares distortion filter in float64; measured (mir_eval 0.8.2,
  # fast_bss_eval 0.1.4) the largest difference is 1.4e-10 dB (at 52 dB, the low-passed speech),
  # 2e-13 dB at most with noise. 1e-6 dB leaves a margin of 1e4 and is far below any difference
  # a wrong filter length, projection or energy ratio makes (several dB here).
  for name in cases:
    assert ours[name] == pytest.approx(theirs[name], abs=1e-6), (name, ours[name], theirs[name])
  # The cases span the range that matters (measured: -9.0 (delay 700) ... 52.6 dB).
  assert ours["speech + noise at -5 dB"] < -3 and ours["speech low-passed at 2 kHz"] > 40
  assert ours["speech delayed 300 samples + noise at 10 dB"] > 9
  assert ours["speech delayed 700 samples + noise at 10 dB"] < 0
