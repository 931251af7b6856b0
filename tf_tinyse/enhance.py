"""Enhances one audio file with a trained model, frame by frame.

    python -m tf_tinyse.enhance --model_dir=OUT --input=noisy.wav --output=enhanced.wav

Processing is causal and streaming: the streaming form of the model (batch 1,
one frame per step, state kept between steps) runs once per 16 ms hop, as on
the device. With --tflite the int8 model runs in the TFLite Micro interpreter.
Input of any sample rate and channel count that converts safely is resampled
to 16 kHz mono; the output is 16 kHz mono 16-bit WAV.
"""
from absl import flags

from tf_tinyse import audio
from tf_tinyse import cli
from tf_tinyse import enhancer
from tf_tinyse.errors import UserError

flags.DEFINE_string("input", None, "Noisy audio file to enhance (.wav/.flac/.ogg).")
flags.DEFINE_string("output", None, "Where to write the enhanced 16 kHz WAV.")

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  for name in ("input", "output"):
    if not FLAGS[name].value:
      raise UserError(f"--{name} is required")
  if not (FLAGS.model_dir or FLAGS.tflite):
    raise UserError("--model_dir (or --tflite) is required")
  noisy = audio.read_audio(FLAGS.input)
  # Streaming is the point of this command: frame by frame unless told otherwise.
  enhance = enhancer.make_enhancer(FLAGS.model_dir, streaming=True, tflite=FLAGS.tflite)
  audio.write_audio(FLAGS.output, enhance(noisy))
  print(f"wrote {FLAGS.output} ({len(noisy) / audio.SAMPLE_RATE:.2f} s)")


if __name__ == "__main__":
  cli.run(main)
