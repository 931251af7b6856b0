"""Builds the reference corpus from its public sources: the speech + noise corpus the README's
measured results come from (253 files: 31 minutes of speech, 15 of noise; the demo corpus is a
subset of it).

    python -m tf_tinyse.reference_corpus --output_dir=reference_corpus

It needs the internet: each source file (237 of them, 78 MB) is downloaded once from its GitHub
repository at a pinned commit (raw.githubusercontent.com), checked against its git blob SHA-1,
cut and processed as the recipe says, checked against the PCM checksum of the corpus file it
reproduces and written atomically as 16 kHz mono 16-bit FLAC. `SOURCES.md` (sources, licences,
attributions) and `manifest.csv` go beside the audio. Downloads are kept in
`<output_dir>/.downloads` (a hidden folder, ignored as training data), so an interrupted build
resumes where it stopped; files already built and verified are not built again.
`--source_url` points the build at a mirror instead, e.g.
`--source_url='file:///mirror/{repo}/{commit}/{path}'`.

The recipe (`reference_corpus/recipe.csv`) has one row per corpus file and needs no heuristics:
- `path`, `split`, `kind`, `seconds`, `speaker_or_noise_type`, `source`: the corpus file and its
  manifest.csv row;
- `repo`, `commit`, `source_path`, `source_sha1` (git blob SHA-1 of the download),
  `source_bytes`, `source_rate`, `source_channels`, `license`: where it comes from;
- `resample_quality` (soxr quality, empty where the source is at 16 kHz), `start` and `length`
  (samples at 16 kHz), `fade_in`/`fade_out` (1: a 10 ms linear ramp at that end), `gain`
  (applied last: sqrt(2) for stereo sources, whose channels the corpus summed to (L+R)/sqrt(2)
  where `audio.read_audio` averages them, and 0.99/peak where the piece was peak-limited);
- `pcm_sha256`: SHA-256 of the corpus file's 16-bit samples (little-endian);
- `build_sha256`, `max_diff`: the same of this recipe's build on the maintainer's machine
  (empty where that is bit-exact), and its largest sample difference from the corpus file (LSB).
  Vorbis and MP3 decoding differs by about 1e-3 LSB between builds, which flips samples lying
  next to a rounding tie by one LSB; the 24 kHz stereo MP3s differ more (their decoding differs
  from the corpus's);
- `sketch`, `rms_bound`: four pseudo-random +-1 projections of the corpus file's samples per
  second, from which the RMS difference of a build from the corpus file is estimated without the
  file itself; a build that matches neither checksum (other decoder or soxr versions) is
  accepted when that estimate stays within `rms_bound` LSB in every second (0.5, where build
  noise measured 0.02-0.11; more for the MP3 pieces). That bounds the RMS difference, not each
  sample: no checksum can do that without the samples themselves.
"""
import concurrent.futures
import csv
import dataclasses
import hashlib
import http.client
import io
import math
import os
import re
import string
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from absl import flags
from absl import logging
import numpy as np
import soundfile as sf
import soxr
import tqdm

from tf_tinyse import audio
from tf_tinyse import cli
from tf_tinyse import fileio
from tf_tinyse.errors import UserError

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_corpus")
RECIPE = os.path.join(DATA_DIR, "recipe.csv")
SOURCES_MD = os.path.join(DATA_DIR, "SOURCES.md")
DEFAULT_SOURCE_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
DOWNLOADS = ".downloads"

FADE_SAMPLES = 160  # 10 ms at 16 kHz
SKETCH_BLOCK = audio.SAMPLE_RATE  # one projection set per second
SKETCH_PROJECTIONS = 4
DEFAULT_RMS_BOUND = 0.5  # LSB per second; decoder and soxr noise measured 0.02-0.11

MANIFEST_COLUMNS = ("split", "kind", "path", "seconds", "speaker_or_noise_type", "source")
RECIPE_COLUMNS = MANIFEST_COLUMNS + (
    "repo", "commit", "source_path", "source_sha1", "source_bytes", "source_rate",
    "source_channels", "license", "resample_quality", "start", "length", "fade_in", "fade_out",
    "gain", "pcm_sha256", "build_sha256", "max_diff", "rms_bound", "sketch")

_URL_FIELDS = ("repo", "commit", "path")

# tf_tinyse.enhance and tf_tinyse.pipeline define --output_dir as well; allow_override lets the
# modules live in one process.
flags.DEFINE_string("output_dir", None, "reference_corpus: the folder to build the reference "
                    "corpus in (speech/ and noise/, SOURCES.md, manifest.csv).",
                    allow_override=True)
flags.DEFINE_string("source_url", DEFAULT_SOURCE_URL, "Where each source file is downloaded "
                    "from: a template with {repo}, {commit} and {path} (URL-quoted), http(s):// "
                    "or file:// (a local mirror).")
flags.DEFINE_string("recipe", RECIPE, "The recipe CSV: one row per corpus file (the shipped "
                    "one builds the reference corpus).")
flags.DEFINE_integer("jobs", 4, "Source files downloaded and processed at once.", lower_bound=1)
flags.DEFINE_float("download_timeout", 60.0, "Seconds a download may stall before it is retried.",
                   lower_bound=1.0)


def _template_fields(template):
  try:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
  except ValueError:
    return {"(malformed)"}


flags.register_validator(
    "source_url", lambda v: "path" in _template_fields(v) and
    _template_fields(v) <= set(_URL_FIELDS) and re.match(r"(https?|file)://", v) is not None,
    "--source_url must be an http(s):// or file:// template with {path} (and optionally {repo} "
    "and {commit}), e.g. 'file:///mirror/{repo}/{commit}/{path}'")

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Piece:
  """One recipe row: a corpus file and how it is made from its source."""
  path: str
  split: str
  kind: str
  seconds: str
  speaker_or_noise_type: str
  source: str
  repo: str
  commit: str
  source_path: str
  source_sha1: str
  source_bytes: int
  source_rate: int
  source_channels: int
  license: str
  resample_quality: str
  start: int
  length: int
  fade_in: bool
  fade_out: bool
  gain: float
  pcm_sha256: str
  build_sha256: str
  max_diff: int
  rms_bound: float
  sketch: tuple

  @property
  def source_key(self):
    return (self.repo, self.commit, self.source_path)

  def row(self):
    """The recipe CSV row of this piece."""
    values = dataclasses.asdict(self)
    values.update(fade_in=int(self.fade_in), fade_out=int(self.fade_out),
                  gain=repr(float(self.gain)), rms_bound=f"{float(self.rms_bound):g}",
                  sketch=" ".join(map(str, self.sketch)))
    return {k: str(values[k]) for k in RECIPE_COLUMNS}


_INT_FIELDS = ("source_bytes", "source_rate", "source_channels", "start", "length", "max_diff")


def _parse_row(row, where):
  missing = [c for c in RECIPE_COLUMNS if row.get(c) is None]
  if missing:
    raise UserError(f"{where}: missing column(s) {', '.join(missing)}")
  try:
    values = {c: row[c] for c in RECIPE_COLUMNS}
    for c in _INT_FIELDS:
      values[c] = int(row[c])
    values["fade_in"] = {"0": False, "1": True}[row["fade_in"]]
    values["fade_out"] = {"0": False, "1": True}[row["fade_out"]]
    values["gain"] = float(row["gain"])
    values["rms_bound"] = float(row["rms_bound"])
    values["sketch"] = tuple(int(v) for v in row["sketch"].split())
  except (KeyError, ValueError) as e:
    raise UserError(f"{where}: bad value ({e}); the recipe is damaged, restore it") from None
  piece = Piece(**values)
  path = piece.path
  if (os.path.isabs(path) or os.path.normpath(path).startswith("..") or "\\" in path
      or not path.endswith(".flac")):
    raise UserError(f"{where}: path '{path}' must be a relative .flac path inside the corpus")
  if not re.fullmatch(r"[0-9a-f]{40}", piece.source_sha1):
    raise UserError(f"{where}: source_sha1 '{piece.source_sha1}' is not a git blob id")
  if (piece.length < FADE_SAMPLES or piece.start < 0
      or len(piece.sketch) != _sketch_size(piece.length)):
    raise UserError(f"{where}: start/length/sketch do not fit together")
  if bool(piece.resample_quality) != (piece.source_rate != audio.SAMPLE_RATE):
    raise UserError(f"{where}: resample_quality must be given exactly when source_rate is not "
                    f"{audio.SAMPLE_RATE}")
  return piece


def load_recipe(path=RECIPE):
  """The pieces of a recipe CSV, in its order.

  Raises:
    UserError: the file is missing or not a recipe, or two rows share an output path.
  """
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
  except OSError as e:
    raise UserError(f"recipe '{path}' cannot be read ({e.strerror or e})") from None
  if not rows:
    raise UserError(f"recipe '{path}' holds no rows")
  pieces = [_parse_row(row, f"recipe '{path}' line {i + 2}") for i, row in enumerate(rows)]
  seen = set()
  for piece in pieces:
    if piece.path in seen:
      raise UserError(f"recipe '{path}': '{piece.path}' appears twice")
    seen.add(piece.path)
  return pieces


def write_recipe(path, pieces):
  """Writes pieces as a recipe CSV, atomically."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=RECIPE_COLUMNS, lineterminator="\n")
  writer.writeheader()
  for piece in pieces:
    writer.writerow(piece.row())
  fileio.write_text_atomic(path, out.getvalue())


def manifest_text(pieces):
  """manifest.csv of the corpus the pieces make, as the corpus's own (its columns, CRLF)."""
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(MANIFEST_COLUMNS)
  for piece in pieces:
    writer.writerow([getattr(piece, c) for c in MANIFEST_COLUMNS])
  return out.getvalue()


# Checksums.


def git_blob_sha1(data):
  """The id git gives a file's bytes: SHA-1 of b"blob <size>\\0" + data."""
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def pcm_sha256(pcm):
  """SHA-256 of 16-bit samples, little-endian."""
  return hashlib.sha256(np.asarray(pcm, dtype="<i2").tobytes()).hexdigest()


def _sketch_size(length):
  return SKETCH_PROJECTIONS * -(-length // SKETCH_BLOCK)


def _sketch_weights(length):
  """[length, SKETCH_PROJECTIONS] of +-1: the top bits of splitmix64 of the sample index."""
  with np.errstate(over="ignore"):
    x = np.arange(length, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  bits = [(x >> np.uint64(63 - k)) & np.uint64(1) for k in range(SKETCH_PROJECTIONS)]
  return 1 - 2 * np.stack(bits, axis=1).astype(np.int64)


def pcm_sketch(pcm):
  """Per second of samples, SKETCH_PROJECTIONS sums of the samples times pseudo-random +-1.

  The difference of two files' sketches, block by block, has the expected square of the
  squared difference of their samples summed over the block, whatever its shape: it estimates
  the RMS difference without either file.
  """
  pcm = np.asarray(pcm, dtype=np.int64)
  projected = pcm[:, None] * _sketch_weights(len(pcm))
  starts = np.arange(0, len(pcm), SKETCH_BLOCK)
  return tuple(int(v) for v in np.add.reduceat(projected, starts, axis=0).reshape(-1))


def sketch_rms_error(pcm, sketch):
  """The largest per-second RMS difference (LSB) of pcm from the file the sketch was made of."""
  mine = np.asarray(pcm_sketch(pcm), dtype=np.float64)
  theirs = np.asarray(sketch, dtype=np.float64)
  if mine.shape != theirs.shape:
    return math.inf
  sizes = np.minimum(SKETCH_BLOCK, len(pcm) - np.arange(0, len(pcm), SKETCH_BLOCK))
  squares = ((mine - theirs).reshape(-1, SKETCH_PROJECTIONS) ** 2).mean(axis=1)
  return float(np.sqrt(squares / sizes).max())


def verify(pcm, piece):
  """How pcm matches the corpus file: "exact", "reference" (the recipe's reference build),
  "tolerance" (sketch estimate within rms_bound), or None; and the sketch estimate (LSB)."""
  if len(pcm) != piece.length:
    return None, math.inf
  digest = pcm_sha256(pcm)
  if digest == piece.pcm_sha256:
    return "exact", 0.0
  if digest == piece.build_sha256:
    return "reference", float(piece.max_diff)
  error = sketch_rms_error(pcm, piece.sketch)
  return ("tolerance" if error <= piece.rms_bound else None), error


# Processing.


def decode_source(path, piece):
  """The source file as a float32 16 kHz mono waveform (channels averaged, soxr resampled).

  Raises:
    UserError: the file does not decode, or not at the rate or channel count of the recipe.
  """
  try:
    info = sf.info(path)
  except (sf.SoundFileError, RuntimeError) as e:
    raise UserError(
        f"source '{piece.source_path}' of {piece.repo} passed its checksum but does not decode "
        f"({' '.join(str(e).split())}); soundfile>=0.12.1 (libsndfile 1.1+) is needed for "
        "its MP3s") from None
  if (info.samplerate, info.channels) != (piece.source_rate, piece.source_channels):
    raise UserError(
        f"source '{piece.source_path}' of {piece.repo} decodes as {info.samplerate} Hz, "
        f"{info.channels} channel(s), not {piece.source_rate} Hz, {piece.source_channels} as the "
        "recipe says; the decoder (libsndfile) reads it differently")
  wave = audio.read_audio(path, sample_rate=info.samplerate, allow_silent=True)
  if info.samplerate != audio.SAMPLE_RATE:
    wave = soxr.resample(wave, info.samplerate, audio.SAMPLE_RATE,
                         quality=piece.resample_quality)
  return wave


class _DownmixNoticeFilter:
  """Drops read_audio's 'averaging them to mono' warning for the downloads: the recipe asks
  for it (the gain column restores the corpus's (L+R)/sqrt(2))."""

  def __init__(self, cache_dir):
    self._prefix = f"audio file '{cache_dir}"

  def filter(self, record):
    return not (record.getMessage().startswith(self._prefix)
                and "averaging them to mono" in record.getMessage())


def render(wave, piece):
  """The 16-bit samples of one piece from its source's 16 kHz waveform.

  Raises:
    UserError: the source is shorter than the piece (its decoder returned fewer samples).
  """
  segment = np.asarray(wave[piece.start:piece.start + piece.length], dtype=np.float64)
  if len(segment) != piece.length:
    raise UserError(
        f"source '{piece.source_path}' of {piece.repo} decodes to {len(wave)} samples at 16 kHz, "
        f"too few for '{piece.path}' (samples {piece.start}..{piece.start + piece.length}); the "
        "decoder (libsndfile) or resampler (soxr) differs from the recipe's")
  ramp = np.linspace(0.0, 1.0, FADE_SAMPLES)
  if piece.fade_in:
    segment[:FADE_SAMPLES] *= ramp
  if piece.fade_out:
    segment[-FADE_SAMPLES:] *= ramp[::-1]
  if piece.gain != 1.0:
    segment = segment * piece.gain
  return np.clip(np.round(segment * 32768.0), -32768, 32767).astype(np.int16)


def write_flac(path, pcm):
  with fileio.atomic_output(path) as tmp:
    sf.write(tmp, pcm, audio.SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def read_built(path):
  """The 16-bit samples of a corpus file already built, or None if it is not a 16 kHz file."""
  try:
    pcm, rate = sf.read(path, dtype="int16", always_2d=True)
  except (sf.SoundFileError, RuntimeError, ValueError, EOFError):
    return None
  return pcm[:, 0] if rate == audio.SAMPLE_RATE and pcm.shape[1] == 1 else None


# Downloads.


def source_url(template, piece):
  return template.format(repo=piece.repo, commit=piece.commit,
                         path=urllib.parse.quote(piece.source_path))


def _download(url, timeout, retries):
  """The bytes at url; UserError naming the URL when it cannot be had."""
  attempts = 1 if url.startswith("file:") else 1 + retries
  for attempt in range(attempts):
    try:
      with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()
    except urllib.error.HTTPError as e:
      reason = f"HTTP {e.code} {e.reason}"
      if 400 <= e.code < 500 and e.code not in (408, 429):
        break  # the file is not there; asking again will not help
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
      cause = getattr(e, "reason", None) or e
      reason = " ".join(str(getattr(cause, "strerror", None) or cause).split())
    if attempt + 1 < attempts:
      time.sleep(2 ** attempt)
  if url.startswith("file:"):
    raise UserError(f"cannot read '{url}' ({reason}); the --source_url mirror lacks this file")
  raise UserError(f"cannot download '{url}' ({reason}); building the reference corpus needs "
                  "the internet (or a local mirror: --source_url='file:///mirror/{repo}/"
                  "{commit}/{path}')")


def fetch_source(piece, template, cache_dir, timeout=60.0, retries=2):
  """The path of the verified download of a piece's source: cached, or downloaded and cached.

  Returns:
    (path, downloaded bytes: 0 when it came from the cache).

  Raises:
    UserError: the download fails, or its git blob SHA-1 is not the recipe's (nothing is kept).
  """
  ext = os.path.splitext(piece.source_path)[1].lower()
  path = os.path.join(cache_dir, piece.source_sha1 + ext)
  if os.path.isfile(path):
    with open(path, "rb") as f:
      if git_blob_sha1(f.read()) == piece.source_sha1:
        return path, 0
    logging.warning("cached download '%s' is damaged; downloading it again", path)
    os.remove(path)
  url = source_url(template, piece)
  data = _download(url, timeout, retries)
  digest = git_blob_sha1(data)
  if digest != piece.source_sha1:
    raise UserError(
        f"source '{piece.source_path}' of {piece.repo} from '{url}' has git blob SHA-1 {digest}, "
        f"not {piece.source_sha1} (commit {piece.commit[:12]}); the download was discarded: "
        "retry, or fix the mirror")
  fileio.write_bytes_atomic(path, data)
  return path, len(data)


# Building.


@dataclasses.dataclass
class Outcome:
  piece: Piece
  match: str  # "exact" | "reference" | "tolerance" | "" (failed)
  built: bool  # False: it was there already
  error: float = 0.0


def _build_source(pieces, output_dir, template, timeout, retries):
  """Builds the pieces of one source: (outcomes, downloaded bytes)."""
  outcomes, todo = [], []
  for piece in pieces:
    out_path = os.path.join(output_dir, piece.path)
    if os.path.isfile(out_path):
      pcm = read_built(out_path)
      match = verify(pcm, piece)[0] if pcm is not None else None
      if match:
        outcomes.append(Outcome(piece, match, built=False))
        continue
      logging.warning("'%s' exists but is not the corpus file; building it again", out_path)
    todo.append(piece)
  if not todo:
    return outcomes, 0
  cache_dir = os.path.join(output_dir, DOWNLOADS)
  path, downloaded = fetch_source(todo[0], template, cache_dir, timeout, retries)
  wave = decode_source(path, todo[0])
  for piece in todo:
    pcm = render(wave, piece)
    match, error = verify(pcm, piece)
    if match:
      write_flac(os.path.join(output_dir, piece.path), pcm)
    outcomes.append(Outcome(piece, match or "", built=True, error=error))
  return outcomes, downloaded


@dataclasses.dataclass
class Summary:
  outcomes: list
  downloaded_bytes: int

  def count(self, match):
    return sum(o.match == match for o in self.outcomes)

  def minutes(self, kind):
    return sum(o.piece.length for o in self.outcomes
               if o.piece.kind == kind and o.match) / audio.SAMPLE_RATE / 60

  def failed(self):
    return [o for o in self.outcomes if not o.match]

  def text(self, output_dir):
    ok = [o for o in self.outcomes if o.match]
    reference = [o for o in ok if o.match == "reference"]
    tolerance = [o for o in ok if o.match == "tolerance"]
    parts = [f"{len(ok)} files in '{output_dir}' ({sum(o.built for o in ok)} built, "
             f"{sum(not o.built for o in ok)} already there): speech "
             f"{self.minutes('speech'):.1f} min, noise {self.minutes('noise'):.1f} min",
             f"{self.count(match='exact')} bit-exact"]
    if reference:
      near = sum(o.piece.max_diff <= 1 for o in reference)
      far = [o.piece.max_diff for o in reference if o.piece.max_diff > 1]
      detail = f"{near} within 1 LSB of the corpus file" + (
          f", {len(far)} within {max(far)} LSB" if far else "")
      parts.append(f"{len(reference)} equal to the recipe's reference build ({detail})")
    if tolerance:
      parts.append(f"{len(tolerance)} within tolerance (RMS difference per second at most "
                   f"{max(o.piece.rms_bound for o in tolerance):g} LSB, estimated)")
    parts.append(f"downloaded {self.downloaded_bytes / 1e6:.1f} MB")
    return "; ".join(parts)


def build(output_dir, pieces, template=DEFAULT_SOURCE_URL, jobs=4, timeout=60.0, retries=2,
          progress=False):
  """Builds (or completes) the corpus of `pieces` in output_dir.

  SOURCES.md is written first (licences go with every file), manifest.csv last, when every
  file is there.

  Returns:
    a Summary; its failed() pieces (built but matching no checksum) were not written.

  Raises:
    UserError: a download fails or does not match its checksum, a source does not decode.
  """
  os.makedirs(output_dir, exist_ok=True)
  fileio.write_bytes_atomic(os.path.join(output_dir, "SOURCES.md"),
                            open(SOURCES_MD, "rb").read())
  groups = {}
  for piece in pieces:
    groups.setdefault(piece.source_key, []).append(piece)
  outcomes, downloaded = [], 0
  notice_filter = _DownmixNoticeFilter(os.path.join(output_dir, DOWNLOADS))
  logging.get_absl_logger().addFilter(notice_filter)
  bar = tqdm.tqdm(total=len(groups), unit="source", file=sys.stderr, dynamic_ncols=True,
                  disable=not progress)
  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
      futures = [pool.submit(_build_source, group, output_dir, template, timeout, retries)
                 for group in groups.values()]
      try:
        for future in concurrent.futures.as_completed(futures):
          done, size = future.result()
          outcomes += done
          downloaded += size
          bar.update()
      except BaseException:
        for future in futures:  # the running ones finish their (atomic) writes
          future.cancel()
        raise
  finally:
    bar.close()
    logging.get_absl_logger().removeFilter(notice_filter)
  order = {piece.path: i for i, piece in enumerate(pieces)}
  outcomes.sort(key=lambda o: order[o.piece.path])
  summary = Summary(outcomes, downloaded)
  if not summary.failed():
    fileio.write_text_atomic(os.path.join(output_dir, "manifest.csv"), manifest_text(pieces))
  return summary


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; the corpus is chosen by --recipe")
  if not FLAGS.output_dir:
    raise UserError("--output_dir is required (the folder to build the reference corpus in)")
  pieces = load_recipe(FLAGS.recipe)
  summary = build(FLAGS.output_dir, pieces, FLAGS.source_url, FLAGS.jobs,
                  FLAGS.download_timeout, progress=True)
  failed = summary.failed()
  if failed:
    worst = max(failed, key=lambda o: o.error)
    raise UserError(
        f"{len(failed)} of {len(pieces)} files differ from the corpus beyond the recipe's "
        f"bounds and were not written, e.g. '{worst.piece.path}' (estimated RMS difference "
        f"{worst.error:.1f} LSB per second, accepted {worst.piece.rms_bound:g}); the decoder "
        f"(soundfile {sf.__version__}, libsndfile {sf.__libsndfile_version__}) or soxr "
        f"({soxr.__version__}) computes differently from the recipe's")
  print(f"reference corpus: {summary.text(FLAGS.output_dir)}")


if __name__ == "__main__":
  cli.run(main)
