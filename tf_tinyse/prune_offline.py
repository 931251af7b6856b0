"""Offline pruning (the paper's baseline): magnitude-prune a trained model, searching per-layer
sparsities on the validation split.

    python -m tf_tinyse.prune_offline --model_dir=TRAINED --data_dir=DIR --output_dir=OUT \\
        --sparsity_structure=weight|block|unit [--block_shape=1x8] --target_sparsity=0.8 \\
        [--max_validation_files=16 --validation_mixtures=1 --seed=0] [--search_workers=1] \\
        [--finetune_steps=N [--finetune_dir=OUT_finetuned] [--learning_rate=...]]

TRAINED is a dense model_dir (float or quantization-aware) written by tf_tinyse.train.

Pruning. Every prunable layer (the LSTMs, the hidden Dense layers and the output layer `mask`;
for unit pruning not `mask`, which keeps its 128 outputs) scores its groups
(`keras_layers.pruning_groups`, weight / block / unit) by their L1 norm (`norm="l1"`: mean
|w| of the group, which ranks groups of one size as the L1 norm does). At a layer sparsity s
the round(s·G) groups of lowest norm of its G groups are removed (the groups under the
s-percentile; ties go by group index, so the count is exact). For unit pruning the masks also
remove the unit's four gate columns, its recurrent row, its biases and the next layer's kernel
rows that read it (the output layer loses those rows too).

The grid. Per-layer sparsities are multiples of 10 % from 0 up to the cap = min(target + 20 %,
95 %): the paper's "at most 20 % above the target", and its 95 % cap for the 80 % and 90 %
targets (extended to every target above 75 %). A cap off the 10 % grid is its last level: for
a target of 0.8 or 0.9 the levels are 0, 0.1, ..., 0.9, 0.95. Without 0.95 no layer could go
beyond 0.9 and a 0.9 target would leave a single combination (every layer at 0.9), or none
when block rounding falls just short.

The overall sparsity of a combination is the exact count of zero kernel weights of its masks
(LSTM kernels, recurrent kernels and Dense kernels; for unit pruning the removed rows
included) over all kernel weights, as `tf_tinyse.sparsity.measure` counts them.

Candidates (what is scored). The combinations that meet the overall target and are minimal:
lowering any one layer by one step would miss the target. Every other combination that meets
the target removes the same groups as one of these and more (a layer's lowest-norm groups at a
higher level include those at a lower level), so it spends weights that the target does not
ask for; the minimal ones are the frontier of the search. This cuts thousands of combinations
(4 layers × 11 levels: 14,641) to the order of a hundred. The count is printed and written to
`offline_search.json`.

Scoring, on the validation split (never the test split; the paper used its test set): every
candidate enhances the validation utterances (`data.make_evaluation_set(corpus, "valid")` with
--seed, --max_validation_files and --validation_mixtures as in training) and is scored by
Q = 0.1·STOI + 0.2·PESQ + 0.6·SI-SDR of the means over utterances. A metric undefined for an
utterance's noisy input is undefined by the reference itself (too short, silent speech) and that
utterance leaves the metric's mean for every candidate alike; a metric undefined only for a
candidate's output (PESQ of a silent output) takes the metric's worst value (PESQ 1.0, STOI 0,
SI-SDR -150 dB), so a model that silences its output never gains from it (column `floored`).
The highest Q wins (ties: the higher overall sparsity, then the earlier candidate).

Resuming. Each scored candidate is written to OUT/offline_search.csv at once (the whole table
rewritten atomically through `tf_tinyse.fileio`, rows in candidate order); a killed search run
again with the same flags skips the candidates in the table, so none is scored twice and the
table and the choice are those of an uninterrupted run. OUT/offline_search.json holds the
search settings; another model, structure, target or validation set in the same OUT is an error.

Parallelism: --search_workers=2 (default) scores candidates in a pool of two processes that each
load the model once (one TensorFlow thread each); 1 scores in this process with TensorFlow's own
threads. Measured on 2 shared CPU cores (the paper's model, 4 validation utterances of 54 s in
all, weight pruning at 0.8): one process 3.8 s a candidate; two workers 57 s for 16 candidates
against 61 s, i.e. about 2.2 s a candidate once the workers have started, after about 20 s of
start-up (importing TensorFlow and loading the model twice). The pool is only started when
the remaining candidates would take this process at least `POOL_BREAK_EVEN_SECONDS` (timed on
the first candidate, scored here): two workers halve the scoring but start in about 20-45 s on
a loaded machine (measured: a tiny model's 17 candidates of 1.2 s took 76 s in the pool).

Output: OUT is a model_dir that evaluate, enhance and export take: config.json (the source
config with pruning="offline", the structure and block size), best/weights.h5 (the fixed-mask
model, masks set), best/info.json (the chosen per-layer sparsities, overall sparsity and
scores), sparsity.json (`sparsity.write_report`), and offline_search.csv (per-layer sparsities,
overall sparsity, SI-SDR, PESQ, STOI, Q of every candidate).

--finetune_steps=N then fine-tunes the chosen model with its masks frozen (`tf_tinyse.train`
with --pruning=offline --init_from=OUT) into --finetune_dir (default: OUT + "_finetuned"), a
model_dir of its own with its own sparsity.json; its validation scores go to
offline_finetune.json there, and the masks are checked to be those of OUT.
"""
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import time

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tqdm

from keras_layers import pruning_groups
from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import enhancer as enhancer_lib
from tf_tinyse import fileio
from tf_tinyse import losses
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse import train
from tf_tinyse.errors import UserError

# tf_tinyse.pipeline and tf_tinyse.enhance define --output_dir as well; allow_override lets the
# modules share one process (tests, a pipeline stage), as enhance does.
flags.DEFINE_string("output_dir", None, "prune_offline: the model_dir to write the pruned model "
                    "and the search table (offline_search.csv) to.", allow_override=True)
flags.DEFINE_integer("search_workers", 2, "prune_offline: processes that score candidates (2: a "
                     "pool of two processes, each loading the model once, with one TensorFlow "
                     "thread each, when the search is long enough to repay their start-up; "
                     "1: this process).")
flags.DEFINE_integer("finetune_steps", 0, "prune_offline: fine-tune the chosen model this many "
                     "steps with its masks frozen (0: no fine-tuning).")
flags.DEFINE_string("finetune_dir", None, "prune_offline: model_dir of the fine-tuned model "
                    "(default: --output_dir + '_finetuned').")
flags.register_validator("search_workers", lambda v: v >= 1, "--search_workers must be >= 1")
flags.register_validator("finetune_steps", lambda v: v >= 0, "--finetune_steps must be >= 0")

FLAGS = flags.FLAGS

SEARCH_CSV = "offline_search.csv"
SEARCH_SETTINGS = "offline_search.json"
FINETUNE_REPORT = "offline_finetune.json"
FINETUNE_SUFFIX = "_finetuned"
GROUP_NORM = "l1"

# Levels in per-mille, so that the grid and the group counts are exact integers.
LEVEL_STEP = 100  # 10 %
ABOVE_TARGET = 200  # a layer at most 20 % above the overall target
LEVEL_CAP = 950  # and at most 95 %
Q_WEIGHTS = {"stoi": 0.1, "pesq": 0.2, "si_sdr": 0.6}
Q_METRICS = ("si_sdr", "pesq", "stoi")
# The value of a metric that is undefined only for a candidate's output (see the docstring).
FLOORS = {"si_sdr": -metrics.DB_LIMIT, "pesq": 1.0, "stoi": 0.0}
# Two workers halve the scoring time but take 20-45 s to start (importing TensorFlow, loading
# the model): worth it when the rest would take this process longer than this.
POOL_BREAK_EVEN_SECONDS = 90.0
CANDIDATE_RULE = ("minimal combinations: overall sparsity >= target, and lowering any one layer "
                  "by one step misses it")


# ------------------------------------------------------------------------------------------
# The grid and the candidates (pure functions)


def to_permille(fraction):
  return int(round(float(fraction) * 1000))


def sparsity_levels(target):
  """Per-layer sparsities searched for an overall `target`, in per-mille, ascending.

  Multiples of 100 (10 %) up to cap = min(target + 200, 950), and the cap itself when it is not
  a multiple: 0.8 and 0.9 give (0, 100, ..., 900, 950); 0.5 gives (0, ..., 700).
  """
  cap = min(to_permille(target) + ABOVE_TARGET, LEVEL_CAP)
  levels = list(range(0, cap + 1, LEVEL_STEP))
  if levels[-1] != cap:
    levels.append(cap)
  return tuple(levels)


def required_zeros(target, total):
  """Fewest zero weights of `total` that make a sparsity of at least `target`."""
  return int(math.ceil(float(target) * total - 1e-9))


def minimal_combinations(levels, zeros_of, total, target):
  """The candidates: combinations that meet `target` and are minimal.

  Args:
    levels: per layer, its ascending levels (per-mille).
    zeros_of: combination (a tuple, one level per layer) → zero kernel weights; must not
      decrease when a level rises.
    total: all kernel weights.
    target: overall sparsity to reach.

  Returns:
    (candidates, feasible): the minimal combinations that meet the target, in lexicographic
    order, and how many combinations meet it in all.
  """
  need = required_zeros(target, total)
  meets = {}

  def ok(combo):
    if combo not in meets:
      meets[combo] = zeros_of(combo) >= need
    return meets[combo]

  candidates, feasible = [], 0
  for combo in itertools.product(*levels):
    if not ok(combo):
      continue
    feasible += 1
    minimal = True
    for i, level in enumerate(combo):
      position = levels[i].index(level)
      if position == 0:
        continue
      lower = combo[:i] + (levels[i][position - 1],) + combo[i + 1:]
      if ok(lower):
        minimal = False
        break
    if minimal:
      candidates.append(combo)
  return candidates, feasible


def removed_count(groups, level):
  """Groups removed out of `groups` at `level` per-mille: round(level / 1000 · groups)."""
  return (int(level) * int(groups) + 500) // 1000


def lowest_groups_mask(scores, level):
  """1/0 mask over `scores` (any shape) with the round(s·G) lowest-scoring groups at 0."""
  scores = np.asarray(scores)
  order = np.argsort(scores.reshape(-1), kind="stable")
  return mask_from_order(order, level).reshape(scores.shape)


def mask_from_order(order, level):
  mask = np.ones(order.size, np.float32)
  mask[order[:removed_count(order.size, level)]] = 0.0
  return mask


# ------------------------------------------------------------------------------------------
# Layers, their groups and their masks


@dataclasses.dataclass
class PrunedLayer:
  """One layer with kernels of the fixed-mask model, as the search sees it."""
  name: str
  is_lstm: bool
  searched: bool  # pruned by a level of its own (not: the output layer under unit pruning)
  upstream: int  # index of the layer whose units its kernel rows read (unit), else -1
  kernel_shape: tuple
  recurrent_shape: tuple  # () for Dense
  score_shapes: tuple  # shapes of the score tensors, in order
  order: np.ndarray  # group indices by ascending L1 score (flattened over score_shapes)
  weights: int  # kernel weights (kernel + recurrent kernel)


def plan_layers(model, structure, block_size):
  """The `PrunedLayer`s of a fixed-mask model (`sparsity.sparse_layers` order)."""
  plans = []
  for i, layer in enumerate(sparsity.sparse_layers(model)):
    kernels = layer.prunable_weights()
    is_lstm = len(kernels) == 2
    searched = not (structure == pruning_groups.UNIT and not is_lstm and
                    getattr(layer, "structure", structure) is None)
    if is_lstm:
      scores = pruning_groups.lstm_scores(kernels[0], kernels[1], structure, block_size,
                                          norm=GROUP_NORM)
    elif searched:
      scores = pruning_groups.dense_scores(kernels[0], structure, block_size, norm=GROUP_NORM)
    else:
      scores = ()
    scores = [np.asarray(s) for s in (scores if isinstance(scores, (tuple, list)) else
                                      [scores])]
    flat = np.concatenate([s.reshape(-1) for s in scores]) if scores else np.zeros(0)
    plans.append(PrunedLayer(
        name=layer.name, is_lstm=is_lstm, searched=searched,
        upstream=i - 1 if structure == pruning_groups.UNIT and i > 0 else -1,
        kernel_shape=tuple(kernels[0].shape),
        recurrent_shape=tuple(kernels[1].shape) if is_lstm else (),
        score_shapes=tuple(s.shape for s in scores),
        order=np.argsort(flat, kind="stable"),
        weights=sum(int(np.prod(k.shape)) for k in kernels)))
  return plans


def _split(flat, shapes):
  parts, start = [], 0
  for shape in shapes:
    size = int(np.prod(shape))
    parts.append(flat[start:start + size].reshape(shape))
    start += size
  return parts


def layer_masks(plan, structure, block_size, level, upstream_units=None):
  """Masks of one layer at `level` (None for a layer that is not searched).

  Returns (masks, unit mask): masks as the layer's mask variables take them — (kernel,
  recurrent, bias) for an LSTM, (kernel, bias) for a Dense layer — and the [units] mask of
  its kept units (unit pruning; else None). `upstream_units`: the unit mask of the layer
  before (unit pruning), whose removed units take this layer's kernel rows along.
  """
  units = None
  if not plan.searched:
    kernel = np.ones(plan.kernel_shape, np.float32)
    masks = [kernel, np.ones(plan.kernel_shape[1], np.float32)]
  else:
    groups = _split(mask_from_order(plan.order, level), plan.score_shapes)
    groups = [tf.constant(g) for g in groups]
    if structure == pruning_groups.UNIT:
      units = groups[0].numpy()
      group_arg = groups[0]
    else:
      group_arg = tuple(groups) if plan.is_lstm else groups[0]
    if plan.is_lstm:
      masks = [np.asarray(m) for m in pruning_groups.lstm_masks(
          group_arg, plan.kernel_shape, plan.recurrent_shape, structure, block_size)]
    else:
      masks = [np.asarray(m) for m in pruning_groups.dense_masks(
          group_arg, plan.kernel_shape, structure, block_size)]
  if upstream_units is not None:
    masks[0] = np.asarray(pruning_groups.input_rows(tf.constant(masks[0]),
                                                    tf.constant(upstream_units)))
  return masks, units


def combination_masks(plans, structure, block_size, combo):
  """Per layer its masks for a combination (one level per searched layer, in order)."""
  levels = iter(combo)
  result, units = [], None
  for plan in plans:
    level = next(levels) if plan.searched else None
    masks, own_units = layer_masks(plan, structure, block_size, level,
                                   units if plan.upstream >= 0 else None)
    result.append(masks)
    units = own_units
  return result


def _kernel_zeros(plan, masks):
  return sum(int(np.sum(m == 0)) for m in masks[:2 if plan.is_lstm else 1])


def zero_counter(plans, structure, block_size, levels):
  """combination → zero kernel weights, from a table of each layer's zeros per (own level,
  upstream level); the upstream level matters for unit pruning only (the removed rows)."""
  searched = [i for i, p in enumerate(plans) if p.searched]
  level_of_layer = {}  # layer index → position in the combination
  for position, i in enumerate(searched):
    level_of_layer[i] = position
  tables = []
  for i, plan in enumerate(plans):
    own_levels = levels if plan.searched else (None,)
    up = plan.upstream
    up_levels = levels if up >= 0 and plans[up].searched else (None,)
    table = {}
    for up_level in up_levels:
      up_units = None
      if up_level is not None:
        up_units = layer_masks(plans[up], structure, block_size, up_level)[1]
      for own in own_levels:
        table[(own, up_level)] = _kernel_zeros(
            plan, layer_masks(plan, structure, block_size, own, up_units)[0])
    tables.append(table)

  def zeros_of(combo):
    total = 0
    for i, plan in enumerate(plans):
      own = combo[level_of_layer[i]] if plan.searched else None
      up = plan.upstream
      up_level = combo[level_of_layer[up]] if up >= 0 and plans[up].searched else None
      total += tables[i][(own, up_level)]
    return total

  return zeros_of


def pruned_config(source_config, structure, block_size):
  return dataclasses.replace(source_config, sparsity_structure=structure,
                             block_size=int(block_size), pruning=sparsity.OFFLINE)


def set_masks(model, masks):
  """Assigns per layer its masks to the mask variables of a fixed-mask model."""
  for layer, layer_values in zip(sparsity.sparse_layers(model), masks):
    for variable, value in zip(layer.masks(), layer_values):
      variable.assign(value)


# ------------------------------------------------------------------------------------------
# Scoring


def metric_values(clean, estimate):
  """{si_sdr, pesq, stoi}: floats, or None where undefined (SDR is not needed for Q)."""
  functions = {"si_sdr": lambda: metrics.si_sdr(clean, estimate),
               "pesq": lambda: metrics.pesq_wb(clean, estimate),
               "stoi": lambda: metrics.stoi(clean, estimate)}
  values = {}
  for name, function in functions.items():
    try:
      values[name] = function()
    except metrics.MetricUndefined:
      values[name] = None
  return values


def defined_metrics(examples):
  """Per example, the metrics defined for its noisy input (i.e. by its reference)."""
  defined = []
  for example in examples:
    values = metric_values(example.clean, example.noisy)
    defined.append(tuple(name for name in Q_METRICS if values[name] is not None))
  for name in Q_METRICS:
    if not any(name in d for d in defined):
      raise UserError(f"no validation utterance has a defined {name} (too short or silent "
                      "speech): raise --max_validation_files or use longer utterances")
  return defined


def quality(per_utterance, defined):
  """Means over utterances and Q from per-utterance `metric_values`; see the docstring."""
  sums = dict.fromkeys(Q_METRICS, 0.0)
  counts = dict.fromkeys(Q_METRICS, 0)
  floored = 0
  for values, names in zip(per_utterance, defined):
    for name in names:
      value = values[name]
      if value is None:
        value = FLOORS[name]
        floored += 1
      sums[name] += value
      counts[name] += 1
  means = {name: sums[name] / counts[name] for name in Q_METRICS}
  return dict(means, q=sum(Q_WEIGHTS[n] * means[n] for n in Q_METRICS), floored=floored)


class Evaluator:
  """The fixed-mask model of a trained model_dir, its groups, and the candidate scoring."""

  def __init__(self, model_dir, structure, block_size, examples=None, defined=None):
    source_config, source = model_lib.load_trained(model_dir)
    self.source_config = source_config
    self.structure = structure
    self.block_size = int(block_size)
    self.config = pruned_config(source_config, structure, block_size)
    self.model = model_lib.build_mask_model(self.config)
    model_lib.copy_weights(source, self.model)
    self.plans = plan_layers(self.model, structure, self.block_size)
    self.examples = examples
    self.defined = defined
    self._enhance = None

  @property
  def searched_names(self):
    return [p.name for p in self.plans if p.searched]

  def apply(self, combo):
    set_masks(self.model, combination_masks(self.plans, self.structure, self.block_size, combo))

  def score(self, combo):
    """{si_sdr, pesq, stoi, q, floored} of the model pruned by `combo` on the examples."""
    self.apply(combo)
    if self._enhance is None:
      self._enhance = enhancer_lib.Enhancer(self.model, self.config)
    per_utterance = []
    for example in self.examples:
      enhanced = self._enhance(example.noisy)
      if not np.isfinite(enhanced).all():
        raise UserError(f"the pruned model {combo} produced NaN/inf for '{example.name}': "
                        "the trained model is broken")
      per_utterance.append(metric_values(example.clean, enhanced))
    return quality(per_utterance, self.defined)


_WORKER = {}


def _init_worker(spec, threads):
  train.set_cpu_threads(threads, threads)
  _WORKER["evaluator"] = Evaluator(*spec)


def _score_in_worker(combo):
  return combo, _WORKER["evaluator"].score(combo)


# ------------------------------------------------------------------------------------------
# The search table


def csv_columns(layer_names):
  return (["candidate"] + [f"s_{n}" for n in layer_names] +
          ["overall_sparsity", "si_sdr", "pesq", "stoi", "q", "floored"])


def read_search_csv(path, layer_names):
  """{combination: row dict (strings)} of a search table; {} when there is none."""
  if not os.path.isfile(path):
    return {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if reader.fieldnames != csv_columns(layer_names):
      raise UserError(f"'{path}' has columns {reader.fieldnames}, not those of this search "
                      f"{csv_columns(layer_names)}: use a new --output_dir")
    rows = {}
    for row in reader:
      combo = tuple(to_permille(row[f"s_{n}"]) for n in layer_names)
      rows[combo] = row
  return rows


def write_search_csv(path, layer_names, rows, candidates):
  """Writes the table atomically, rows in candidate order."""
  position = {c: i for i, c in enumerate(candidates)}
  out = io.StringIO()
  writer = csv.DictWriter(out, csv_columns(layer_names), lineterminator="\n")
  writer.writeheader()
  for combo in sorted(rows, key=lambda c: position.get(c, len(position))):
    writer.writerow(rows[combo])
  fileio.write_text_atomic(path, out.getvalue())


def _row(index, layer_names, combo, overall, scores):
  row = {"candidate": str(index), "overall_sparsity": f"{overall:.6f}",
         "floored": str(scores["floored"])}
  row.update({f"s_{n}": f"{level / 1000:.3f}" for n, level in zip(layer_names, combo)})
  row.update({k: repr(float(scores[k])) for k in ("si_sdr", "pesq", "stoi", "q")})
  return row


def run_search(evaluator, spec, candidates, overall_of, csv_path, workers=1, limit=None,
               progress=True):
  """Scores the candidates not yet in `csv_path`, writing each to it as it is scored.

  Args:
    evaluator: the `Evaluator` of this process (scores when `workers` == 1).
    spec: the `Evaluator` arguments for worker processes.
    candidates: combinations in candidate order.
    overall_of: combination → overall sparsity.
    workers: processes scoring candidates (1: this one).
    limit: score at most this many new candidates, then return (None: all).

  Returns:
    (rows, newly scored): {combination: row} of the whole table.
  """
  names = evaluator.searched_names
  rows = read_search_csv(csv_path, names)
  index = {c: i for i, c in enumerate(candidates)}
  todo = [c for c in candidates if c not in rows]
  if limit is not None:
    todo = todo[:limit]
  done = sum(c in rows for c in candidates)
  bar = tqdm.tqdm(total=len(candidates), initial=done, disable=not progress, unit="candidate",
                  dynamic_ncols=True)

  def record(combo, scores):
    rows[combo] = _row(index[combo], names, combo, overall_of(combo), scores)
    write_search_csv(csv_path, names, rows, candidates)
    bar.update(1)
    bar.set_postfix({"best_q": f"{max(float(r['q']) for r in rows.values()):.3f}"})

  try:
    rest = list(todo)
    if workers > 1 and rest:
      started = time.monotonic()
      record(rest[0], evaluator.score(rest[0]))
      rest = rest[1:]
      seconds = time.monotonic() - started
      if len(rest) * seconds < POOL_BREAK_EVEN_SECONDS or len(rest) < 2:
        logging.info("%d candidates of %.1f s: scored in this process", len(rest), seconds)
        workers = 1
    if workers <= 1:
      for combo in rest:
        record(combo, evaluator.score(combo))
    else:
      context = multiprocessing.get_context("spawn")
      threads = max(1, (os.cpu_count() or 1) // workers)
      with context.Pool(workers, initializer=_init_worker, initargs=(spec, threads)) as pool:
        for combo, scores in pool.imap_unordered(_score_in_worker, rest):
          record(combo, scores)
  finally:
    bar.close()
  return rows, len(todo)


def choose(rows):
  """The row with the highest Q (ties: higher overall sparsity, then the earlier candidate)."""
  return max(rows.values(), key=lambda r: (float(r["q"]), float(r["overall_sparsity"]),
                                           -int(r["candidate"])))


# ------------------------------------------------------------------------------------------
# The whole job


def _fingerprint(model):
  digest = hashlib.sha256()
  for variable in model.weights:
    digest.update(variable.name.encode())
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.hexdigest()


def check_source(model_dir, structure, output_dir):
  """Refuses what cannot be pruned; returns the source config."""
  if os.path.abspath(model_dir) == os.path.abspath(output_dir):
    raise UserError(f"--output_dir '{output_dir}' is --model_dir: write the pruned model to "
                    "a new folder")
  config = model_lib.load_config(model_dir)
  if config.sparsity_structure is not None:
    raise UserError(f"model_dir '{model_dir}' holds a pruned model (structure "
                    f"'{config.sparsity_structure}', pruning '{config.pruning}'): offline "
                    "pruning starts from a dense trained model")
  hidden = len(config.lstm_units) + len(config.dense_units)
  if structure == pruning_groups.UNIT and hidden == 0:
    raise UserError(f"model_dir '{model_dir}' has no layer but the output layer, which unit "
                    "pruning leaves alone: use --sparsity_structure=weight or block")
  return config


def search_settings(model_dir, evaluator, target, levels, candidates, feasible, corpus_root,
                    examples, validation):
  return {
      "source_model_dir": os.path.abspath(model_dir),
      "source_fingerprint": _fingerprint(evaluator.model),
      "structure": evaluator.structure,
      "block_size": evaluator.block_size if evaluator.structure == pruning_groups.BLOCK else None,
      "group_norm": GROUP_NORM,
      "target_sparsity": float(target),
      "levels": [level / 1000 for level in levels],
      "layers": evaluator.searched_names,
      "candidate_rule": CANDIDATE_RULE,
      "combinations_meeting_target": feasible,
      "candidates": len(candidates),
      "data_dir": os.path.abspath(corpus_root),
      "split": "valid",
      "validation": validation,
      "utterances": [e.name for e in examples],
      "q": "0.1*STOI + 0.2*PESQ + 0.6*SI-SDR (means over the validation utterances)",
  }


def check_settings(path, settings):
  """Writes the search settings, or checks that an earlier search in OUT had the same."""
  if os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
      raise UserError(f"'{path}' is a search with other settings ({', '.join(differ)} differ): "
                      "use a new --output_dir, or the flags of that search to resume it")
    return
  fileio.write_json_atomic(path, settings)


def prune(model_dir, output_dir, structure, block_size, target, corpus, data_config, seed=0,
          max_validation_files=16, validation_mixtures=1, workers=1, limit=None, progress=True):
  """The search and the pruned model_dir. Returns a summary dict (None when stopped early by
  `limit` before the table was complete)."""
  pruning_groups.check_structure(structure, block_size)
  check_source(model_dir, structure, output_dir)
  validation = {"seed": seed, "max_validation_files": max_validation_files,
                "validation_mixtures": validation_mixtures,
                "snr_db_range": [data_config.snr_db_min, data_config.snr_db_max],
                "validation_fraction": data_config.validation_fraction}
  examples = data.make_evaluation_set(
      corpus, "valid", seed=seed, max_files=max_validation_files,
      snr_db_range=(data_config.snr_db_min, data_config.snr_db_max),
      skip_bad_audio=data_config.skip_bad_audio, mixtures_per_file=validation_mixtures)
  if not examples:
    raise UserError(f"data_dir '{corpus.root}' has no validation utterances: add a valid/ split "
                    "or raise --validation_fraction")
  defined = defined_metrics(examples)
  evaluator = Evaluator(model_dir, structure, block_size, examples, defined)
  spec = (model_dir, structure, block_size, examples, defined)
  levels = sparsity_levels(target)
  plans = evaluator.plans
  searched = [p for p in plans if p.searched]
  total = sum(p.weights for p in plans)
  zeros_of = zero_counter(plans, structure, int(block_size), levels)
  top = tuple(levels[-1] for _ in searched)
  if zeros_of(top) < required_zeros(target, total):
    raise UserError(f"--target_sparsity={target} cannot be reached with {structure} pruning: "
                    f"with every layer at {levels[-1] / 1000:.2f} the model has sparsity "
                    f"{zeros_of(top) / total:.3f}; lower --target_sparsity")
  candidates, feasible = minimal_combinations([levels] * len(searched), zeros_of, total, target)
  print(f"offline search: {feasible} combinations of {len(searched)} layers at levels "
        f"{[level / 1000 for level in levels]} meet sparsity {target}; scoring the "
        f"{len(candidates)} minimal ones on {len(examples)} validation utterances")
  os.makedirs(output_dir, exist_ok=True)
  check_settings(os.path.join(output_dir, SEARCH_SETTINGS),
                 search_settings(model_dir, evaluator, target, levels, candidates, feasible,
                                 corpus.root, examples, validation))
  csv_path = os.path.join(output_dir, SEARCH_CSV)
  rows, scored = run_search(evaluator, spec, candidates, lambda c: zeros_of(c) / total,
                            csv_path, workers=workers, limit=limit, progress=progress)
  if len(rows) < len(candidates):
    return None
  rows = read_search_csv(csv_path, evaluator.searched_names)
  best = choose(rows)
  combo = tuple(to_permille(best[f"s_{n}"]) for n in evaluator.searched_names)
  evaluator.apply(combo)
  report = write_model_dir(output_dir, evaluator, best, combo, model_dir, target,
                           len(candidates), feasible)
  return {"candidates": len(candidates), "feasible": feasible, "scored_now": scored,
          "best": best, "combination": combo, "sparsity": report}


def write_model_dir(output_dir, evaluator, best, combo, model_dir, target, candidates,
                    feasible):
  """config.json, best/weights.h5, best/info.json and sparsity.json of the chosen model."""
  model_lib.save_config(output_dir, evaluator.config)
  with fileio.atomic_output(os.path.join(output_dir, model_lib.BEST_WEIGHTS)) as tmp:
    evaluator.model.save_weights(tmp)
  layer_sparsity = {p.name: None for p in evaluator.plans}
  layer_sparsity.update({n: level / 1000 for n, level in zip(evaluator.searched_names, combo)})
  info = {"strategy": sparsity.OFFLINE, "source_model_dir": os.path.abspath(model_dir),
          "structure": evaluator.structure, "block_size": evaluator.block_size,
          "target_sparsity": float(target), "layer_sparsity": layer_sparsity,
          "overall_sparsity": float(best["overall_sparsity"]),
          **{k: float(best[k]) for k in ("si_sdr", "pesq", "stoi", "q")},
          "split": "valid", "candidates_scored": candidates,
          "combinations_meeting_target": feasible, "candidate_rule": CANDIDATE_RULE,
          "step": 0, "at_target": True}
  fileio.write_json_atomic(os.path.join(output_dir, train.BEST_INFO), info)
  return sparsity.write_report(output_dir, evaluator.model, evaluator.config)


def mask_values(model):
  """{layer/variable: mask array} of a fixed-mask model."""
  return {f"{layer.name}/{model_lib.short_name(v)}": v.numpy()
          for layer in sparsity.sparse_layers(model) for v in layer.masks()}


def finetune(pruned_dir, finetune_dir, steps, corpus, data_config, seed=0, progress=True,
             **train_args):
  """Fine-tunes the pruned model of `pruned_dir` with frozen masks into `finetune_dir`;
  checks the masks and scores it by Q on the validation split. Returns its report."""
  config = model_lib.load_config(pruned_dir)
  with open(os.path.join(pruned_dir, train.BEST_INFO)) as f:
    target = json.load(f)["target_sparsity"]
  schedule = sparsity.Schedule(target=target, begin_step=0, end_step=1)
  result = train.train(config, data_config, corpus, finetune_dir, steps, seed=seed,
                       init_from=pruned_dir, sparsity_schedule=schedule, progress=progress,
                       **train_args)
  _, pruned = model_lib.load_trained(pruned_dir)
  tuned_config, tuned = model_lib.load_trained(finetune_dir)
  before, after = mask_values(pruned), mask_values(tuned)
  changed = [k for k in before if not np.array_equal(before[k], after[k])]
  if changed:
    raise RuntimeError(f"fine-tuning changed the frozen masks {changed}")
  examples = data.make_evaluation_set(
      corpus, "valid", seed=seed, max_files=train_args.get("max_validation_files", 16),
      snr_db_range=(data_config.snr_db_min, data_config.snr_db_max),
      skip_bad_audio=data_config.skip_bad_audio,
      mixtures_per_file=train_args.get("validation_mixtures", 1))
  enhance = enhancer_lib.Enhancer(tuned, tuned_config)
  scores = quality([metric_values(e.clean, enhance(e.noisy)) for e in examples],
                   defined_metrics(examples))
  report = {"pruned_from": os.path.abspath(pruned_dir), "steps": result["step"],
            "masks_unchanged": True, "split": "valid", **scores,
            "sparsity": sparsity.measure(tuned)["overall"]}
  fileio.write_json_atomic(os.path.join(finetune_dir, FINETUNE_REPORT), report)
  return report


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  if not FLAGS.model_dir:
    raise UserError("--model_dir is required: the trained (dense) model to prune")
  if not FLAGS.output_dir or FLAGS["output_dir"].using_default_value:
    raise UserError("--output_dir is required: the model_dir to write the pruned model to")
  if not FLAGS.data_dir:
    raise UserError("--data_dir is required: its validation split scores the candidates")
  if not FLAGS.sparsity_structure:
    raise UserError("--sparsity_structure is required: weight, block or unit")
  block_size = sparsity.block_size_from_shape(FLAGS.block_shape)
  check_source(FLAGS.model_dir, FLAGS.sparsity_structure, FLAGS.output_dir)
  data_config = data.DataConfig.from_flags()
  corpus = data.discover_corpus(FLAGS.data_dir, **data_config.split_options())
  result = prune(FLAGS.model_dir, FLAGS.output_dir, FLAGS.sparsity_structure, block_size,
                 FLAGS.target_sparsity, corpus, data_config, seed=FLAGS.seed,
                 max_validation_files=FLAGS.max_validation_files,
                 validation_mixtures=FLAGS.validation_mixtures, workers=FLAGS.search_workers)
  best = result["best"]
  layers = ", ".join(f"{k[2:]} {float(v):.2f}" for k, v in best.items() if k.startswith("s_"))
  print(f"evaluated {result['candidates']} candidates ({result['scored_now']} scored in this "
        f"run) of {result['feasible']} combinations meeting the target; chosen: {layers}; "
        f"overall {float(best['overall_sparsity']):.3f}; Q {float(best['q']):.3f} (SI-SDR "
        f"{float(best['si_sdr']):.2f} dB, PESQ {float(best['pesq']):.2f}, STOI "
        f"{float(best['stoi']):.3f})")
  print(f"pruned model (sparsity {result['sparsity']['overall']:.3f}) in {FLAGS.output_dir}; "
        f"search table {os.path.join(FLAGS.output_dir, SEARCH_CSV)}")
  if FLAGS.finetune_steps:
    finetune_dir = FLAGS.finetune_dir or FLAGS.output_dir.rstrip("/") + FINETUNE_SUFFIX
    report = finetune(FLAGS.output_dir, finetune_dir, FLAGS.finetune_steps, corpus,
                      data_config, seed=FLAGS.seed, learning_rate=FLAGS.learning_rate,
                      clip_norm=FLAGS.clip_norm, checkpoint_every=FLAGS.checkpoint_every,
                      validate_every=FLAGS.validate_every,
                      max_validation_files=FLAGS.max_validation_files,
                      log_every=FLAGS.log_every,
                      final_learning_rate_fraction=FLAGS.final_learning_rate_fraction,
                      validation_mixtures=FLAGS.validation_mixtures,
                      loss=losses.LossConfig.from_flags())
    print(f"fine-tuned {report['steps']} steps with frozen masks: Q {report['q']:.3f} (SI-SDR "
          f"{report['si_sdr']:.2f} dB, PESQ {report['pesq']:.2f}, STOI {report['stoi']:.3f}), "
          f"sparsity {report['sparsity']:.3f}, in {finetune_dir}")
  logging.info("offline pruning done")


if __name__ == "__main__":
  cli.run(main)
