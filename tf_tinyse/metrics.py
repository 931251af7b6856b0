"""Objective speech-enhancement metrics: SDR, SI-SDR, PESQ (wide band), STOI.

Each metric takes 1-D numpy waveforms (reference = clean speech first, then the
estimate) and returns a python float. When a metric has no value for a given
input (a silent reference, a clip too short for PESQ, ...), it raises
`MetricUndefined`, whose `reason` is a short stable string. `score` turns those
into `None` plus a skip record, and `summarize` counts the skips per reason, so
an evaluation over many files never silently averages garbage.

Input conventions shared by every function here:
- Signals are converted to float64 (PESQ and pystoi convert internally as they
  need). NaN or inf in an input raises ValueError: that is a bug upstream, not a
  property of the audio.
- If reference and estimate differ in length, both are trimmed to the shorter
  one (an iSTFT may drop or pad a partial frame at the end); a mismatch of more
  than `LENGTH_MISMATCH_WARN_SAMPLES` is logged because it usually means the two
  files do not belong together.
- dB metrics are limited to +-`DB_LIMIT`, so that an estimate identical to the
  reference (infinite SDR) or an all-zero estimate (minus infinite) still gives
  a finite, JSON-serializable number.

All results (floats, None, strings, dicts and lists of them) are
JSON-serializable with `allow_nan=False`.
"""
import collections
import math
import warnings

from absl import logging
import fast_bss_eval
import numpy as np
import pesq as pesq_lib
import pystoi

DEFAULT_SAMPLE_RATE = 16000

# Float64 holds about 16 significant digits, so a distortion below about
# 1e-15 of the signal energy (150 dB) is rounding noise, not a measurement.
DB_LIMIT = 150.0

# A silent or orthogonal output scores -DB_LIMIT (-150 dB), 150 dB below a useful one: one such
# file would move a mean over 30 files by 5 dB. Means clamp the dB metrics at this floor (far
# below any real enhancement: noisy input at -6 dB SNR scores about -6 dB) and count the files
# that reached it, so a broken output is reported, not averaged in at full weight.
SUMMARY_DB_FLOOR = -50.0
DB_METRICS = ("sdr", "si_sdr")

# Two 512-sample STFT frames: more than an iSTFT's end effects can explain.
LENGTH_MISMATCH_WARN_SAMPLES = 1024

# A reference whose RMS is below 1e-10 (-200 dBFS) carries no signal: every
# metric would divide by (numerically) zero.
_SILENT_MEAN_SQUARE = 1e-20

# bss_eval's distortion filter length (v3 and v4 alike).
BSS_EVAL_FILTER_LENGTH = 512

# Metric names in the order of the paper's Table 1.
METRIC_NAMES = ("sdr", "si_sdr", "pesq", "stoi")

# Skip reasons (stable strings: summaries count them and users read them).
REASON_ZERO_REFERENCE = "zero-energy reference"
REASON_PESQ_NO_UTTERANCES = "NoUtterancesError: silent reference"
REASON_PESQ_TOO_SHORT = "BufferTooShortError: shorter than 0.25 s"
REASON_PESQ_SILENT_ESTIMATE = "silent estimate"
REASON_STOI_TOO_SHORT = "too few speech frames (STOI needs 30 frames of 25.6 ms)"


class MetricUndefined(ValueError):
  """The metric has no value for this input; `reason` says why in a few words.

  A ValueError, so a caller that does not care about skips still sees a clear
  error, while `score` catches it and records the reason.
  """

  def __init__(self, metric, reason):
    # Both in args, so that the exception pickles (e.g. from a worker process).
    super().__init__(metric, reason)
    self.metric = metric
    self.reason = reason

  def __str__(self):
    return f"{self.metric} is undefined for this input: {self.reason}"


def _as_signal(x, name):
  """`x` as a 1-D float64 array (not modified later); rejects other shapes and NaN/inf."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D waveform, got shape {x.shape}")
  if x.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or inf samples")
  return x


def _align(reference, estimate):
  """Validated float64 reference and estimate, trimmed to the shorter length."""
  reference = _as_signal(reference, "reference")
  estimate = _as_signal(estimate, "estimate")
  n = min(reference.size, estimate.size)
  mismatch = abs(reference.size - estimate.size)
  if mismatch > LENGTH_MISMATCH_WARN_SAMPLES:
    logging.warning(
        "reference has %d samples and estimate %d; scoring the first %d of each",
        reference.size, estimate.size, n)
  return reference[:n], estimate[:n]


def _is_silent(x):
  return float(np.mean(np.square(x))) < _SILENT_MEAN_SQUARE


def _check_reference(metric, reference):
  if _is_silent(reference):
    raise MetricUndefined(metric, REASON_ZERO_REFERENCE)


def _clamp_db(value):
  return float(min(max(value, -DB_LIMIT), DB_LIMIT))


def si_sdr(reference, estimate):
  """Scale-invariant SDR in dB (Le Roux et al., "SDR - half-baked or well done?", 2019).

  Both signals are made zero-mean; the reference is scaled by the optimal
  alpha = <s, s_hat> / ||s||^2 and SI-SDR = 10 log10(||alpha s||^2 / ||alpha s - s_hat||^2).
  The result is limited to +-DB_LIMIT (identical signals give +DB_LIMIT, an
  all-zero estimate -DB_LIMIT).

  Raises:
    MetricUndefined (a ValueError): the reference has (numerically) zero energy
      after removing its mean.
    ValueError: NaN/inf samples or a non-1-D input.
  """
  reference, estimate = _align(reference, estimate)
  reference = reference - reference.mean()
  estimate = estimate - estimate.mean()
  _check_reference("si_sdr", reference)
  if _is_silent(estimate):
    return -DB_LIMIT  # alpha = 0: nothing of the reference is left.
  alpha = np.dot(reference, estimate) / np.dot(reference, reference)
  target = alpha * reference
  target_energy = float(np.dot(target, target))
  residual = target - estimate
  residual_energy = float(np.dot(residual, residual))
  # Compare against the scale of the signals, not against 0: an estimate equal
  # to the reference up to rounding leaves a residual of ~1e-32 of its energy.
  if residual_energy <= target_energy * 10.0**(-DB_LIMIT / 10.0):
    return DB_LIMIT
  if target_energy <= residual_energy * 10.0**(-DB_LIMIT / 10.0):
    return -DB_LIMIT  # Estimate orthogonal to (or silent with respect to) s.
  return _clamp_db(10.0 * math.log10(target_energy / residual_energy))


def sdr(reference, estimate):
  """BSS-eval signal-to-distortion ratio in dB (512-tap distortion filter).

  Computed by `fast_bss_eval`, which solves the same least-squares distortion
  filter as bss_eval (museval v4 / mir_eval use 512 taps), in float64. The
  result is limited to +-DB_LIMIT.

  Raises:
    MetricUndefined (a ValueError): the reference has (numerically) zero energy.
    ValueError: NaN/inf samples or a non-1-D input.
  """
  reference, estimate = _align(reference, estimate)
  _check_reference("sdr", reference)
  if _is_silent(estimate):
    # fast_bss_eval would normalize a zero vector (0/0); the SDR of nothing
    # is minus infinity.
    return -DB_LIMIT
  value = fast_bss_eval.sdr(
      reference[None, :], estimate[None, :],
      filter_length=BSS_EVAL_FILTER_LENGTH, clamp_db=DB_LIMIT)
  return _clamp_db(float(np.asarray(value).reshape(-1)[0]))


def pesq_wb(reference, estimate, sample_rate=DEFAULT_SAMPLE_RATE):
  """Wide-band PESQ (ITU-T P.862.2, MOS-LQO, about 1.04 to 4.64).

  Raises:
    MetricUndefined (a ValueError): PESQ finds no utterances in the reference
      (`REASON_PESQ_NO_UTTERANCES`; in practice an all-zero reference, since
      PESQ aligns levels first), the clip is shorter than 0.25 s, or the
      estimate is all zeros.
    ValueError: sample_rate is not 16000 (wide-band PESQ is defined at 16 kHz
      only), NaN/inf samples or a non-1-D input.
  """
  if sample_rate != 16000:
    raise ValueError(f"wide-band PESQ needs 16000 Hz audio, got sample_rate={sample_rate}")
  reference, estimate = _align(reference, estimate)
  # The PESQ library divides both signals by their joint peak, so an all-zero
  # estimate (or both all-zero) crashes it with a NaN level. A silent reference
  # next to a non-silent estimate is left to the library: it raises
  # NoUtterancesError, mapped below.
  if _is_silent(estimate):
    reason = REASON_PESQ_NO_UTTERANCES if _is_silent(reference) else REASON_PESQ_SILENT_ESTIMATE
    raise MetricUndefined("pesq", reason)
  try:
    value = pesq_lib.pesq(sample_rate, reference, estimate, "wb")
  except pesq_lib.NoUtterancesError as e:
    raise MetricUndefined("pesq", REASON_PESQ_NO_UTTERANCES) from e
  except pesq_lib.BufferTooShortError as e:
    raise MetricUndefined("pesq", REASON_PESQ_TOO_SHORT) from e
  return float(value)


def stoi(reference, estimate, sample_rate=DEFAULT_SAMPLE_RATE):
  """Short-time objective intelligibility (Taal et al. 2011), 0 to 1.

  Classic STOI (pystoi, extended=False); pystoi resamples to 10 kHz itself.

  Raises:
    MetricUndefined (a ValueError): the reference is all zeros, or fewer than
      30 speech frames remain after STOI drops the silent ones (pystoi would
      return a meaningless 1e-5).
    ValueError: NaN/inf samples or a non-1-D input.
  """
  reference, estimate = _align(reference, estimate)
  _check_reference("stoi", reference)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    value = pystoi.stoi(reference, estimate, sample_rate, extended=False)
  for w in caught:
    if "Not enough STFT frames" in str(w.message):
      raise MetricUndefined("stoi", REASON_STOI_TOO_SHORT)
    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  return float(value)


def score(clean, estimate, sample_rate=DEFAULT_SAMPLE_RATE):
  """All four metrics of one estimate against its clean reference.

  Returns:
    {"sdr": float|None, "si_sdr": float|None, "pesq": float|None,
     "stoi": float|None, "skipped": [{"metric": name, "reason": text}, ...]}
    A metric is None exactly when it appears in "skipped".
  """
  metric_fns = {
      "sdr": lambda: sdr(clean, estimate),
      "si_sdr": lambda: si_sdr(clean, estimate),
      "pesq": lambda: pesq_wb(clean, estimate, sample_rate),
      "stoi": lambda: stoi(clean, estimate, sample_rate),
  }
  result = {}
  skipped = []
  for name in METRIC_NAMES:
    try:
      result[name] = metric_fns[name]()
    except MetricUndefined as e:
      result[name] = None
      skipped.append({"metric": name, "reason": e.reason})
  result["skipped"] = skipped
  return result


def score_utterance(clean, noisy, enhanced, sample_rate=DEFAULT_SAMPLE_RATE):
  """Scores of the noisy input and of the enhanced output against the clean speech."""
  return {
      "noisy": score(clean, noisy, sample_rate),
      "enhanced": score(clean, enhanced, sample_rate),
  }


def value_for_mean(name, value):
  """`value` of metric `name` as it enters a mean: dB metrics clamped at SUMMARY_DB_FLOOR."""
  if name in DB_METRICS:
    return max(float(value), SUMMARY_DB_FLOOR)
  return float(value)


def mean_for_summary(name, values):
  """(mean of `values` of metric `name` with dB values floored, number of floored values)."""
  values = [float(v) for v in values]
  floored = sum(1 for v in values if name in DB_METRICS and v < SUMMARY_DB_FLOOR)
  return float(np.mean([value_for_mean(name, v) for v in values])), floored


def _skip_reason(noisy, enhanced, name):
  """Why file `name` lacks a noisy/enhanced pair, or None when both exist."""
  reasons = {side: next((s["reason"] for s in scores.get("skipped", []) if s["metric"] == name),
                        "missing")
             for side, scores in (("noisy", noisy), ("enhanced", enhanced))
             if scores.get(name) is None}
  if not reasons:
    return None
  if len(reasons) == 2 and reasons["noisy"] == reasons["enhanced"]:
    return reasons["noisy"]  # Usually the reference itself: say it once.
  return "; ".join(f"{side}: {reason}" for side, reason in reasons.items())


def summarize(per_file):
  """Means over files of each metric, for noisy and enhanced, and the improvement.

  Args:
    per_file: a list of `score_utterance` results (extra keys, e.g. a file
      name, are ignored).

  Returns:
    {"files": number of files,
     "metrics": {name: {"noisy": mean, "enhanced": mean,
                        "improvement": enhanced - noisy, "files": count}},
     "skipped": {name: {reason: count}},
     "floored": {name: {"noisy": count, "enhanced": count}}}
    A metric is averaged over the files where both its noisy and its enhanced
    value exist, so that "improvement" is a paired difference; the other files
    are counted under "skipped". SDR and SI-SDR values below SUMMARY_DB_FLOOR (a
    silent or orthogonal output scores -150 dB) enter the means at the floor and
    are counted under "floored" (only metrics with such files appear). Means over
    zero files are None.
  """
  metrics = {}
  skipped = {}
  floored = {}
  for name in METRIC_NAMES:
    pairs = []
    reasons = collections.Counter()
    for entry in per_file:
      reason = _skip_reason(entry["noisy"], entry["enhanced"], name)
      if reason is None:
        pairs.append((entry["noisy"][name], entry["enhanced"][name]))
      else:
        reasons[reason] += 1
    if pairs:
      noisy_mean, noisy_floored = mean_for_summary(name, [p[0] for p in pairs])
      enhanced_mean, enhanced_floored = mean_for_summary(name, [p[1] for p in pairs])
      improvement = float(np.mean([value_for_mean(name, p[1]) - value_for_mean(name, p[0])
                                   for p in pairs]))
      if noisy_floored or enhanced_floored:
        floored[name] = {"noisy": noisy_floored, "enhanced": enhanced_floored}
    else:
      noisy_mean = enhanced_mean = improvement = None
    metrics[name] = {"noisy": noisy_mean, "enhanced": enhanced_mean,
                     "improvement": improvement, "files": len(pairs)}
    if reasons:
      skipped[name] = dict(reasons)
  return {"files": len(per_file), "metrics": metrics, "skipped": skipped, "floored": floored}


_LABELS = {"sdr": "SDR (dB)", "si_sdr": "SI-SDR (dB)", "pesq": "PESQ", "stoi": "STOI"}
_DECIMALS = {"sdr": 2, "si_sdr": 2, "pesq": 2, "stoi": 3}


def _fmt(value, decimals, signed=False):
  if value is None:
    return "n/a"
  return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def format_table(summary):
  """A compact text table `metric | noisy | enhanced | Δ | files` of a `summarize` result.

  Skipped metrics follow the table, one line per reason with its count.
  """
  header = ("metric", "noisy", "enhanced", "Δ", "files")
  rows = []
  for name in METRIC_NAMES:
    m = summary["metrics"][name]
    d = _DECIMALS[name]
    rows.append((_LABELS[name], _fmt(m["noisy"], d), _fmt(m["enhanced"], d),
                 _fmt(m["improvement"], d, signed=True), str(m["files"])))
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

  def line(cells):
    first = cells[0].ljust(widths[0])
    rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
    return " | ".join([first] + rest)

  lines = [line(header), "-+-".join("-" * w for w in widths)]
  lines += [line(r) for r in rows]
  for name, reasons in summary.get("skipped", {}).items():
    for reason, count in reasons.items():
      lines.append(f"skipped {_LABELS[name]}: {count} of {summary['files']} files ({reason})")
  for name, counts in summary.get("floored", {}).items():
    for side, count in counts.items():
      if count:
        lines.append(f"{_LABELS[name]} of {count} {side} file(s) below {SUMMARY_DB_FLOOR:.0f} dB "
                     f"(silent or orthogonal signal), averaged as {SUMMARY_DB_FLOOR:.0f} dB")
  return "\n".join(lines)
