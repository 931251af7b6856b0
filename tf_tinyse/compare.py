"""Differences between evaluations with 95 % bootstrap intervals, over utterances and seeds.

    # one model: its improvement over the noisy input, with an interval over utterances
    python -m tf_tinyse.compare --candidate=scores.json
    # two models on the same test set: B - A, paired by utterance
    python -m tf_tinyse.compare --baseline=a.json --candidate=b.json
    # training choices, one evaluation per seed on each side (comma-separated)
    python -m tf_tinyse.compare --baseline=a0.json,a1.json,a2.json \
        --candidate=b0.json,b1.json,b2.json --compare_json=diff.json

Each file is what `evaluate --output_json` writes. The utterances of every file must be the
same mixtures (same names, noises and SNRs: same split and --eval_seed), so that each
difference is paired: the interval is over the utterance-to-utterance spread of B - A, not
over the much larger spread of the utterances themselves.

The interval is a percentile bootstrap of the mean difference. With one evaluation per side
it resamples utterances (the same draw for both sides: paired). With several seeds it is
two-level: each replicate also draws seeds with replacement, so the interval holds the
seed-to-seed spread of training as well (the same seeds for both sides when the k-th file of
each is the same training seed, --pair_seeds; else each side's own); three seeds are the
least that says anything about it. SDR and SI-SDR enter at `metrics.value_for_mean` (floored at
`metrics.SUMMARY_DB_FLOOR`), as in the evaluation summaries. A difference whose interval
contains 0 is reported as not resolved.
"""
import json

from absl import flags
import numpy as np

from tf_tinyse import cli
from tf_tinyse import fileio
from tf_tinyse import metrics
from tf_tinyse.errors import UserError

flags.DEFINE_list("baseline", [], "Evaluation JSON(s) of the reference (one per seed). Empty: "
                  "the candidate's improvement over its noisy input.")
flags.DEFINE_list("candidate", [], "Evaluation JSON(s) of the model compared (one per seed).")
flags.DEFINE_integer("resamples", 10000, "Bootstrap replicates.", lower_bound=100)
flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap draws.")
flags.DEFINE_bool("pair_seeds", True, "With as many --baseline as --candidate files, the k-th "
                  "of each is the same training seed: resample seeds jointly.")
flags.DEFINE_string("compare_json", None, "Where to write the differences and intervals (JSON).")

FLAGS = flags.FLAGS

CONFIDENCE = 0.95


def read_evaluation(path):
  """The per-file entries of an `evaluate` JSON; UserError when it is not one."""
  try:
    with open(path) as f:
      report = json.load(f)
  except FileNotFoundError:
    raise UserError(f"evaluation file '{path}' does not exist") from None
  except (OSError, ValueError) as e:
    raise UserError(f"evaluation file '{path}' is not readable JSON ({e})") from None
  per_file = report.get("per_file") if isinstance(report, dict) else None
  if not per_file:
    raise UserError(f"evaluation file '{path}' has no per-file scores: expected the JSON "
                    "written by `python -m tf_tinyse.evaluate --output_json`")
  return per_file


def _mixture_key(entry):
  return (entry.get("name"), entry.get("noise"), entry.get("snr_db"))


def score_matrix(evaluations, name, side, paths=None):
  """[evaluations, utterances] values of metric `name` ("enhanced" or "noisy" `side`).

  Utterances are ordered by their first evaluation; every evaluation must hold the same
  mixtures. A value that is None in any evaluation (a skipped metric) drops that utterance
  for this metric in all of them, keeping the differences paired.
  """
  paths = paths or [f"evaluation {i}" for i in range(len(evaluations))]
  keys = [_mixture_key(e) for e in evaluations[0]]
  if len(set(keys)) != len(keys):
    raise UserError(f"{paths[0]}: two utterances share a name, noise and SNR")
  for per_file, path in zip(evaluations[1:], paths[1:]):
    if sorted(map(_mixture_key, per_file), key=repr) != sorted(keys, key=repr):
      raise UserError(f"{path} and {paths[0]} score different utterances or mixtures: "
                      "evaluate both on the same --data_dir, --split and --eval_seed")
  index = [{_mixture_key(e): e for e in per_file} for per_file in evaluations]
  rows, kept = [], []
  for key in keys:
    values = [by_key[key][side].get(name) for by_key in index]
    if all(v is not None for v in values):
      kept.append(key)
      rows.append([metrics.value_for_mean(name, v) for v in values])
  return np.asarray(rows, np.float64).T.reshape(len(evaluations), len(rows)), kept


def bootstrap_difference(baseline, candidate, resamples=10000, seed=0, pair_seeds=True):
  """Mean of `candidate - baseline` and its 95 % percentile-bootstrap interval.

  Args:
    baseline: [seeds_a, utterances] scores; candidate: [seeds_b, utterances], the same
      utterances in the same order (paired).
    pair_seeds: with as many seeds on both sides, row k of each is the same training seed
      (e.g. a QAT model and the float model it was fine-tuned from, or two choices trained
      with the same seeds): draw the same seeds for both sides, so what the seed does to
      both cancels. Otherwise each side's seeds are drawn on their own.
  Returns:
    {"difference", "low", "high", "resolved" (interval excludes 0), "utterances", "seeds"}
  """
  baseline = np.asarray(baseline, np.float64)
  candidate = np.asarray(candidate, np.float64)
  if baseline.ndim != 2 or candidate.ndim != 2 or baseline.shape[1] != candidate.shape[1]:
    raise ValueError(f"expected [seeds, utterances] with equal utterances, got "
                     f"{baseline.shape} and {candidate.shape}")
  n = baseline.shape[1]
  if n < 2:
    raise UserError(f"a bootstrap interval needs at least 2 utterances, got {n}")
  rng = np.random.default_rng(seed)
  utterances = rng.integers(0, n, size=(resamples, n))
  # Each side's seeds are drawn with replacement per replicate (a no-op for one seed);
  # the utterance draw is shared, which pairs the two sides.
  seeds_a = rng.integers(0, baseline.shape[0], size=(resamples, baseline.shape[0]))
  paired = pair_seeds and baseline.shape[0] == candidate.shape[0] > 1
  seeds_b = seeds_a if paired else rng.integers(0, candidate.shape[0],
                                                size=(resamples, candidate.shape[0]))
  per_utterance_a = baseline[seeds_a].mean(axis=1)  # [resamples, n]
  per_utterance_b = candidate[seeds_b].mean(axis=1)
  rows = np.arange(resamples)[:, None]
  replicates = (per_utterance_b[rows, utterances] - per_utterance_a[rows, utterances]).mean(1)
  low, high = np.percentile(replicates, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
  difference = float(candidate.mean() - baseline.mean())
  return {"difference": difference, "low": float(low), "high": float(high),
          "resolved": bool(low > 0 or high < 0), "utterances": int(n),
          "seeds": [int(baseline.shape[0]), int(candidate.shape[0])], "seeds_paired": paired}


def compare(candidate_paths, baseline_paths=(), resamples=10000, seed=0, pair_seeds=True):
  """{metric: bootstrap_difference} of candidate minus baseline (or minus its noisy input)."""
  candidates = [read_evaluation(p) for p in candidate_paths]
  baselines = [read_evaluation(p) for p in baseline_paths]
  if not candidates:
    raise UserError("--candidate needs at least one evaluation JSON")
  evaluations, paths = candidates + baselines, list(candidate_paths) + list(baseline_paths)
  result = {}
  for name in metrics.METRIC_NAMES:
    if baselines:
      enhanced, _ = score_matrix(evaluations, name, "enhanced", paths)
      candidate, reference = enhanced[:len(candidates)], enhanced[len(candidates):]
    else:
      candidate, kept = score_matrix(candidates, name, "enhanced", paths)
      noisy, kept_noisy = score_matrix(candidates, name, "noisy", paths)
      if kept != kept_noisy:  # keep the utterances both sides have
        both = [i for i, k in enumerate(kept) if k in set(kept_noisy)]
        candidate = candidate[:, both]
        noisy = noisy[:, [kept_noisy.index(kept[i]) for i in both]]
      # The noisy input does not depend on the model: one row is every seed's reference.
      reference = noisy[:1]
    if candidate.shape[1] < 2:
      result[name] = None
      continue
    result[name] = bootstrap_difference(reference, candidate, resamples, seed, pair_seeds)
  return {"candidate": list(candidate_paths), "baseline": list(baseline_paths) or "noisy input",
          "confidence": CONFIDENCE, "resamples": resamples, "metrics": result}


def format_comparison(comparison):
  """One line per metric: difference [low, high], and whether the interval excludes 0."""
  lines = [f"{'metric':<12} {'difference':>10}   {int(comparison['confidence'] * 100)} % interval"
           f"      utterances  seeds"]
  for name in metrics.METRIC_NAMES:
    r = comparison["metrics"][name]
    d = 3 if name == "stoi" else 2
    if r is None:
      lines.append(f"{name:<12} {'n/a':>10}")
      continue
    note = "" if r["resolved"] else "   interval spans 0: not resolved"
    lines.append(f"{name:<12} {r['difference']:>+10.{d}f}   [{r['low']:+.{d}f}, {r['high']:+.{d}f}]"
                 f"  {r['utterances']:>10}  {r['seeds'][0]} vs {r['seeds'][1]}{note}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  comparison = compare(FLAGS.candidate, FLAGS.baseline, FLAGS.resamples, FLAGS.bootstrap_seed,
                       FLAGS.pair_seeds)
  print(format_comparison(comparison))
  if FLAGS.compare_json:
    fileio.write_json_atomic(FLAGS.compare_json, comparison)
    print(f"wrote {FLAGS.compare_json}")


if __name__ == "__main__":
  cli.run(main)
