"""Export CLI: trained model dir → int8 `.tflite`, Vela compile, TFLM validation, model card.

    python -m tf_tinyse.export --model_dir=OUT --output=model.tflite --data_dir=DIR \\
        [--accelerator=ethos-u55-128] [--sram_kib=N --flash_kib=N] [--strict] \\
        [--reference_tflite=DENSE.tflite]

writes, next to `--output`:
- `model_frontend.json`: what runs before the int8 model (feature settings, QEQ gain and
  bias; `tflm_export.frontend`);
- `model.tflite`: full-integer streaming model (one frame in, one mask frame out, LSTM state in
  variable tensors, fused UNIDIRECTIONAL_SEQUENCE_LSTM); for a QAT model its LSTM grids are the
  ones training used (`tflm_export.export_model`);
- `model_vela.tflite` and Vela's summary CSV for the chosen Ethos-U configuration;
- pruned models (`sparsity_structure` weight or block): `model_sparse.tflite`, the same
  model with its pruned weight matrices in TFLite's sparse encoding
  (`tflm_export.sparse_tflite.encode`: 1×B blocks for block pruning, CSR for weight pruning),
  a storage format that no runtime runs: `sparse_tflite.decode` turns it back into
  `model.tflite` byte for byte (checked by the export). A unit-pruned model is exported
  physically shrunk instead (`export_model.build_export_model`), so `model.tflite` is smaller
  and there is no sparse file;
- `model_card.json`: `tflm_export.model_card` plus a `validation` section: the `.tflite` run in
  TFLite Micro frame by frame over real test utterances (state reset between them) against the
  Keras streaming model: mask max/mean absolute error in output LSBs (1/256) and the SI-SDR of
  both enhanced outputs. Its path fields (`tflite_path`, `frontend`, `vela_summary_csv`,
  `vela.vela_tflite_path`) are file names relative to the card's folder, `model_dir` is
  relative to it too (absolute where no relative path exists), so the export folder can be
  copied or zipped as a whole; `tflm_export.model_card.resolve_path` turns one into a path.
  A pruned model's card has a `sparsity` section (`model_card.build_sparsity_section`; None
  for a dense model): structure, strategy, target and achieved sparsity, the bytes of every
  form, MACs / Vela / TFLM speed and their speedups over a dense int8 reference of the same
  architecture: `--reference_tflite`, or else the same trained model with its masks lifted
  (`export_model.unmasked_model`), converted, compiled by Vela and timed in TFLM the same way
  (interleaved with the pruned model over the same frames, median of `--timing_repeats`).
  A tfmot model's zeros are in its weights (no mask to lift): without `--reference_tflite`
  its speedups are None.

An export writes all of these files or none: they are built in a hidden temporary folder beside
them (`.<name>.export-XXXX`) and moved into place only when every stage succeeded, the card
last, so a present `model_card.json` means a complete export. A failure (conversion,
validation, Vela, ...) leaves the output folder as it was, an earlier export included.

Representative (calibration) frames are noisy mixtures of the corpus's training split. A QAT
model whose TFLM output differs from its Keras output by more than `--tolerance_lsb` (mask, 99th
percentile), `--tolerance_mean_lsb` (mask, mean) or `--tolerance_si_sdr_db` (mean SI-SDR of
the enhanced utterances) is an
error and nothing is written. For a float model the int8 output cannot reproduce the float
output to an LSB, so the same numbers are reported without the check. `--strict` also fails
(after writing the artifacts) when a deployment constraint of the card fails.
"""
import contextlib
import json
import os
import shutil
import tempfile

from absl import flags
import numpy as np

from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import enhancer
from tf_tinyse import features
from tf_tinyse import fileio
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse.errors import UserError
from tflm_export import export_model
from tflm_export import frontend
from tflm_export import macs
from tflm_export import model_card
from tflm_export import sparse_tflite
from tflm_export import tflm_runner
from tflm_export import vela

FLAGS = flags.FLAGS

# tf_tinyse.enhance defines --output as well (its WAV); allow_override lets both CLIs' modules
# live in one process (tests, the pipeline) with the same flag name the issue specifies.
flags.DEFINE_string("output", None, "Output file: for export, the int8 .tflite to write "
                    "(model_vela.tflite, the Vela summary and model_card.json go beside it).",
                    allow_override=True)
flags.DEFINE_enum("accelerator", "ethos-u55-128", vela.ACCELERATORS,
                  "Ethos-U configuration Vela compiles for (MACs per cycle in the name).")
flags.DEFINE_float("sram_kib", None, "Device SRAM budget in KiB, checked against Vela's SRAM "
                   "(summary CSV) for the Ethos-U target; unset: not checked.")
flags.DEFINE_float("flash_kib", None, "Device flash budget in KiB, checked against the size of "
                   "model_vela.tflite (the file the Ethos-U target flashes); unset: not "
                   "checked.")
flags.DEFINE_bool("strict", False, "Exit non-zero when a deployment constraint of the model "
                  "card fails (the artifacts are still written).")
flags.DEFINE_float("tolerance_lsb", 8.0, "TFLM vs Keras-QAT agreement required: 99 % of mask "
                   "values within this many output LSBs (1/256). One rounding flip at the "
                   "pinned sigmoid pre-activation grid (step 8/255) moves the mask by up to 2 "
                   "LSB, and a flip in the integer LSTM (16-bit gates) runs on in its state, so "
                   "the tail varies from model to model: the demo main job measured 4, 4 and 6 "
                   "LSB over three seeds. The card reports the maximum.")
flags.DEFINE_float("tolerance_mean_lsb", 1.0, "TFLM vs Keras-QAT agreement required: mean mask "
                   "difference in output LSBs. The statistic that tells a grid mismatch from "
                   "rounding: trained QAT models measure 0.14-0.63 LSB, a float model run on "
                   "int8 grids about 2.2 (tests/keras_layers/test_quantized_lstm.py).")
flags.DEFINE_float("tolerance_si_sdr_db", 0.1, "TFLM vs Keras-QAT agreement required in quality: "
                   "mean SI-SDR of the enhanced validation utterances within this many dB.")
flags.DEFINE_integer("representative_files", 8, "Training mixtures whose frames calibrate the "
                     "int8 activation ranges.")
flags.DEFINE_integer("validation_files", 4, "Test utterances run in TFLM and Keras to validate "
                     "the export.")
flags.DEFINE_string("reference_tflite", None, "Pruned models: a dense int8 export of the same "
                    "architecture (e.g. the dense QAT model of the run) that the card's "
                    "speedups are measured against; default: the model_dir's own weights with "
                    "their pruning masks lifted (not possible for --pruning=tfmot).")
flags.DEFINE_integer("timing_frames", 200, "Pruned models: frames per TFLM timing run of the "
                     "model and its dense reference.")
flags.DEFINE_integer("timing_repeats", 3, "Pruned models: interleaved TFLM timing runs of the "
                     "model and its reference; the median is reported.")
flags.register_validator("timing_frames", lambda v: v >= 1, "--timing_frames must be >= 1")
flags.register_validator("timing_repeats", lambda v: v >= 1, "--timing_repeats must be >= 1")
for _name in ("sram_kib", "flash_kib"):
  flags.register_validator(_name, lambda v: v is None or v > 0, f"--{_name} must be > 0")
for _name in ("representative_files", "validation_files"):
  flags.register_validator(_name, lambda v: v >= 1, f"--{_name} must be >= 1")
for _name in ("tolerance_lsb", "tolerance_mean_lsb", "tolerance_si_sdr_db"):
  flags.register_validator(_name, lambda v: v >= 0, f"--{_name} must be >= 0")

CARD_FILE = "model_card.json"
SPARSE_SUFFIX = "_sparse.tflite"


def sparse_path(tflite_path):
  """`model.tflite` → `model_sparse.tflite` (beside it)."""
  return os.path.splitext(os.fspath(tflite_path))[0] + SPARSE_SUFFIX


def _target_sparsity(model_dir):
  """The run's target sparsity from `model_dir/sparsity.json`, or None."""
  path = os.path.join(model_dir, sparsity.SPARSITY_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      report = json.load(f)
  except ValueError as e:
    raise UserError(f"'{path}' is not valid JSON ({e}); delete it or train again") from e
  target = report.get("target", (report.get("schedule") or {}).get("target"))
  return None if target is None else float(target)


def _read_reference(path, config):
  """The dense int8 bytes of `--reference_tflite`, checked against `config`'s layer sizes."""
  if not os.path.isfile(path):
    raise UserError(f"--reference_tflite '{path}' does not exist: pass a dense int8 export "
                    "(python -m tf_tinyse.export) of the same architecture")
  with open(path, "rb") as f:
    data_bytes = f.read()
  try:
    dense = sparse_tflite.decode(data_bytes)  # A sparse file is densified first.
    layers = macs.count_macs(dense).layers
  except (UserError, ValueError) as e:
    raise UserError(f"--reference_tflite '{path}' is not an int8 mask model ({e}); pass a "
                    "dense export of the same architecture") from e
  expected = [*config.lstm_units, *config.dense_units, config.feature.num_bands]
  if [layer.units for layer in layers] != expected:
    raise UserError(f"--reference_tflite '{path}' has layers of {[l.units for l in layers]} "
                    f"units, the model_dir's config {expected}: pass a dense export of the "
                    "same architecture")
  return dense


def _dense_reference(model_dir, trained_model, config, representative, reference_tflite):
  """(bytes, description, path) of the dense reference, or (None, reason, None)."""
  if reference_tflite:
    return (_read_reference(reference_tflite, config), "--reference_tflite",
            os.fspath(reference_tflite))
  unmasked = export_model.unmasked_model(trained_model, config)
  if unmasked is None:
    return (None, f"'{model_dir}' was pruned with --pruning={config.pruning}: its zeros are in "
            "the weights themselves (no mask to lift); pass --reference_tflite=DENSE (a dense "
            "int8 export of the same architecture) for speedups", None)
  return (export_model.convert_trained_model(*unmasked, representative),
          model_card.UNMASKED_REFERENCE, None)


def _mixtures(corpus, data_config, split, max_files, seed):
  return data.make_evaluation_set(corpus, split, seed=seed, max_files=max_files,
                                  snr_db_range=(data_config.snr_db_min, data_config.snr_db_max),
                                  skip_bad_audio=data_config.skip_bad_audio)


def _features(wave, feature_config):
  return features.waveform_features(np.asarray(wave, np.float32)[None], feature_config).numpy()[0]


def validate(tflm, keras_streaming_model, fe, examples):
  """TFLM (behind the front-end `fe`) vs Keras streaming over whole utterances, each from a
  reset state.

  Returns the card's `validation` section: mask max/mean absolute error (mask units and output
  LSBs), and the mean SI-SDR of the noisy input and of both enhanced outputs.
  """
  feature_config = fe.feature
  run_tflm = enhancer.StreamingEnhancer.from_tflm(tflm, fe)
  run_keras = enhancer.StreamingEnhancer.from_keras(keras_streaming_model, feature_config)
  errors, scores = [], {"noisy": [], "tflm": [], "keras": []}
  for example in examples:
    mask_tflm, enhanced_tflm = run_tflm.enhance_with_mask(example.noisy)
    mask_keras, enhanced_keras = run_keras.enhance_with_mask(example.noisy)
    errors.append(np.abs(mask_tflm - mask_keras).reshape(-1))
    for key, wave in (("noisy", example.noisy), ("tflm", enhanced_tflm),
                      ("keras", enhanced_keras)):
      scores[key].append(metrics.si_sdr(example.clean, wave))
  keras_streaming_model.reset_states()
  tflm.reset()
  err = np.concatenate(errors)
  return {
      "utterances": [e.name for e in examples],
      "frames": int(err.size // feature_config.num_bands),
      "mask_max_abs_error": float(err.max()),
      "mask_mean_abs_error": float(err.mean()),
      "mask_max_abs_error_lsb": float(err.max() / tflm.output_scale),
      "mask_mean_abs_error_lsb": float(err.mean() / tflm.output_scale),
      "mask_p99_abs_error_lsb": float(np.percentile(err, 99) / tflm.output_scale),
      "mask_fraction_within_2_lsb": float(np.mean(err <= 2.0 * tflm.output_scale + 1e-9)),
      "si_sdr_noisy_db": float(np.mean(scores["noisy"])),
      "si_sdr_tflm_db": float(np.mean(scores["tflm"])),
      "si_sdr_keras_db": float(np.mean(scores["keras"])),
  }


def export_model_dir(model_dir, output_path, corpus, data_config, *,
                     accelerator="ethos-u55-128", sram_kib=None, flash_kib=None,
                     representative_files=8, validation_files=4, seed=0, tolerance_lsb=8.0,
                     tolerance_si_sdr_db=0.1, tolerance_mean_lsb=1.0, reference_tflite=None,
                     timing_frames=200, timing_repeats=3):
  """Exports the trained model of `model_dir`; returns the model card (also written).

  Args:
    model_dir: a training run's folder (`config.json` + best weights or checkpoints).
    output_path: the `.tflite` to write; `model_vela.tflite` (named after it), the Vela
      summary CSV and `model_card.json` go into the same folder.
    corpus: `data.Corpus` with a train split (calibration) and a test split (validation).
    data_config: `data.DataConfig` (SNR range of the mixtures, skip_bad_audio).
    accelerator: Ethos-U configuration for Vela (`vela.ACCELERATORS`).
    sram_kib, flash_kib: device budgets for the memory constraint; None: not checked.
    representative_files, validation_files: mixtures used for calibration / validation.
    seed: picks the mixtures (noise, offset, SNR); same seed, same export.
    tolerance_lsb: largest allowed TFLM vs Keras mask difference (99th percentile, output
      LSBs) for a QAT model.
    tolerance_si_sdr_db: largest allowed difference of the TFLM and Keras mean SI-SDR over
      the validation utterances for a QAT model.
    tolerance_mean_lsb: largest allowed mean TFLM vs Keras mask difference (output LSBs).
    reference_tflite: pruned models: the dense int8 `.tflite` the speedups are measured
      against; None: built from the unmasked weights (`export_model.unmasked_model`).
    timing_frames, timing_repeats: pruned models: the TFLM timing of the model and its
      reference (interleaved, same frames, median of the repeats).

  Raises:
    UserError: no trained model, no train/test split, conversion refused, Vela failure, or a
      QAT model whose TFLM output disagrees beyond the tolerance. On any failure nothing is
      written: the output folder is left as it was (all files are staged and moved in last).
  """
  output_path = os.fspath(output_path)
  if not output_path.endswith(".tflite"):
    raise UserError(f"--output '{output_path}' must name a .tflite file")
  config, keras_model = model_lib.load_trained(model_dir, streaming=True)
  representative = [_features(e.noisy, config.feature)
                    for e in _mixtures(corpus, data_config, "train", representative_files, seed)]
  examples = _mixtures(corpus, data_config, "test", validation_files, seed)

  tflite_bytes = export_model.convert_trained_model(keras_model, config, representative)
  tflm = tflm_runner.TflmModel(tflite_bytes)
  fe = frontend.Frontend.from_model(keras_model, config.feature)
  validation = validate(tflm, keras_model, fe, examples)
  validation["reference"] = "keras_qat" if config.quantize else "keras_float"
  validation["tolerance_lsb"] = tolerance_lsb if config.quantize else None
  validation["tolerance_si_sdr_db"] = tolerance_si_sdr_db if config.quantize else None
  validation["tolerance_mean_lsb"] = tolerance_mean_lsb if config.quantize else None
  si_sdr_gap = abs(validation["si_sdr_tflm_db"] - validation["si_sdr_keras_db"])
  if config.quantize and (validation["mask_p99_abs_error_lsb"] > tolerance_lsb
                          or validation["mask_mean_abs_error_lsb"] > tolerance_mean_lsb
                          or si_sdr_gap > tolerance_si_sdr_db):
    raise UserError(
        f"the int8 model of '{model_dir}' disagrees with its Keras QAT model over "
        f"{len(examples)} test utterances: 99 % of mask values within "
        f"{validation['mask_p99_abs_error_lsb']:.1f} LSB (max "
        f"{validation['mask_max_abs_error_lsb']:.1f}, mean "
        f"{validation['mask_mean_abs_error_lsb']:.2f}; --tolerance_lsb={tolerance_lsb:g}, "
        f"--tolerance_mean_lsb={tolerance_mean_lsb:g}), "
        f"SI-SDR {validation['si_sdr_tflm_db']:.2f} vs {validation['si_sdr_keras_db']:.2f} dB "
        f"(--tolerance_si_sdr_db={tolerance_si_sdr_db:g}); nothing was written. Report this as "
        "a bug (the QAT grid no longer matches the converter's)")

  pruned = config.sparsity_structure is not None
  sparse_bytes = None
  if pruned and config.sparsity_structure in ("weight", "block"):
    block = config.block_size if config.sparsity_structure == "block" else 1
    sparse_bytes = sparse_tflite.encode(tflite_bytes, block_size=block)
    if sparse_tflite.decode(sparse_bytes) != tflite_bytes:
      raise RuntimeError("sparse_tflite.decode(encode(model)) differs from the model: a bug "
                         "in tflm_export.sparse_tflite; nothing was written")
  reference_bytes = reason = reference_path = None
  if pruned:
    reference_bytes, reason, reference_path = _dense_reference(
        model_dir, keras_model, config, representative, reference_tflite)

  folder = os.path.dirname(os.path.abspath(output_path))
  with _staging_folder(folder, os.path.basename(output_path)) as staging:
    staged = os.path.join(staging, os.path.basename(output_path))
    fileio.write_bytes_atomic(staged, tflite_bytes)
    fe.save(frontend.frontend_path(staged))
    vela_report = vela.run_vela(staged, staging, accelerator=accelerator)
    sparsity_section = None
    if pruned:
      if sparse_bytes is not None:
        fileio.write_bytes_atomic(sparse_path(staged), sparse_bytes)
      sparsity_section = _sparsity_section(
          config, keras_model, staged, sparse_bytes is not None, vela_report, staging, folder,
          [fe.model_input(f) for f in representative], reference_bytes, reason,
          reference_path, accelerator, _target_sparsity(model_dir), timing_frames,
          timing_repeats)
    card = model_card.build_model_card(
        keras_model=keras_model, tflite_path=staged, front_end=fe,
        feature_config=config.feature, tflm_model=tflm, vela_report=vela_report,
        sram_kib=sram_kib, flash_kib=flash_kib, card_dir=staging)
    # The staged files keep their names in `folder`, so paths relative to `staging` hold there.
    card["model_dir"] = model_card.card_path(os.fspath(model_dir), folder)
    card["quantization_aware"] = config.quantize
    card["vela_summary_csv"] = model_card.card_path(vela_report.summary_csv_path, staging)
    card["frontend"] = model_card.card_path(frontend.frontend_path(staged), staging)
    card["validation"] = validation
    card["sparsity"] = sparsity_section
    fileio.write_json_atomic(os.path.join(staging, CARD_FILE), card)
    outputs = [staged, frontend.frontend_path(staged), vela_report.vela_tflite_path,
               vela_report.summary_csv_path]
    if sparse_bytes is not None:
      outputs.append(sparse_path(staged))
    _move_into_place(outputs, os.path.join(staging, CARD_FILE), folder)
  return card


def _sparsity_section(config, keras_model, staged, has_sparse, vela_report, staging, folder,
                      model_inputs, reference_bytes, reason, reference_path, accelerator,
                      target, timing_frames, timing_repeats):
  """Times the model (and its reference, Vela'd in a scratch folder of `staging` that is not
  moved into place) and builds the card's `sparsity` section."""
  frames = np.concatenate(model_inputs)[:timing_frames]
  models = [tflm_runner.TflmModel(_read_bytes(staged))]
  reference_vela = None
  if reference_bytes is not None:
    scratch = tempfile.mkdtemp(prefix=".reference-", dir=staging)
    reference_file = os.path.join(scratch, "reference.tflite")
    fileio.write_bytes_atomic(reference_file, reference_bytes)
    reference_vela = vela.run_vela(reference_file, scratch, accelerator=accelerator)
    models.append(tflm_runner.TflmModel(reference_bytes))
  host_ms = tflm_runner.interleaved_ms_per_frame(models, frames, timing_repeats)
  timing = {"frames": int(len(frames)), "repeats": timing_repeats, "statistic": "median",
            "interleaved_with_reference": reference_bytes is not None}
  reference = None
  if reference_bytes is not None:
    reference = model_card.DenseReference(
        description=reason, path=reference_path, tflite_bytes=reference_bytes,
        vela_report=reference_vela, host_ms_per_frame=host_ms[1])
  section = model_card.build_sparsity_section(
      config=config, keras_model=keras_model, tflite_path=staged,
      sparse_tflite_path=sparse_path(staged) if has_sparse else None, vela_report=vela_report,
      host_ms_per_frame=host_ms[0], timing=timing, target=target, reference=reference,
      no_reference_reason=None if reference is not None else reason, card_dir=staging)
  if reference is not None and reference.path is not None:
    # A given file lies outside the export: relative to the final folder, like `model_dir`.
    section["speed"]["reference"]["path"] = model_card.card_path(reference.path, folder)
  return section


def _read_bytes(path):
  with open(path, "rb") as f:
    return f.read()


@contextlib.contextmanager
def _staging_folder(folder, name):
  """A hidden temporary folder in `folder` (same filesystem: each final move is a rename),
  removed on exit; on an exception, `folder` is removed as well when this created it empty."""
  created = not os.path.isdir(folder)
  os.makedirs(folder, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.splitext(name)[0]}.export-", dir=folder)
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(folder)
    raise
  shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(files, card_file, folder):
  """Renames `files` and then `card_file` into `folder`. An earlier card there is removed
  first, so that at every moment a card present in `folder` describes the files beside it."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(folder, os.path.basename(card_file)))
  for path in [*files, card_file]:
    os.replace(path, os.path.join(folder, os.path.basename(path)))


def failed_constraints(card):
  return [name for name, check in card["constraints"].items()
          if check["status"] == model_card.FAIL]


def _kib(n):
  return "?" if n is None else f"{n / 1024:.1f} KiB"


def format_card(card):
  """A short human summary of a model card."""
  v, val, tflm = card.get("vela"), card["validation"], card["tflm"]
  lines = [f"int8 model: {card['parameters']:,} parameters ({card['nonzero_parameters']:,} "
           f"non-zero), .tflite {_kib(card['tflite_bytes'])}"]
  if v:
    lines.append(f"Vela {v['accelerator']}: {v['cycles_npu']:,} NPU / {v['cycles_total']:,} "
                 f"total cycles, {v['inference_ms_per_frame']:.3f} ms per frame, flash "
                 f"{_kib(v['flash_bytes'])} (weights {_kib(v['encoded_weight_bytes'])}), SRAM "
                 f"{_kib(v['sram_bytes'])}")
  host_ms = tflm["host_ms_per_frame"]
  lines.append(f"TFLM: arena {_kib(tflm['arena_used_bytes'])}, "
               f"{'?' if host_ms is None else f'{host_ms:.2f}'} ms per frame on this host; "
               f"algorithmic latency {card['algorithmic_latency_ms']:.0f} ms, hop "
               f"{card['hop_ms']:.0f} ms")
  reference = "Keras QAT" if val["reference"] == "keras_qat" else "Keras float"
  tolerance = ("" if val["tolerance_lsb"] is None else
               f" (tolerance {val['tolerance_lsb']:g})")
  lines.append(f"TFLM vs {reference} over {len(val['utterances'])} test utterances "
               f"({val['frames']} frames): mask error mean {val['mask_mean_abs_error_lsb']:.2f} "
               f"LSB, 99 % within {val['mask_p99_abs_error_lsb']:.0f} LSB{tolerance}, max "
               f"{val['mask_max_abs_error_lsb']:.0f} LSB; SI-SDR TFLM "
               f"{val['si_sdr_tflm_db']:.2f} dB, Keras {val['si_sdr_keras_db']:.2f} dB, noisy "
               f"{val['si_sdr_noisy_db']:.2f} dB")
  if card.get("sparsity"):
    lines += format_sparsity(card["sparsity"])
  lines.append("constraints: " + ", ".join(f"{name} {check['status']}"
                                           for name, check in card["constraints"].items()))
  return "\n".join(lines)


def _x(value):
  return "?" if value is None else f"{value:.2f}x"


def format_sparsity(section):
  """The few lines of `format_card` about a pruned model's `sparsity` section."""
  target = "" if section["target"] is None else f" (target {section['target']:.2f})"
  b, speed = section["bytes"], section["speed"]
  lines = [f"sparsity: {section['structure']} pruning ({section['strategy']}), "
           f"{section['achieved']:.2f}{target}; {section['nonzero_kernel_weights']:,} of "
           f"{section['kernel_weights']:,} kernel weights non-zero"]
  sparse = b["sparse_tflite"]
  sizes = f"bytes: .tflite {_kib(b['tflite'])}"
  if sparse and sparse["encoded_tensors"]:
    sizes += (f", {sparse['path']} {_kib(sparse['file_bytes'])} ({sparse['encoded_tensors']} "
              f"matrices: values {_kib(sparse['values_bytes'])}, indices "
              f"{_kib(sparse['index_bytes'])}, metadata {_kib(sparse['metadata_bytes'])}; "
              "storage only, decode to run)")
  elif sparse:
    sizes += (f", {sparse['path']} {_kib(sparse['file_bytes'])} (no matrix encoded: the sparse "
              "form of each would be larger)")
  sizes += f", Vela flash {_kib(b['vela_flash'])}, paper's estimate {_kib(b['paper_estimate'])}"
  lines.append(sizes)
  m, up = speed["macs_per_frame"], speed["speedup_over_reference"] or {}
  lines.append(f"MACs per frame: dense {m['dense']:,} ({_x(up.get('macs_dense'))}), "
               f"1x{m['block_size']} blocks {m['block']:,} ({_x(up.get('macs_block'))}), "
               f"unit-shrunk {m['unit']:,} ({_x(up.get('macs_unit'))})")
  host = speed["tflm_host_ms_per_frame"]
  vela_line = "" if speed["vela"] is None else (
      f"Vela {speed['vela']['cycles_total']:,} cycles ({_x(up.get('vela_cycles_total'))}), ")
  lines.append(f"speed: {vela_line}TFLM host {host:.3f} ms/frame ({_x(up.get('tflm_host'))})")
  reference = speed["reference"]
  lines.append(f"speedups over the dense reference {reference['path'] or reference['description']}"
               if reference else f"no speedups: {speed['no_reference_reason']}")
  return lines


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  if not FLAGS.model_dir:
    raise UserError("--model_dir is required: the folder of a training run")
  if not FLAGS.output:
    raise UserError("--output is required: the .tflite file to write, e.g. --output=model.tflite")
  if not FLAGS.data_dir:
    raise UserError("--data_dir is required: real training audio calibrates the int8 ranges "
                    "and test audio validates the export")
  model_lib.load_config(FLAGS.model_dir)  # A bad model_dir fails before the corpus is read.
  data_config = data.DataConfig.from_flags()
  corpus = data.discover_corpus(FLAGS.data_dir, **data_config.split_options())
  card = export_model_dir(FLAGS.model_dir, FLAGS.output, corpus, data_config,
                          accelerator=FLAGS.accelerator, sram_kib=FLAGS.sram_kib,
                          flash_kib=FLAGS.flash_kib,
                          representative_files=FLAGS.representative_files,
                          validation_files=FLAGS.validation_files,
                          tolerance_lsb=FLAGS.tolerance_lsb,
                          tolerance_si_sdr_db=FLAGS.tolerance_si_sdr_db,
                          tolerance_mean_lsb=FLAGS.tolerance_mean_lsb,
                          reference_tflite=FLAGS.reference_tflite,
                          timing_frames=FLAGS.timing_frames,
                          timing_repeats=FLAGS.timing_repeats)
  print(format_card(card))
  folder = os.path.dirname(os.path.abspath(FLAGS.output))
  card_file = os.path.join(folder, CARD_FILE)
  beside = [card["frontend"], card["vela"]["vela_tflite_path"], card["vela_summary_csv"]]
  if card["sparsity"] and card["sparsity"]["bytes"]["sparse_tflite"]:
    beside.append(card["sparsity"]["bytes"]["sparse_tflite"]["path"])
  print("wrote " + ", ".join([FLAGS.output, *(model_card.resolve_path(card_file, p)
                                              for p in beside), card_file]))
  failed = failed_constraints(card)
  if failed and FLAGS.strict:
    raise UserError(f"deployment constraint(s) failed: {', '.join(failed)} (see 'constraints' "
                    f"in {os.path.join(folder, CARD_FILE)}); without --strict this is a warning")
  if failed:
    print(f"warning: deployment constraint(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  cli.run(main)
