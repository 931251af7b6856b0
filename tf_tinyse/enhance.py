"""Enhances audio files with a trained model, frame by frame: one file, a folder or a glob.

    python -m tf_tinyse.enhance --model_dir=OUT --input=noisy.wav --output=enhanced.wav
    python -m tf_tinyse.enhance --model_dir=OUT --input_dir=recordings --output_dir=enhanced
    python -m tf_tinyse.enhance --model_dir=OUT --input_glob='recordings/**/*.flac' \\
        --output_dir=enhanced

Processing is causal and streaming: the streaming form of the model (batch 1,
one frame per step, state kept between steps and cleared before each file) runs
once per 16 ms hop, as on the device. With --tflite the int8 model runs in the
TFLite Micro interpreter. Input of any sample rate and channel count that
converts safely is resampled to 16 kHz mono; the output is 16 kHz mono 16-bit WAV
of the input's duration. A silent input (a muted stretch of a call) is enhanced
like any other, with a warning.

With --input_dir or --input_glob the model is loaded once for all files. Each
output is `<output_dir>/<relative path>` with the extension replaced by `.wav`;
outputs that already exist are skipped unless --overwrite, and every output is
written atomically, so rerunning an interrupted batch finishes it. A file that
cannot be read is reported in one line and the others go on; the run then ends
with a summary and exit status 2.
"""
import fnmatch
import glob
import os
import re
import sys

from absl import flags
from absl import logging
import numpy as np
import tqdm

from tf_tinyse import audio
from tf_tinyse import cli
from tf_tinyse import enhancer
from tf_tinyse.errors import UserError

_EXTENSIONS_TEXT = "/".join(audio.AUDIO_EXTENSIONS)

flags.DEFINE_string("input", None, f"Noisy audio file to enhance ({_EXTENSIONS_TEXT}); needs "
                    "--output.")
flags.DEFINE_string("output", None, "Where to write the enhanced 16 kHz WAV of --input.")
flags.DEFINE_string("input_dir", None, "Folder of noisy audio files to enhance, searched "
                    f"recursively for {_EXTENSIONS_TEXT} files (hidden and other files are "
                    "ignored); needs --output_dir.")
flags.DEFINE_string("input_glob", None, "Glob of noisy audio files to enhance, quoted so that "
                    "the shell leaves it alone; ** matches any depth of sub-folders, e.g. "
                    f"'recordings/**/*.flac'. Only {_EXTENSIONS_TEXT} matches count. Needs "
                    "--output_dir; output paths are relative to the glob's folder before its "
                    "first wildcard ('recordings' in the example).")
# tf_tinyse.pipeline defines --output_dir as well (its run folder); allow_override lets both
# modules live in one process.
flags.DEFINE_string("output_dir", None, "With --input_dir/--input_glob: the folder for the "
                    "enhanced 16 kHz WAVs, each at its input's relative path (sub-folders "
                    "kept) with the extension replaced by .wav.", allow_override=True)
flags.DEFINE_bool("overwrite", False, "With --input_dir/--input_glob: enhance again the files "
                  "whose output already exists (by default they are skipped, so that rerunning "
                  "an interrupted batch only does the rest).")

FLAGS = flags.FLAGS

# read_audio's advice for training data; enhance has no such flag and goes on past a bad file.
_SKIP_HINT = re.compile(r" or pass --skip_bad_audio")
_MAGIC = re.compile(r"[*?[]")


def read_noisy(path):
  """The waveform of one input file; a silent one is accepted with a warning."""
  try:
    wave = audio.read_audio(path, allow_silent=True)
  except UserError as e:
    raise UserError(_SKIP_HINT.sub("", str(e))) from e
  peak = float(np.max(np.abs(wave)))
  if peak < audio.SILENCE_PEAK:
    level = "-inf" if peak == 0 else f"{20 * np.log10(peak):.1f}"
    logging.warning("audio file '%s' is silent (peak %s dBFS); enhancing it anyway, the output "
                    "will be (near) silent too", path, level)
  return wave


def glob_root(pattern):
  """The folder of a glob before its first wildcard: 'a/b/**/*.wav' → 'a/b', '*.wav' → '.'."""
  parts = os.path.normpath(pattern).split(os.sep)
  fixed = []
  for part in parts[:-1]:
    if _MAGIC.search(part):
      break
    fixed.append(part)
  if not fixed:
    return "."
  return os.sep.join(fixed) or os.sep  # an absolute pattern's first part is ''


def _glob_matches(pattern, path):
  """Whether glob.glob(pattern, recursive=True) would match `path` once it exists."""

  def match(pattern_parts, path_parts):
    if not pattern_parts:
      return not path_parts
    head, rest = pattern_parts[0], pattern_parts[1:]
    if head == "**":
      return any(match(rest, path_parts[i:]) for i in range(len(path_parts) + 1))
    return bool(path_parts) and fnmatch.fnmatchcase(path_parts[0], head) and match(
        rest, path_parts[1:])

  return match(os.path.abspath(pattern).split(os.sep), os.path.abspath(path).split(os.sep))


def _inside(path, folder):
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _glob_inputs(pattern):
  root = glob_root(pattern)
  found = []
  for path in glob.glob(pattern, recursive=True):
    relative = os.path.relpath(path, root)
    if (os.path.isfile(path) and path.lower().endswith(audio.AUDIO_EXTENSIONS)
        and not any(part.startswith(".") for part in relative.split(os.sep))):
      found.append(path)
  if not found:
    raise UserError(f"--input_glob '{pattern}' matches no audio files (looked for "
                    f"{_EXTENSIONS_TEXT}); check the pattern")
  return root, sorted(found)


def batch_jobs(output_dir, input_dir=None, input_glob=None):
  """[(input path, output path)] of a folder or a glob, in sorted order.

  Raises:
    UserError: nothing to enhance, two inputs that would share an output (a.wav and a.flac),
      or outputs a rerun would take for inputs.
  """
  if input_dir is not None:
    root, inputs = input_dir, audio.list_audio_files(input_dir, "--input_dir")
    if _inside(output_dir, input_dir):
      raise UserError(f"--output_dir '{output_dir}' is inside --input_dir '{input_dir}': a "
                      "rerun would enhance the outputs again; pick a folder outside it")
  else:
    root, inputs = _glob_inputs(input_glob)
  jobs, sources = [], {}
  input_keys = {os.path.normcase(os.path.abspath(path)) for path in inputs}
  for path in inputs:
    relative = os.path.splitext(os.path.relpath(path, root))[0] + ".wav"
    output = os.path.join(output_dir, relative)
    if input_glob is not None and _glob_matches(input_glob, output):
      raise UserError(f"--output_dir '{output_dir}' is reached by --input_glob '{input_glob}' "
                      f"(e.g. '{output}'): a rerun would enhance the outputs again; pick a folder "
                      "the glob does not match")
    key = os.path.normcase(os.path.abspath(output))
    if key in input_keys:
      raise UserError(f"the output of '{path}' would overwrite the input '{output}'; pick "
                      "another --output_dir")
    if key in sources:
      raise UserError(f"'{sources[key]}' and '{path}' would both be written to '{output}'; "
                      "rename one of them")
    sources[key] = path
    jobs.append((path, output))
  return jobs


def enhance_files(enhance, jobs):
  """Enhances every (input, output) pair, going on past files that cannot be read.

  Returns:
    [(input path, error message)] of the files that failed.
  """
  failed = []
  for source, output in tqdm.tqdm(jobs, unit="file", file=sys.stderr, dynamic_ncols=True):
    try:
      audio.write_audio(output, enhance(read_noisy(source)))
    except UserError as e:
      tqdm.tqdm.write(f"failed: {e}", file=sys.stderr)
      failed.append((source, str(e)))
  return failed


def _check_flags(argv):
  if len(argv) > 1:
    hint = " (quote --input_glob so that the shell does not expand it)" if FLAGS.input_glob else ""
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags{hint}")
  given = [name for name in ("input", "input_dir", "input_glob") if FLAGS[name].value]
  if not given:
    raise UserError("nothing to enhance: give --input=FILE with --output=FILE, or "
                    "--input_dir=DIR or --input_glob=PATTERN with --output_dir=DIR")
  if len(given) > 1:
    raise UserError(f"--{given[0]} and --{given[1]} cannot be combined: give one of --input "
                    "(a file), --input_dir (a folder) or --input_glob (a pattern)")
  if given == ["input"]:
    if FLAGS.output_dir:
      raise UserError("--output_dir is for --input_dir/--input_glob; with --input give "
                      "--output=FILE")
    if not FLAGS.output:
      raise UserError("--output is required with --input (where to write the enhanced WAV)")
  else:
    if FLAGS.output:
      raise UserError(f"--output is for --input; with --{given[0]} give --output_dir=DIR")
    if not FLAGS.output_dir:
      raise UserError(f"--output_dir is required with --{given[0]} (where the enhanced WAVs go)")
  if not (FLAGS.model_dir or FLAGS.tflite):
    raise UserError("--model_dir (or --tflite) is required")


def _make_enhancer():
  # Streaming is the point of this command: frame by frame unless told otherwise.
  return enhancer.make_enhancer(FLAGS.model_dir, streaming=True, tflite=FLAGS.tflite)


def main(argv):
  _check_flags(argv)
  if FLAGS.input:
    noisy = read_noisy(FLAGS.input)
    audio.write_audio(FLAGS.output, _make_enhancer()(noisy))
    print(f"wrote {FLAGS.output} ({len(noisy) / audio.SAMPLE_RATE:.2f} s)")
    return
  jobs = batch_jobs(FLAGS.output_dir, input_dir=FLAGS.input_dir, input_glob=FLAGS.input_glob)
  todo = [job for job in jobs if FLAGS.overwrite or not os.path.exists(job[1])]
  skipped = len(jobs) - len(todo)
  failed = enhance_files(_make_enhancer(), todo) if todo else []
  summary = (f"enhanced {len(todo) - len(failed)}, skipped {skipped} existing, "
             f"failed {len(failed)}")
  if failed:
    names = ", ".join(f"'{source}'" for source, _ in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    raise UserError(f"{summary}: {names}{more} (see the 'failed:' lines above)")
  redo = " (--overwrite redoes them)" if skipped else ""
  print(f"{summary}{redo}; outputs in '{FLAGS.output_dir}'")


if __name__ == "__main__":
  cli.run(main)
