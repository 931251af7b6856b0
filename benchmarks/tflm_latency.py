"""Per-frame cost of the paper-size int8 TinyLSTM in TFLite Micro (this host) and on Ethos-U55.

Builds the streaming mask model (LSTM 256 ×2, Dense 128 tanh, Dense 128 sigmoid, QEQ) with
random weights, calibrates and converts it to int8 on compressed mel features of real audio
(all audio under --data_dir; the demo corpus when it is not given), runs it frame by frame in the TFLM interpreter
and compiles it with Vela for each --accelerators. Random weights do not change the cost:
nothing is pruned, so every MAC is done.

  python benchmarks/tflm_latency.py
  python benchmarks/tflm_latency.py --data_dir=/path/to/corpus --accelerators=ethos-u55-128
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

import tf_tinyse  # pylint: disable=unused-import  (sets TF_USE_LEGACY_KERAS)
from tf_tinyse import audio
from tf_tinyse import cli
from tf_tinyse import data  # pylint: disable=unused-import  (owns --data_dir)
from tf_tinyse import demo_data
from tf_tinyse import features
from tf_tinyse import fileio
from tf_tinyse import model as model_lib
from tflm_export import convert
from tflm_export import tflm_runner
from tflm_export import vela

flags.DEFINE_integer("num_files", 4, "Audio files to take features from.")
flags.DEFINE_float("seconds_per_file", 4.0, "Seconds of each file used.")
flags.DEFINE_list("accelerators", ["ethos-u55-128", "ethos-u55-256"], "Vela targets.")
flags.DEFINE_string("output_dir", None, "Where to keep the .tflite and Vela outputs "
                    "(default: a temporary folder, removed at exit).")

FLAGS = flags.FLAGS


def feature_utterances(data_dir, config, num_files, seconds):
  """Compressed mel features [frames, bands] of the first `num_files` audio files."""
  files = audio.list_audio_files(data_dir, what="data_dir")[:num_files]
  out = []
  for path in files:
    wave = audio.read_audio(path)[:int(seconds * config.sample_rate)]
    spectra = features.stft(wave[None], config)
    out.append(features.mel_features(spectra, config).numpy()[0])
  return out


def report(output_dir):
  config = model_lib.ModelConfig()  # the paper's sizes
  data_dir = FLAGS.data_dir or demo_data.path()
  utterances = feature_utterances(data_dir, config.feature, FLAGS.num_files,
                                  FLAGS.seconds_per_file)
  keras_model = model_lib.build_mask_model(config, streaming=True)
  tflite_bytes = convert.convert_to_int8(keras_model, utterances)
  path = os.path.join(output_dir, "tinylstm_256x2.tflite")
  fileio.write_bytes_atomic(path, tflite_bytes)

  tflm = tflm_runner.TflmModel(tflite_bytes)
  for u in utterances:
    tflm.reset()
    tflm.run(u)
  frames = sum(len(u) for u in utterances)
  match = tflm_runner.compare_with_keras(tflm, keras_model, utterances[:1])
  hop_ms = 1000.0 * config.feature.hop_length / config.feature.sample_rate

  print(f"model: LSTM {config.lstm_units} dense {config.dense_units}, "
        f"{model_lib.count_parameters(keras_model)} parameters")
  print(f"features: {frames} frames from {len(utterances)} files of '{data_dir}'")
  print(f"tflite bytes:              {os.path.getsize(path)}")
  print(f"TFLM arena used bytes:     {tflm.arena_used_bytes}")
  print(f"TFLM ms/frame (this host): {1000.0 * tflm.mean_invoke_seconds:.3f}  "
        f"(budget {hop_ms:.0f} ms hop)")
  print(f"TFLM vs float Keras:       max {match['max_abs_error_lsb']:.2f} LSB, "
        f"mean {match['mean_abs_error_lsb']:.3f} LSB")
  for accelerator in FLAGS.accelerators:
    r = vela.run_vela(path, os.path.join(output_dir, accelerator), accelerator=accelerator)
    print(f"{accelerator} ({r.system_config}, {r.memory_mode}, {r.core_clock_hz / 1e6:.0f} MHz): "
          f"cycles npu {r.cycles_npu} total {r.cycles_total}, "
          f"{1000.0 * r.inference_time_s:.3f} ms/frame, SRAM {r.sram_bytes} B, "
          f"flash {r.flash_bytes} B, encoded weights {r.encoded_weight_bytes} B, "
          f"NPU ops {r.npu_op_fraction:.0%}")


def main(argv):
  del argv
  if FLAGS.output_dir:
    report(FLAGS.output_dir)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      report(tmp)


if __name__ == "__main__":
  cli.run(main)
