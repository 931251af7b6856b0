"""Ablation: train variants of one config for the same steps and seed, score each on validation.

  python benchmarks/ablation.py --flagfile=configs/demo.cfg --ablation_dir=runs/ablation \
      [--variants=none,spectral_shaping,...] [--variant="wide: --lstm_units=256,256"] \
      [--ablation_steps=4000] [--holdout_from=DIR | --eval_data_dir=DIR --eval_split=valid] \
      [--parallel=2]

Every variant is the flagfile's training (`python -m tf_tinyse.train`, float, --seed) plus its
own flags: the built-in variants switch one augmentation on (`AUGMENTATIONS`), `all` switches
on every one, and `--variant` adds any other set of training flags (a recipe: width, batch,
segment length, learning rate, steps). Each trained model is scored by `tf_tinyse.evaluate`
on the same deterministic mixtures of the evaluation set, which is a validation set, never
the test split:

- `--holdout_from=DIR`: the speech and noise of DIR's `train/` split that the training corpus
  lacks — speakers it has none of (by --speaker_id_pattern) and noise recordings it does not
  hold (by --noise_source_pattern) — linked into `<ablation_dir>/holdout/` as its test split
  (e.g. `../shared/data` for a model trained on the demo corpus, which is drawn from it);
- otherwise `--eval_data_dir` (default the training corpus) at `--eval_split` (default
  `valid`, the held-out validation speakers and noise recordings).

`--probe_noises` (default tones and clicks) scores every variant also on the same speech mixed
with synthetic probe noises of kinds no recording in the corpus holds
(`tf_tinyse.data.probe_noise`: sines, hum, beeps, DTMF, sirens, whines; cracks, ringing
clicks, crackle, ticks),
laid out under `<ablation_dir>/probe_<kind>/`.

A variant whose scores exist is not trained again, and an interrupted one resumes from its
checkpoint, so the command can be rerun. Prints one row per variant: the improvement over the
noisy input of SI-SDR, SDR, PESQ and STOI, the best validation step, and the training's wall
and CPU minutes (the child processes' user + system time, which does not depend on how many
variants run at once); writes them to `<ablation_dir>/ablation.json`.
"""
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_tinyse  # pylint: disable=g-import-not-at-top,unused-import  (TF_USE_LEGACY_KERAS, console)
from absl import flags  # pylint: disable=g-import-not-at-top

from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import fileio
from tf_tinyse import metrics
from tf_tinyse import train  # pylint: disable=unused-import  (the flags forwarded to training)
from tf_tinyse.errors import UserError

# One augmentation on each, at the probability the configs use when it is chosen.
AUGMENTATIONS = {
    "none": [],
    "spectral_shaping": ["--augment_spectral_shaping=0.5"],
    "speed": ["--augment_speed=0.5"],
    "reverb": ["--augment_reverb=0.3"],
    "noise_mix": ["--augment_noise_mix=0.5"],
    "babble": ["--augment_babble=0.3"],
    "tonal_noise": ["--augment_tonal_noise=0.3"],
    "clicks": ["--augment_clicks=0.3"],
    "rumble": ["--augment_rumble=0.3"],
    "snr_normal": ["--snr_distribution=normal"],
    "level_lufs": ["--level_distribution=lufs"],
}
AUGMENTATIONS["all"] = [f for name, fs in AUGMENTATIONS.items() for f in fs]

flags.DEFINE_string("ablation_dir", None, "Folder for the variants' models, scores and table.")
flags.DEFINE_list("variants", list(AUGMENTATIONS), "Built-in variants to run: "
                  + ", ".join(AUGMENTATIONS) + ".")
flags.DEFINE_multi_string("variant", [], "Another variant, 'NAME: --flag=value ...' (training "
                          "flags added to --flagfile's).")
flags.DEFINE_integer("ablation_steps", 4000, "Training steps of every variant (a variant's own "
                     "--steps wins).", lower_bound=1)
flags.DEFINE_string("holdout_from", None, "Score on the train split of this corpus minus the "
                    "training corpus's speakers and noise recordings (see the docstring).")
flags.DEFINE_string("eval_data_dir", None, "Corpus scored when --holdout_from is not given "
                    "(default: the training corpus).")
flags.DEFINE_enum("eval_split", "valid", ["train", "valid", "test"], "Split of --eval_data_dir "
                  "scored (never tune on test).")
flags.DEFINE_integer("max_eval_files", 40, "Utterances scored per variant (spread evenly).")
flags.DEFINE_list("probe_noises", list(data.probe_noise.KINDS), "Probe noise kinds "
                  f"({', '.join(data.probe_noise.KINDS)}) each variant is also scored on, mixed "
                  "with the evaluation speech; empty for none.")
flags.DEFINE_integer("parallel", 1, "Variants trained at once (2 gives ~1.3x the throughput "
                     "of 1 on 2 CPU cores).", lower_bound=1)

FLAGS = flags.FLAGS



def parse_variant(text):
  """'NAME: --flag=v ...' -> (NAME, [flags]); raises UserError when malformed."""
  name, sep, rest = text.partition(":")
  name = name.strip()
  args = shlex.split(rest)
  if not sep or not name or any(not a.startswith("--") for a in args):
    raise UserError(f"--variant={text!r}: expected 'NAME: --flag=value ...'")
  return name, args


def holdout_corpus(source_dir, training_dir, out_dir, speaker_pattern, noise_pattern):
  """Links the train files of `source_dir` that `training_dir` lacks into out_dir/*/test.

  Speech is kept only from speakers with no file in training_dir, noise only from recordings
  (noise sources) not in it. Returns {"speech": n, "noise": n}; raises UserError when either
  is empty.
  """
  training = data.discover_corpus(training_dir, speaker_id_pattern=speaker_pattern,
                                  noise_source_pattern=noise_pattern)
  if training.layout != data.SPEECH_NOISE:
    raise UserError("--holdout_from needs a speech/ + noise/ training corpus")
  source = data.discover_corpus(source_dir, speaker_id_pattern=speaker_pattern,
                                noise_source_pattern=noise_pattern)
  if source.layout != data.SPEECH_NOISE:
    raise UserError(f"--holdout_from={source_dir}: expected speech/ + noise/ folders")

  def every(corpus, kind, splits=data.SPLITS):
    return [p for split in splits for p in getattr(getattr(corpus, split), kind)]

  known_speakers = {data.speaker_id(p, speaker_pattern) for p in every(training, "clean")}
  known_noises = {data.noise_source(p, noise_pattern) for p in every(training, "noise")}
  known_noises |= {os.path.basename(p) for p in every(training, "noise")}
  # The source's validation split was held out of its train folder: both are not test.
  speech = sorted(p for p in every(source, "clean", ("train", "valid"))
                  if data.speaker_id(p, speaker_pattern) not in known_speakers)
  noise = sorted(p for p in every(source, "noise", ("train", "valid"))
                 if data.noise_source(p, noise_pattern) not in known_noises
                 and os.path.basename(p) not in known_noises)
  if not speech or not noise:
    raise UserError(f"--holdout_from={source_dir}: its train split has no "
                    f"{'speakers' if not speech else 'noise recordings'} that the training "
                    f"corpus {training_dir} lacks")
  for kind, files in (("speech", speech), ("noise", noise)):
    fileio.link_files(files, os.path.join(out_dir, kind, "test"))
  return {"speech": len(speech), "noise": len(noise)}


def _given_flags(module_prefix, exclude=()):
  """The flags of modules `module_prefix*` set on this command line (or its --flagfile)."""
  given = []
  for name in sorted(FLAGS):
    module = FLAGS.find_module_defining_flag(name) or ""
    if FLAGS[name].present and module.startswith(module_prefix) and name not in exclude:
      given.append(FLAGS[name].serialize())
  return given


def _run(args, log_path):
  """Runs args; returns (wall s, CPU s of the child), raises UserError naming the log."""
  started = time.time()
  with open(log_path, "w") as log:
    child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    # wait4 gives this child's own CPU time, also while other variants run beside it.
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
  if child.returncode:
    raise UserError(f"'{' '.join(args[:3])} ...' failed (exit {child.returncode}); see "
                    f"{log_path}")
  return time.time() - started, usage.ru_utime + usage.ru_stime


def _scores(model_dir, eval_args, suffix):
  """`tf_tinyse.evaluate`'s summary of `model_dir` on `eval_args`, kept in
  `<model_dir>.<suffix>.json` (an existing one is read, not scored again)."""
  scores_path = f"{model_dir}.{suffix}.json"
  if not os.path.exists(scores_path):
    _run([sys.executable, "-m", "tf_tinyse.evaluate", f"--model_dir={model_dir}",
          f"--output_json={scores_path}"] + eval_args, f"{model_dir}.{suffix}.evaluate.log")
  with open(scores_path) as f:
    summary = json.load(f)["summary"]
  return {"files": summary["files"],
          "improvement": {m: summary["metrics"][m]["improvement"] for m in metrics.METRIC_NAMES},
          "noisy": {m: summary["metrics"][m]["noisy"] for m in metrics.METRIC_NAMES}}


def _add_probes(row, model_dir, probe_args):
  """Scores the probe noise sets the row lacks; returns whether it added any."""
  probes = row.setdefault("probes", {})
  missing = [kind for kind in probe_args if kind not in probes]
  for kind in missing:
    probes[kind] = _scores(model_dir, probe_args[kind], f"probe_{kind}")
  return bool(missing)


def run_variant(name, extra, eval_args, probe_args=None):
  """Trains and scores one variant unless its scores exist (then only the probe sets it
  lacks, {kind: evaluate args}, are scored); returns its result row."""
  model_dir = os.path.join(FLAGS.ablation_dir, name)
  result_path = model_dir + ".result.json"
  probe_args = probe_args or {}
  if os.path.exists(result_path):
    with open(result_path) as f:
      row = json.load(f)
    if _add_probes(row, model_dir, probe_args):
      fileio.write_json_atomic(result_path, row)
    return row
  steps = [] if any(a.startswith("--steps=") for a in extra) else [
      f"--steps={FLAGS.ablation_steps}"]
  # Later flags win: the variant's own flags override the flagfile's.
  train_args = ([sys.executable, "-m", "tf_tinyse.train", f"--data_dir={FLAGS.data_dir}"]
                + _given_flags("tf_tinyse", exclude=("data_dir", "model_dir"))
                + [f"--model_dir={model_dir}"] + steps + extra)
  wall_s, cpu_s = _run(train_args, model_dir + ".train.log")
  with open(os.path.join(model_dir, "best", "info.json")) as f:
    best = json.load(f)
  row = {"variant": name, "flags": extra, "best_step": best.get("step"),
         "train_wall_minutes": wall_s / 60, "train_cpu_minutes": cpu_s / 60,
         **_scores(model_dir, eval_args, "scores")}
  _add_probes(row, model_dir, probe_args)
  # Resumed runs measure only their last part: say so rather than report a short time.
  with open(model_dir + ".train.log") as f:
    row["resumed"] = "(started at 0)" not in f.read()
  fileio.write_json_atomic(result_path, row)
  return row


def format_rows(rows):
  kinds = [k for k in data.probe_noise.KINDS if any(k in r.get("probes", {}) for r in rows)]
  header = ("| variant | ΔSI-SDR | ΔSDR | ΔPESQ | ΔSTOI | "
            + "".join(f"{k} ΔSI-SDR / ΔSTOI | " for k in kinds)
            + "best step | train min (wall / CPU) |")
  lines = [header, "|---" * (7 + len(kinds)) + "|"]
  for r in rows:
    d = r["improvement"]
    probes = ""
    for kind in kinds:
      p = r.get("probes", {}).get(kind)
      probes += (f"{p['improvement']['si_sdr']:+.2f} / {p['improvement']['stoi']:+.3f} | "
                 if p else "— | ")
    lines.append(f"| {r['variant']} | {d['si_sdr']:+.2f} | {d['sdr']:+.2f} | {d['pesq']:+.3f} "
                 f"| {d['stoi']:+.3f} | {probes}{r['best_step']} | "
                 f"{r['train_wall_minutes']:.1f} / "
                 f"{r['train_cpu_minutes']:.1f}{' (resumed)' if r['resumed'] else ''} |")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  if not FLAGS.ablation_dir:
    raise UserError("--ablation_dir is required: where the variants' models and scores go")
  if not FLAGS.data_dir:
    FLAGS.data_dir = demo_data.path()
  unknown_probes = [k for k in FLAGS.probe_noises if k not in data.probe_noise.KINDS]
  if unknown_probes:
    raise UserError(f"unknown --probe_noises {unknown_probes}; known: "
                    f"{', '.join(data.probe_noise.KINDS)}")
  unknown = [v for v in FLAGS.variants if v not in AUGMENTATIONS]
  if unknown:
    raise UserError(f"unknown --variants {unknown}; built in: {', '.join(AUGMENTATIONS)}")
  variants = [(v, AUGMENTATIONS[v]) for v in FLAGS.variants]
  variants += [parse_variant(v) for v in FLAGS.variant]
  names = [n for n, _ in variants]
  if len(set(names)) != len(names):
    raise UserError(f"variant names repeat: {names}")
  os.makedirs(FLAGS.ablation_dir, exist_ok=True)
  if FLAGS.holdout_from:
    eval_dir = os.path.join(FLAGS.ablation_dir, "holdout")
    counts = holdout_corpus(FLAGS.holdout_from, FLAGS.data_dir, eval_dir,
                            FLAGS.speaker_id_pattern, FLAGS.noise_source_pattern)
    print(f"evaluation set: {counts['speech']} utterances of unseen speakers and "
          f"{counts['noise']} unseen noise recordings from {FLAGS.holdout_from} (train split)")
    eval_split = "test"
  else:
    eval_dir, eval_split = FLAGS.eval_data_dir or FLAGS.data_dir, FLAGS.eval_split
  eval_args = [f"--data_dir={eval_dir}", f"--split={eval_split}"]
  # The split as evaluate finds it, so the probe sets hold the same speech.
  eval_speech = data.discover_corpus(
      eval_dir, **data.DataConfig.from_flags().split_options()).split(eval_split).clean
  # The data flags (SNR range, splitting patterns) make the evaluation mixtures.
  common = [f"--max_files={FLAGS.max_eval_files}"] + _given_flags("tf_tinyse.data",
                                                                 exclude=("data_dir",))
  eval_args += common
  probe_args = {}
  for kind in FLAGS.probe_noises:
    probe_dir = data.probe_noise.write_probe_corpus(
        eval_speech, os.path.join(FLAGS.ablation_dir, f"probe_{kind}"), kind)
    probe_args[kind] = [f"--data_dir={probe_dir}", "--split=test"] + common

  with concurrent.futures.ThreadPoolExecutor(FLAGS.parallel) as pool:
    rows = list(pool.map(lambda v: run_variant(v[0], v[1], eval_args, probe_args), variants))
  fileio.write_json_atomic(os.path.join(FLAGS.ablation_dir, "ablation.json"),
                           {"eval": eval_args, "probes": probe_args, "rows": rows})
  print(format_rows(rows))


if __name__ == "__main__":
  cli.run(main)
