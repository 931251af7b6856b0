"""Trains the TinyLSTM mask network on speech + noise (or noisy/clean pairs).

    python -m tf_tinyse.train --flagfile=configs/demo.cfg --data_dir=DIR --model_dir=OUT

Checkpoints go to OUT/checkpoints every --checkpoint_every steps, at the end
and when the run is interrupted (Ctrl-C, SIGTERM); running the same command
again resumes from the newest one. TensorBoard logs go to OUT/logs; the
weights with the best validation SI-SDR go to OUT/best, with OUT/best/info.json
(scores, step, and which speakers and noises the validation split holds).

A run started with --init_from=SRC records what it started from in
OUT/init_from.json (SRC, its best step, a hash of its weights). Resuming it
with --init_from=SRC after SRC has changed (e.g. trained on with more --steps)
is refused: the new weights would be mixed with a run fine-tuned from the old
ones. The main job (tf_tinyse.pipeline) instead moves the stale folder aside
and fine-tunes again.

With --strategy=multi_worker only the chief (task 'chief', or worker 0 when the
cluster has no chief) writes OUT; the other workers restore from OUT (it must
be a shared folder to resume) and write into temporary folders that are removed
at the end, as TensorFlow's multi-worker guide does.
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Optional

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras as keras
import tqdm

from keras_layers.step_dropout import StepDropout
from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import enhancer
from tf_tinyse import features
from tf_tinyse import fileio
from tf_tinyse import losses
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse import weight_average as weight_average_lib
from tf_tinyse.errors import UserError

flags.DEFINE_integer("steps", 2000, "Total training steps (a resumed run stops at the same total).")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_float("final_learning_rate_fraction", 0.1, "Cosine decay of the learning rate over "
                   "--steps down to this fraction of --learning_rate (1: constant).")
flags.DEFINE_float("clip_norm", 3.0, "Global gradient-norm clipping.")
flags.DEFINE_float("weight_decay", 0.0,
                   "Decoupled weight decay (AdamW) of the kernels: each step shrinks every "
                   "LSTM and Dense kernel by weight_decay x the learning rate of that step. "
                   "Biases, the QEQ and pruning thresholds are not decayed. 0: Adam.")
flags.DEFINE_integer("checkpoint_every", 200, "Steps between checkpoints.")
flags.DEFINE_integer("validate_every", 500, "Steps between validations (also at the end).")
flags.DEFINE_integer("max_validation_files", 16, "Validation utterances scored each time.")
flags.DEFINE_integer("validation_mixtures", 1, "Noisy mixtures of each validation utterance "
                     "(speech + noise layout), each with its own noise and SNR: more makes "
                     "best-checkpoint selection on a small validation split less of a coin toss.")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard scalars.")
flags.DEFINE_integer("seed", 0, "Seed for weights and the data stream: same seed, same run.")
flags.DEFINE_string("init_from", None, "Start a new run from the best weights of this model_dir "
                    "(same layer sizes), e.g. to fine-tune a float model with --quantize. "
                    "Recorded in --model_dir's init_from.json; resuming after these weights "
                    "changed is refused (use a new --model_dir to fine-tune the new ones).")
flags.DEFINE_integer("intra_op_threads", 1, "CPU threads one op (a matmul) may use; 0: "
                     "TensorFlow's default (all cores). 1 because a TinyLSTM's ops are too small "
                     "to split: on 2 cores the paper model trains at 9.1 steps/s and 177 CPU ms "
                     "per step with 1, 6.2 and 274 with TensorFlow's default (README, "
                     "Benchmarks, \"CPU threads\").", lower_bound=0)
flags.DEFINE_integer("inter_op_threads", 0, "CPU threads that run independent ops at the same "
                     "time (the input pipeline's too); 0: TensorFlow's default (one per core).",
                     lower_bound=0)
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy: one device, all local GPUs (MirroredStrategy), or "
                  "several machines from TF_CONFIG (MultiWorkerMirroredStrategy).")
for _name in ("steps", "checkpoint_every", "validate_every", "max_validation_files", "log_every",
              "validation_mixtures"):
  flags.register_validator(_name, lambda v: v is not None and v > 0,
                           message=f"--{_name} must be a positive integer")
flags.register_validator("learning_rate", lambda v: v > 0, message="--learning_rate must be > 0")
flags.register_validator("weight_decay", lambda v: 0.0 <= v < 1.0,
                         message="--weight_decay must be in [0, 1)")

FLAGS = flags.FLAGS
CHECKPOINTS = model_lib.CHECKPOINTS
BEST_INFO = os.path.join("best", "info.json")
INIT_RECORD = "init_from.json"
QEQ_CALIBRATION_BATCHES = 4
# What train() does when --init_from changed since model_dir's checkpoints started from it.
INIT_CHANGED_ERROR, INIT_CHANGED_RESTART = "error", "restart"


def set_cpu_threads(intra_op_threads, inter_op_threads):
  """Sizes TensorFlow's CPU thread pools (0: TensorFlow's default); call before the first op.

  A process whose TensorFlow runtime has already started (a test, a notebook) keeps its pools:
  TensorFlow cannot resize them then, and this logs that it did not.
  """
  threading = tf.config.threading
  if (threading.get_intra_op_parallelism_threads() == intra_op_threads and
      threading.get_inter_op_parallelism_threads() == inter_op_threads):
    return
  try:
    threading.set_intra_op_parallelism_threads(intra_op_threads)
    threading.set_inter_op_parallelism_threads(inter_op_threads)
  except RuntimeError:
    logging.warning("TensorFlow has started already: it keeps its CPU threads (intra-op %d, "
                    "inter-op %d), not --intra_op_threads=%d --inter_op_threads=%d",
                    threading.get_intra_op_parallelism_threads(),
                    threading.get_inter_op_parallelism_threads(), intra_op_threads,
                    inter_op_threads)


def make_strategy(name):
  """The tf.distribute strategy for --strategy. A GPU, if present, is used by all."""
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise UserError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                      "(cluster and task of this worker); see the README")
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


@dataclasses.dataclass(frozen=True)
class WorkerRole:
  """This process's task in a tf.distribute cluster; only the chief writes model_dir.

  Outside a cluster (`task_type` None) the process is the chief. In a cluster the chief is
  task 'chief', or worker 0 when the cluster has no 'chief' job (TF's multi-worker guide).
  """
  task_type: Optional[str] = None
  task_id: int = 0
  cluster_has_chief: bool = False

  @property
  def is_chief(self) -> bool:
    if self.task_type is None or self.task_type == "chief":
      return True
    return self.task_type == "worker" and self.task_id == 0 and not self.cluster_has_chief

  @classmethod
  def from_tf_config(cls, tf_config) -> "WorkerRole":
    """The role a TF_CONFIG value (a dict or its JSON text) gives; {} or None: no cluster."""
    if isinstance(tf_config, str):
      tf_config = json.loads(tf_config) if tf_config.strip() else {}
    tf_config = tf_config or {}
    task = tf_config.get("task") or {}
    if not task.get("type"):
      return cls()
    return cls(task_type=task["type"], task_id=int(task.get("index", 0)),
               cluster_has_chief=bool((tf_config.get("cluster") or {}).get("chief")))

  @classmethod
  def from_strategy(cls, strategy) -> "WorkerRole":
    """The role from the strategy's cluster resolver (single-machine strategies: chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
      return cls()
    return cls(task_type=resolver.task_type, task_id=int(resolver.task_id or 0),
               cluster_has_chief=bool(resolver.cluster_spec().as_dict().get("chief")))


@contextlib.contextmanager
def _write_folder(model_dir, role):
  """Yields where this process writes: model_dir for the chief, else a temporary folder
  (removed afterwards) so that workers do not overwrite the chief's files."""
  if role.is_chief:
    os.makedirs(model_dir, exist_ok=True)
    yield model_dir
    return
  folder = tempfile.mkdtemp(prefix=f"tf_tinyse_{role.task_type}_{role.task_id}_")
  logging.info("%s %d is not the chief: writing into %s instead of %s", role.task_type,
               role.task_id, folder, model_dir)
  try:
    yield folder
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def decayed_weights(model):
  """The variables `--weight_decay` shrinks: the LSTM and Dense kernels (input and recurrent)."""
  return [v for v in model.trainable_variables
          if model_lib.short_name(v) in ("kernel", "recurrent_kernel")]


class Trainer:
  """Model, optimizer and the distributed train step; knows nothing of files."""

  def __init__(self, config, strategy, learning_rate=1e-3, clip_norm=3.0, global_batch_size=32,
               decay_steps=None, final_learning_rate_fraction=1.0, sparsity_schedule=None,
               loss=losses.LossConfig(), weight_average_decay=0.0, weight_decay=0.0, seed=0):
    self.config = config
    # The mask floor is for deployment only: trained under it the network learns to lower
    # its mask by as much (measured, demo.cfg at 4,000 steps, validation: trained with a
    # 0.05 floor it scored -0.16 dB SI-SDR against no floor, while the same floor put on a
    # model trained without it gave +0.2 dB and +0.008 STOI). Validation applies it. The low
    # cut too is an output filter of deployment, left out of the loss so that it changes no
    # training step: a model trained without it takes it as it is.
    self._loss_feature = dataclasses.replace(config.feature, mask_floor=0.0, low_cut_hz=0.0)
    self.loss = loss
    self.strategy = strategy
    self.global_batch_size = global_batch_size
    # Online pruning: the sparsity loss steers the learned thresholds to the schedule's target.
    self.sparsity_schedule = (sparsity_schedule if config.has_masks and
                              config.pruning == sparsity.ONLINE else None)
    with strategy.scope():
      self.model = model_lib.build_mask_model(config)
      # What the train step runs and checkpoints hold: for --pruning=tfmot the same layers in
      # tfmot's pruning wrappers (with masks and pruning step), else the model itself.
      self.train_model, self._stripped = self.model, None
      if config.pruning == sparsity.TFMOT and config.sparsity_structure is not None:
        from tf_tinyse import tfmot_pruning  # pylint: disable=g-import-not-at-top
        self.train_model = tfmot_pruning.wrap(self.model, config, sparsity_schedule)
        self._stripped = model_lib.build_mask_model(config)
      if decay_steps and final_learning_rate_fraction < 1.0:
        # A function of the optimizer's step counter, which checkpoints restore.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps, alpha=final_learning_rate_fraction)
      if weight_decay > 0:
        self.optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay,
                                                global_clipnorm=clip_norm)
        kernels = {id(v) for v in decayed_weights(self.model)}
        self.optimizer.exclude_from_weight_decay(
            var_list=[v for v in self.model.trainable_variables if id(v) not in kernels])
      else:
        self.optimizer = keras.optimizers.Adam(learning_rate, global_clipnorm=clip_norm)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
      # The online sparsity loss's multiplier adapts: it grows while the network is off the
      # scheduled target, until the sparsity term outweighs the enhancement loss's pull on
      # the thresholds, and shrinks back (to --sparsity_loss_weight) while it is at the target.
      self.sparsity_multiplier = tf.Variable(
          sparsity_schedule.loss_weight if sparsity_schedule else 1.0, trainable=False,
          name="sparsity_multiplier", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      # Creating the slots now lets a checkpoint restore them before the first step.
      self.optimizer.build(self.model.trainable_variables)
      # A pruned model keeps its raw weights: its masks follow them (weight_average module).
      self.weight_average = None
      if weight_average_decay > 0 and config.sparsity_structure is None:
        self.weight_average = weight_average_lib.WeightAverage(
            self.model.trainable_variables, weight_average_decay)
    # Dropout masks are a function of (seed, step), as the data stream is: a resumed run
    # draws the masks the uninterrupted run drew.
    step_seed = lambda: tf.stack([tf.constant(seed, tf.int64), self.step])
    for layer in self.train_model.layers:
      if isinstance(layer, StepDropout):
        layer.use_seed(step_seed)

  def averaged_weights(self):
    """A context in which the model holds the averaged weights (the raw ones without an
    average)."""
    if self.weight_average is None:
      return contextlib.nullcontext()
    return self.weight_average.swapped_in()

  def final_model(self):
    """The model as validated, measured and saved: for tfmot the stripped model (a plain
    copy with the masks applied; the training variables are left as they are)."""
    if self._stripped is None:
      return self.model
    from tf_tinyse import tfmot_pruning  # pylint: disable=g-import-not-at-top
    return tfmot_pruning.strip(self.train_model, self._stripped)

  def per_example_loss(self, noisy, clean):
    feature = self._loss_feature
    enhanced, _ = enhancer.enhance_batch(self.train_model, noisy, feature, training=True)
    return self.loss.per_example(clean, enhanced, feature)

  def _replica_step(self, noisy, clean):
    with tf.GradientTape() as tape:
      per_example = self.per_example_loss(noisy, clean)
      # Divide by the global batch so that summing over replicas gives the mean.
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
      total = loss
      if self.sparsity_schedule is not None:
        target = self.sparsity_schedule.target_at(self.step)
        term, _, active = sparsity.sparsity_loss(self.model, target)
        total += self.sparsity_multiplier * term / self.strategy.num_replicas_in_sync
        self.sparsity_multiplier.assign(tf.where(
            active > 0, tf.minimum(self.sparsity_multiplier * sparsity.MULTIPLIER_GROWTH,
                                      sparsity.MULTIPLIER_MAX),
            tf.maximum(self.sparsity_multiplier / sparsity.MULTIPLIER_GROWTH,
                       self.sparsity_schedule.loss_weight)))
    grads = tape.gradient(total, self.model.trainable_variables)
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    return loss

  @tf.function
  def train_step(self, batch):
    noisy, clean = batch
    if self._stripped is not None:
      # tfmot's wrappers add 1 to their pruning_step in the forward pass: starting from the
      # global step, they mask at the step this one ends at (as with UpdatePruningStep).
      from tf_tinyse import tfmot_pruning  # pylint: disable=g-import-not-at-top
      tfmot_pruning.set_step(self.train_model, self.step)
    per_replica = self.strategy.run(self._replica_step, args=(noisy, clean))
    if self.weight_average is not None:
      self.weight_average.update()
    self.step.assign_add(1)
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


def calibrate_qeq(model, config, batches):
  """Sets QEQ to standardize each feature band over `batches` of noisy training audio.

  Raw compressed mel features are all positive with a small spread (mean about
  0.8, std 0.3); starting the LSTMs on zero-mean, unit-spread inputs trains
  markedly faster (measured: loss 0.126 vs 0.153 after 500 steps). QEQ stays
  learnable, so training refines this start.
  """
  frames = []
  for noisy, _ in batches:
    z = features.waveform_features(noisy, config.feature)
    frames.append(tf.reshape(z, [-1, config.feature.num_bands]).numpy())
  frames = np.concatenate(frames)
  mean, std = frames.mean(axis=0), frames.std(axis=0) + 1e-3
  model.get_layer("qeq").set_weights([1.0 / std, -mean / std])
  return {"feature_mean": float(mean.mean()), "feature_std": float(std.mean())}


def fit_qeq_into_quantization_range(model, config, batches, percentile=99.9):
  """Scales QEQ so that its output fits the fixed [-1, 1] range of quantized training.

  QEQ's purpose (paper, Sec. 3.1) is to bring the input into the fixed quantization range.
  A float model's QEQ standardizes its features (spread about 1), so about a third of the
  values would saturate at ±1. This divides gain and bias by k, the `percentile` of |QEQ
  output| over `batches`, and multiplies the first LSTM's input kernel by k: the float
  function is unchanged and only 0.1 % of the inputs saturate. Returns k.
  """
  qeq = model.get_layer("qeq")
  outputs = []
  for noisy, _ in batches:
    z = features.waveform_features(noisy, config.feature)
    outputs.append(np.abs(qeq(z).numpy()).reshape(-1))
  k = max(1.0, float(np.percentile(np.concatenate(outputs), percentile)))
  gain, bias = qeq.get_weights()
  qeq.set_weights([gain / k, bias / k])
  first_lstm = model.get_layer("lstm_0")
  weights = first_lstm.get_weights()
  weights[0] = weights[0] * k
  first_lstm.set_weights(weights)
  return k


def validate(model, config, examples):
  """Mean SI-SDR of enhanced and noisy validation utterances (whole-utterance pass).

  Means are taken as in the evaluation summaries (`metrics.mean_for_summary`): an output
  that is silent or orthogonal to the speech enters at the floor, not at -150 dB, so one
  broken utterance does not decide which checkpoint is best; `floored` counts them.
  """
  enhance = enhancer.Enhancer(model, config)
  enhanced_scores, noisy_scores = [], []
  for example in examples:
    enhanced_scores.append(metrics.si_sdr(example.clean, enhance(example.noisy)))
    noisy_scores.append(metrics.si_sdr(example.clean, example.noisy))
  enhanced, floored = metrics.mean_for_summary("si_sdr", enhanced_scores)
  noisy, _ = metrics.mean_for_summary("si_sdr", noisy_scores)
  return {"si_sdr": enhanced, "si_sdr_noisy": noisy, "si_sdr_improvement": enhanced - noisy,
          "floored": floored}


@contextlib.contextmanager
def _interrupts_raise():
  """Turns SIGTERM into KeyboardInterrupt so both end in a checkpoint."""

  def handler(signum, frame):
    del signum, frame
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _read_json(path):
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _read_best(model_dir):
  return _read_json(os.path.join(model_dir, BEST_INFO))


def init_record(init_from, model) -> dict:
  """What a run initialized from `init_from` starts from: the folder, the step of its best
  weights and a hash of the weights `model` (loaded from it) holds."""
  digest = hashlib.sha256()
  for weight in model.get_weights():
    weight = np.ascontiguousarray(weight)
    digest.update(f"{weight.dtype.str}{weight.shape}".encode())
    digest.update(weight.tobytes())
  best = _read_best(init_from) or {}
  return {"path": os.path.abspath(init_from), "best_step": best.get("step"),
          "weights_sha256": digest.hexdigest()}


def _check_init_from(model_dir, init_from, if_changed, role):
  """Did `init_from` change since model_dir's checkpoints started from it?

  Returns None when there is nothing to resume or it started from today's `init_from`
  (compared by the hash of the weights). Otherwise, with `if_changed` 'error', raises a
  UserError (a model_dir without a record, from before records were kept, only warns); with
  'restart', the chief moves model_dir aside to `<model_dir>.stale` (replacing an older one)
  and this returns {'reason', 'stale_model_dir'}: train from the start.
  """
  if tf.train.get_checkpoint_state(os.path.join(model_dir, CHECKPOINTS)) is None:
    return None
  recorded = _read_json(os.path.join(model_dir, INIT_RECORD))
  current = init_record(init_from, model_lib.load_trained(init_from)[1])
  if recorded is not None and recorded.get("weights_sha256") == current["weights_sha256"]:
    return None
  if recorded is None:
    reason = (f"model_dir '{model_dir}' has checkpoints but no {INIT_RECORD} saying which "
              f"weights of --init_from '{init_from}' it started from")
  else:
    describe = lambda step: ("weights without best/info.json" if step is None else
                             f"best weights of step {step}")
    then, now = recorded.get("best_step"), current["best_step"]
    reason = (f"--init_from '{init_from}' changed since model_dir '{model_dir}' was started "
              f"from it (then: {describe(then)}; now: "
              f"{'other weights of the same step' if then == now else describe(now)})")
  if if_changed == INIT_CHANGED_ERROR:
    if recorded is None:
      logging.warning("%s: resuming it unchecked", reason)
      return None
    raise UserError(f"{reason}; to fine-tune the new weights move or delete '{model_dir}' (or "
                    "use a new --model_dir), to finish the old run resume it without "
                    "--init_from")
  stale = os.path.normpath(model_dir) + ".stale"
  if role.is_chief:
    if os.path.isdir(stale):
      shutil.rmtree(stale)
    os.replace(model_dir, stale)
    logging.warning("%s: moved the stale run to '%s'; training '%s' again from the new weights",
                    reason, stale, model_dir)
  return {"reason": reason, "stale_model_dir": stale}


def _save_best(model, model_dir, info):
  with fileio.atomic_output(os.path.join(model_dir, model_lib.BEST_WEIGHTS)) as tmp:
    model.save_weights(tmp)
  fileio.write_json_atomic(os.path.join(model_dir, BEST_INFO), info)


def _at_target(model, schedule, step):
  """Past the end of the schedule, and the masks within tolerance of the target."""
  if step < schedule.end_step:
    return False
  return abs(sparsity.measure(model)["pruned"] - schedule.target) <= sparsity.TARGET_TOLERANCE


def check_config_matches(model_dir, config):
  """A resumed run must rebuild the same model it checkpointed."""
  if not os.path.isfile(os.path.join(model_dir, model_lib.CONFIG_FILE)):
    return
  saved = model_lib.load_config(model_dir)
  if saved != config:
    raise UserError(f"model_dir '{model_dir}' holds a model of another configuration "
                    f"({saved.to_dict()}); use a new --model_dir or the same model flags")


def train(config, data_config, corpus, model_dir, steps, seed=0, learning_rate=1e-3,
          clip_norm=3.0, checkpoint_every=200, validate_every=500, max_validation_files=16,
          log_every=50, strategy=None, progress=True, init_from=None,
          final_learning_rate_fraction=0.1, validation_mixtures=1, sparsity_schedule=None,
          if_init_changed=INIT_CHANGED_ERROR, worker_role=None, loss=losses.LossConfig(),
          weight_average_decay=0.0, weight_decay=0.0):
  """Trains (or resumes) up to `steps` total steps. Returns a summary dict.

  `sparsity_schedule` (`sparsity.Schedule`): the target sparsity over the steps for a pruned
  `config` (online: the sparsity loss follows it; the best checkpoint is only picked among
  validations at the final target). sparsity.json in `model_dir` describes best/.

  `init_from`: a model_dir whose best weights start a new run; recorded in
  `model_dir/init_from.json`. When model_dir already has checkpoints started from other
  weights of `init_from`, `if_init_changed` 'error' raises a UserError, 'restart' moves
  model_dir aside to `<model_dir>.stale` and trains from the start (see `_check_init_from`).

  `loss` (`losses.LossConfig`): the weights of the loss terms.

  `weight_average_decay` > 0: validation, best/ and what follows use an exponential moving
  average of the weights (`weight_average`; dense models only). Validation then also scores
  the raw weights ('raw_si_sdr_improvement' in the scores, TensorBoard 'valid_raw/').

  `weight_decay` > 0: AdamW's decoupled decay of the kernels (`decayed_weights`), scaled by
  the learning rate; 0: Adam.

  `worker_role` (`WorkerRole`, default: from the strategy's cluster resolver): only the chief
  writes into model_dir; other workers read checkpoints and best/info.json from it and write
  into a temporary folder.

  The summary: 'step', 'resumed_from', 'best' (best/info.json: scores, step and the
  `Corpus.validation_report` of the validation split they were measured on), 'init_from'
  (the record, or None) and 'restarted' (None, or why a stale model_dir was moved aside).
  """
  if if_init_changed not in (INIT_CHANGED_ERROR, INIT_CHANGED_RESTART):
    raise ValueError(f"if_init_changed must be {INIT_CHANGED_ERROR!r} or "
                     f"{INIT_CHANGED_RESTART!r}, got {if_init_changed!r}")
  loss.check_segment_seconds(data_config.segment_seconds, config.feature)
  strategy = strategy or tf.distribute.get_strategy()
  role = worker_role or WorkerRole.from_strategy(strategy)
  model_dir = os.fspath(model_dir)
  restarted = _check_init_from(model_dir, init_from, if_init_changed, role) if init_from else None
  # A restart does not read the stale run (a worker may look before the chief moved it).
  read_dir = None if restarted else model_dir
  if read_dir:
    check_config_matches(read_dir, config)
  with _write_folder(model_dir, role) as out_dir:
    return _train(config, data_config, corpus, read_dir, out_dir, steps, seed, learning_rate,
                  clip_norm, checkpoint_every, validate_every, max_validation_files, log_every,
                  strategy, progress, init_from, final_learning_rate_fraction,
                  validation_mixtures, sparsity_schedule, restarted,
                  checkpoints_shown=os.path.join(model_dir, CHECKPOINTS), loss=loss,
                  weight_average_decay=weight_average_decay, weight_decay=weight_decay)


def _train(config, data_config, corpus, read_dir, out_dir, steps, seed, learning_rate,
           clip_norm, checkpoint_every, validate_every, max_validation_files, log_every,
           strategy, progress, init_from, final_learning_rate_fraction, validation_mixtures,
           sparsity_schedule, restarted, checkpoints_shown, loss=losses.LossConfig(),
           weight_average_decay=0.0, weight_decay=0.0):
  """train() once the folders are decided: resumes from `read_dir` (None: from the start),
  writes into `out_dir`."""
  keras.utils.set_random_seed(seed)
  if config.sparsity_structure is not None and sparsity_schedule is None:
    sparsity_schedule = sparsity.Schedule(end_step=max(1, int(0.6 * steps)))
  trainer = Trainer(config, strategy, learning_rate, clip_norm, data_config.batch_size,
                    decay_steps=steps, final_learning_rate_fraction=final_learning_rate_fraction,
                    sparsity_schedule=sparsity_schedule, loss=loss,
                    weight_average_decay=weight_average_decay, weight_decay=weight_decay,
                    seed=seed)
  averaging = trainer.weight_average is not None
  if weight_average_decay > 0 and not averaging:
    logging.info("--weight_average_decay is not applied to a pruned model: it keeps its raw "
                 "weights")
  tracked = dict(model=trainer.train_model, optimizer=trainer.optimizer, step=trainer.step,
                 sparsity_multiplier=trainer.sparsity_multiplier)
  checkpoint = tf.train.Checkpoint(
      **tracked, **({weight_average_lib.CHECKPOINT_KEY: trainer.weight_average.checkpointed}
                    if averaging else {}))
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(out_dir, CHECKPOINTS),
                                       max_to_keep=3)
  # A run checkpointed without an average and resumed with one starts its average there.
  newest = read_dir and tf.train.latest_checkpoint(os.path.join(read_dir, CHECKPOINTS))
  average_missing = averaging and newest and not weight_average_lib.checkpoint_holds_average(
      newest)
  # The newest checkpoint that reads: one cut short (full disk, killed copy) is skipped.
  restored = read_dir and model_lib.restore_newest_checkpoint(
      tf.train.Checkpoint(**tracked) if average_missing else checkpoint,
      os.path.join(read_dir, CHECKPOINTS))
  if restored:
    logging.info("resumed from %s at step %d", restored, int(trainer.step.numpy()))
    if average_missing:
      trainer.weight_average.reset()
      logging.warning("%s holds no weight average (trained without --weight_average_decay): "
                      "the average starts at step %d", restored, int(trainer.step.numpy()))
  model_lib.save_config(out_dir, config)
  start_step = int(trainer.step.numpy())
  summary = {"step": start_step, "resumed_from": start_step,
             "best": _read_best(read_dir) if read_dir else None,
             "init_from": _read_json(os.path.join(read_dir, INIT_RECORD)) if (
                 read_dir and init_from) else None,
             "restarted": restarted}
  if start_step >= steps:
    logging.info("already trained for %d steps (--steps=%d): nothing to do", start_step, steps)
    return summary

  train_data = data.load_audio_set(corpus.split("train"), data_config.skip_bad_audio)
  validation = data.make_evaluation_set(
      corpus, "valid", seed=seed, max_files=max_validation_files,
      snr_db_range=(data_config.snr_db_min, data_config.snr_db_max),
      skip_bad_audio=data_config.skip_bad_audio, mixtures_per_file=validation_mixtures)
  validation_data = corpus.validation_report()
  _warn_about_shared_validation(validation_data)
  dataset = data.make_training_dataset(train_data, data_config, seed=seed, start_step=start_step)
  # A separate, seed-derived stream: the training stream stays a function of the step.
  calibration = data.make_training_dataset(train_data, data_config, seed=seed + 1).take(
      QEQ_CALIBRATION_BATCHES)
  if start_step == 0 and init_from:
    source_config, source = model_lib.load_trained(init_from)
    if (source_config.lstm_units, source_config.dense_units, source_config.use_qeq) != (
        config.lstm_units, config.dense_units, config.use_qeq):
      raise UserError(f"--init_from '{init_from}' holds a model of other layer sizes; "
                      "its weights do not fit this model")
    # Recorded before the first checkpoint: a rerun checks that init_from is still the same.
    summary["init_from"] = init_record(init_from, source)
    fileio.write_json_atomic(os.path.join(out_dir, INIT_RECORD), summary["init_from"])
    # By name: a dense source initializes a sparse model (its thresholds start at 0, keeping
    # every weight), an offline-pruned one also passes its masks on.
    model_lib.copy_weights(source, trainer.model)
    logging.info("initialized from %s (best weights of step %s)", init_from,
                 summary["init_from"]["best_step"])
    if config.quantize and config.use_qeq and not source_config.quantize:
      logging.info("QEQ scaled into the quantization range by 1/%.2f",
                   fit_qeq_into_quantization_range(trainer.model, config, calibration))
  elif start_step == 0 and config.use_qeq:
    logging.info("QEQ calibrated: %s", calibrate_qeq(trainer.model, config, calibration))
    if config.quantize:
      logging.info("QEQ scaled into the quantization range by 1/%.2f",
                   fit_qeq_into_quantization_range(trainer.model, config, calibration))
  if start_step == 0 and averaging:
    trainer.weight_average.reset()  # from the weights as initialized above
  iterator = iter(strategy.experimental_distribute_dataset(dataset))

  writer = tf.summary.create_file_writer(os.path.join(out_dir, "logs"))
  best = summary["best"]
  bar = tqdm.tqdm(total=steps, initial=start_step, disable=not progress, unit="step",
                  dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
  step = start_step
  loss_sum, loss_count, started = 0.0, 0, time.time()
  try:
    with _interrupts_raise(), writer.as_default():
      while step < steps:
        loss = float(trainer.train_step(next(iterator)))
        if not np.isfinite(loss):
          raise UserError(f"training loss became {loss} at step {step + 1}; lower "
                          "--learning_rate or check the data for clipping/NaN")
        step = int(trainer.step.numpy())
        loss_sum, loss_count = loss_sum + loss, loss_count + 1
        bar.update(1)
        if step % log_every == 0 or step == steps:
          tf.summary.scalar("train/loss", loss_sum / loss_count, step=step)
          tf.summary.scalar("train/steps_per_second",
                            loss_count / max(time.time() - started, 1e-9), step=step)
          postfix = {"loss": f"{loss_sum / loss_count:.4f}"}
          if sparsity_schedule is not None:
            report = sparsity.summarize_to_tensorboard(
                trainer.final_model(), step, sparsity_schedule.target_at(step))
            if trainer.train_model is not trainer.model:
              from tf_tinyse import tfmot_pruning  # pylint: disable=g-import-not-at-top
              tfmot_pruning.summarize(trainer.train_model, step)
            postfix["sparsity"] = f"{report['overall']:.3f}"
          bar.set_postfix(postfix)
          loss_sum, loss_count, started = 0.0, 0, time.time()
        if step % checkpoint_every == 0 or step == steps:
          manager.save(checkpoint_number=step)
        if step % validate_every == 0 or step == steps:
          final = trainer.final_model()  # tfmot: the stripped model
          # With an average: the raw weights' score beside it, for comparison only.
          raw_scores = validate(final, config, validation) if averaging else None
          with trainer.averaged_weights():
            scores = validate(final, config, validation)
            if raw_scores is not None:
              scores["raw_si_sdr_improvement"] = raw_scores["si_sdr_improvement"]
              tf.summary.scalar("valid_raw/si_sdr", raw_scores["si_sdr"], step=step)
            for key, value in scores.items():
              tf.summary.scalar(f"valid/{key}", value, step=step)
            logging.info("step %d: validation %s%s", step, scores,
                         " (weight average)" if averaging else "")
            # A pruned model is only "best" at its final target: earlier, denser checkpoints
            # would always win.
            at_target = (sparsity_schedule is None or config.pruning == sparsity.OFFLINE or
                         _at_target(final, sparsity_schedule, step))
            if at_target and (best is None or not best.get("at_target", True) or
                              scores["si_sdr"] > best["si_sdr"]):
              best = dict(scores, step=step, at_target=True, validation_data=validation_data,
                          weight_average_decay=weight_average_decay if averaging else 0.0)
              _save_best(final, out_dir, best)
              if config.sparsity_structure is not None:
                sparsity.write_report(out_dir, final, config, sparsity_schedule, step)
            elif step == steps and best is None:
              # Never at the target: keep the final model, marked as such.
              best = dict(scores, step=step, at_target=False, validation_data=validation_data)
              _save_best(final, out_dir, best)
              report = sparsity.write_report(out_dir, final, config, sparsity_schedule,
                                             step)
              logging.warning("the model ended at sparsity %.3f, not the target %.3f: raise "
                              "--steps or --sparsity_loss_weight", report["pruned"],
                              sparsity_schedule.target)
  except KeyboardInterrupt:
    step = int(trainer.step.numpy())
    manager.save(checkpoint_number=step)
    bar.close()
    raise UserError(f"interrupted at step {step}; checkpoint saved in "
                    f"{checkpoints_shown}: run the same command to resume")
  bar.close()
  return dict(summary, step=step, best=best)


def _warn_about_shared_validation(validation_data):
  """Warns when validation scores speakers or noise recordings that training also sees."""
  shared = validation_data["shared_with_train"]
  parts = [f"{len(shared[key])} {what} ({', '.join(shared[key][:3])}"
           f"{', ...' if len(shared[key]) > 3 else ''})"
           for key, what in (("speakers", "speaker(s)"), ("noise_sources", "noise recording(s)"))
           if shared[key]]
  if parts:
    logging.warning("the validation split shares %s with the training split: its scores, and "
                    "the best checkpoint picked by them, favour seen data (see "
                    "--speaker_id_pattern, --noise_source_pattern and the valid/ folders)",
                    " and ".join(parts))


def check_sparsity_flags(config, init_from, steps, flag_values=FLAGS):
  """The sparsity schedule of the flags (None for a dense model); refuses combinations that
  cannot work, before any data is read."""
  if config.sparsity_structure is None:
    return None
  if config.pruning == sparsity.TFMOT and config.sparsity_structure == "unit":
    raise UserError("--pruning=tfmot cannot prune units: tfmot's prune_low_magnitude prunes "
                    "weights or blocks only; use --pruning=online or offline for "
                    "--sparsity_structure=unit")
  if config.pruning == sparsity.TFMOT:
    from tf_tinyse import tfmot_pruning  # pylint: disable=g-import-not-at-top
    tfmot_pruning.check_config(config)  # blocks that tfmot cannot tile as ours
  if config.pruning == sparsity.OFFLINE:
    source = model_lib.load_config(init_from) if init_from else None
    if source is None or source.pruning != sparsity.OFFLINE or source.sparsity_structure is None:
      raise UserError("--pruning=offline fine-tunes a model pruned by python -m "
                      "tf_tinyse.prune_offline with its masks frozen: pass that model_dir as "
                      "--init_from (prune a trained model with prune_offline first)")
    if source.sparsity_structure != config.sparsity_structure:
      raise UserError(f"--init_from '{init_from}' was pruned with structure "
                      f"'{source.sparsity_structure}', not '{config.sparsity_structure}'")
  return sparsity.Schedule.from_flags(steps, flag_values)


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  if not FLAGS.data_dir:
    FLAGS.data_dir = demo_data.path()
    logging.info("no --data_dir: training on the built-in demo corpus %s", FLAGS.data_dir)
  if not FLAGS.model_dir:
    raise UserError("--model_dir is required: where checkpoints and the trained model go")
  set_cpu_threads(FLAGS.intra_op_threads, FLAGS.inter_op_threads)
  config = model_lib.ModelConfig.from_flags()
  schedule = check_sparsity_flags(config, FLAGS.init_from, FLAGS.steps)
  strategy = make_strategy(FLAGS.strategy)
  data_config = data.DataConfig.from_flags()
  corpus = data.discover_corpus(FLAGS.data_dir, **data_config.split_options())
  result = train(config, data_config, corpus, FLAGS.model_dir, FLAGS.steps, seed=FLAGS.seed,
                 learning_rate=FLAGS.learning_rate, clip_norm=FLAGS.clip_norm,
                 checkpoint_every=FLAGS.checkpoint_every, validate_every=FLAGS.validate_every,
                 max_validation_files=FLAGS.max_validation_files, log_every=FLAGS.log_every,
                 strategy=strategy, init_from=FLAGS.init_from,
                 final_learning_rate_fraction=FLAGS.final_learning_rate_fraction,
                 validation_mixtures=FLAGS.validation_mixtures, sparsity_schedule=schedule,
                 loss=losses.LossConfig.from_flags(),
                 weight_average_decay=FLAGS.weight_average_decay,
                 weight_decay=FLAGS.weight_decay)
  best = result["best"] or {}
  print(f"trained to step {result['step']} (started at {result['resumed_from']}); "
        f"best validation SI-SDR {best.get('si_sdr', float('nan')):.2f} dB at step "
        f"{best.get('step')}; model in {FLAGS.model_dir}")


if __name__ == "__main__":
  cli.run(main)
