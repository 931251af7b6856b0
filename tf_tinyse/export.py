"""Export CLI: trained model dir → int8 `.tflite`, Vela compile, TFLM validation, model card.

    python -m tf_tinyse.export --model_dir=OUT --output=model.tflite --data_dir=DIR \\
        [--accelerator=ethos-u55-128] [--sram_kib=N --flash_kib=N] [--strict]

writes, next to `--output`:
- `model_frontend.json`: what runs before the int8 model (feature settings, QEQ gain and
  bias; `tflm_export.frontend`);
- `model.tflite`: full-integer streaming model (one frame in, one mask frame out, LSTM state in
  variable tensors, fused UNIDIRECTIONAL_SEQUENCE_LSTM); for a QAT model its LSTM grids are the
  ones training used (`tflm_export.export_model`);
- `model_vela.tflite` and Vela's summary CSV for the chosen Ethos-U configuration;
- `model_card.json`: `tflm_export.model_card` plus a `validation` section: the `.tflite` run in
  TFLite Micro frame by frame over real test utterances (state reset between them) against the
  Keras streaming model: mask max/mean absolute error in output LSBs (1/256) and the SI-SDR of
  both enhanced outputs.

Representative (calibration) frames are noisy mixtures of the corpus's training split. A QAT
model whose TFLM output differs from its Keras output by more than `--tolerance_lsb` (mask, 99th
percentile) or `--tolerance_si_sdr_db` (mean SI-SDR of the enhanced utterances) is an
error and nothing is written. For a float model the int8 output cannot reproduce the float
output to an LSB, so the same numbers are reported without the check. `--strict` also fails
(after writing the artifacts) when a deployment constraint of the card fails.
"""
import os

from absl import flags
import numpy as np

from tf_tinyse import cli
from tf_tinyse import data
from tf_tinyse import enhancer
from tf_tinyse import features
from tf_tinyse import fileio
from tf_tinyse import metrics
from tf_tinyse import model as model_lib
from tf_tinyse.errors import UserError
from tflm_export import export_model
from tflm_export import frontend
from tflm_export import model_card
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
flags.DEFINE_float("sram_kib", None, "Device SRAM budget in KiB for the working memory "
                   "(TFLM arena); unset: not checked.")
flags.DEFINE_float("flash_kib", None, "Device flash budget in KiB for the compiled model; "
                   "unset: not checked.")
flags.DEFINE_bool("strict", False, "Exit non-zero when a deployment constraint of the model "
                  "card fails (the artifacts are still written).")
flags.DEFINE_float("tolerance_lsb", 4.0, "TFLM vs Keras-QAT agreement required: 99 % of mask "
                   "values within this many output LSBs (1/256). One rounding flip at the "
                   "pinned sigmoid pre-activation grid (step 8/255) moves the mask by up to 2 "
                   "LSB, so 4 allows two flips; the rest differ where the integer LSTM (16-bit "
                   "gates) and the float QAT cell round an activation to neighbouring int8 "
                   "steps. The card reports the maximum.")
flags.DEFINE_float("tolerance_si_sdr_db", 0.1, "TFLM vs Keras-QAT agreement required in quality: "
                   "mean SI-SDR of the enhanced validation utterances within this many dB.")
flags.DEFINE_integer("representative_files", 8, "Training mixtures whose frames calibrate the "
                     "int8 activation ranges.")
flags.DEFINE_integer("validation_files", 4, "Test utterances run in TFLM and Keras to validate "
                     "the export.")
for _name in ("sram_kib", "flash_kib"):
  flags.register_validator(_name, lambda v: v is None or v > 0, f"--{_name} must be > 0")
for _name in ("representative_files", "validation_files"):
  flags.register_validator(_name, lambda v: v >= 1, f"--{_name} must be >= 1")
for _name in ("tolerance_lsb", "tolerance_si_sdr_db"):
  flags.register_validator(_name, lambda v: v >= 0, f"--{_name} must be >= 0")

CARD_FILE = "model_card.json"


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
                     representative_files=8, validation_files=4, seed=0, tolerance_lsb=4.0,
                     tolerance_si_sdr_db=0.1):
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

  Raises:
    UserError: no trained model, no train/test split, conversion refused, Vela failure, or a
      QAT model whose TFLM output disagrees beyond the tolerance (then nothing is written).
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
  si_sdr_gap = abs(validation["si_sdr_tflm_db"] - validation["si_sdr_keras_db"])
  if config.quantize and (validation["mask_p99_abs_error_lsb"] > tolerance_lsb
                          or si_sdr_gap > tolerance_si_sdr_db):
    raise UserError(
        f"the int8 model of '{model_dir}' disagrees with its Keras QAT model over "
        f"{len(examples)} test utterances: 99 % of mask values within "
        f"{validation['mask_p99_abs_error_lsb']:.1f} LSB (max "
        f"{validation['mask_max_abs_error_lsb']:.1f}, mean "
        f"{validation['mask_mean_abs_error_lsb']:.2f}; --tolerance_lsb={tolerance_lsb:g}), "
        f"SI-SDR {validation['si_sdr_tflm_db']:.2f} vs {validation['si_sdr_keras_db']:.2f} dB "
        f"(--tolerance_si_sdr_db={tolerance_si_sdr_db:g}); nothing was written. Report this as "
        "a bug (the QAT grid no longer matches the converter's)")

  fileio.write_bytes_atomic(output_path, tflite_bytes)
  fe.save(frontend.frontend_path(output_path))
  folder = os.path.dirname(os.path.abspath(output_path))
  vela_report = vela.run_vela(output_path, folder, accelerator=accelerator)
  card = model_card.build_model_card(
      keras_model=keras_model, tflite_path=output_path,
      feature_config=config.feature, tflm_model=tflm, vela_report=vela_report,
      sram_kib=sram_kib, flash_kib=flash_kib)
  card["model_dir"] = os.fspath(model_dir)
  card["quantization_aware"] = config.quantize
  card["vela_summary_csv"] = vela_report.summary_csv_path
  card["frontend"] = frontend.frontend_path(output_path)
  card["validation"] = validation
  fileio.write_json_atomic(os.path.join(folder, CARD_FILE), card)
  return card


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
  lines.append("constraints: " + ", ".join(f"{name} {check['status']}"
                                           for name, check in card["constraints"].items()))
  return "\n".join(lines)


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
  corpus = data.discover_corpus(FLAGS.data_dir, data_config.validation_fraction)
  card = export_model_dir(FLAGS.model_dir, FLAGS.output, corpus, data_config,
                          accelerator=FLAGS.accelerator, sram_kib=FLAGS.sram_kib,
                          flash_kib=FLAGS.flash_kib,
                          representative_files=FLAGS.representative_files,
                          validation_files=FLAGS.validation_files,
                          tolerance_lsb=FLAGS.tolerance_lsb,
                          tolerance_si_sdr_db=FLAGS.tolerance_si_sdr_db)
  print(format_card(card))
  folder = os.path.dirname(os.path.abspath(FLAGS.output))
  print(f"wrote {FLAGS.output}, {card['vela']['vela_tflite_path']}, "
        f"{os.path.join(folder, CARD_FILE)}")
  failed = failed_constraints(card)
  if failed and FLAGS.strict:
    raise UserError(f"deployment constraint(s) failed: {', '.join(failed)} (see 'constraints' "
                    f"in {os.path.join(folder, CARD_FILE)}); without --strict this is a warning")
  if failed:
    print(f"warning: deployment constraint(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  cli.run(main)
