"""The reference corpus builder, without the internet: a local mirror made of demo-corpus files
stands in for GitHub. Outputs equal what the recipe asks for, checksums are enforced (a damaged
download is refused and nothing half-written is left), an interrupted build resumes, a second
run builds nothing, no network is one clear line; the shipped recipe covers the corpus; and,
where the corpus and git mirrors of its sources are on this machine, real rows are rebuilt."""
import csv
import dataclasses
import glob
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from tf_tinyse import demo_data
from tf_tinyse import reference_corpus as rc
from tf_tinyse.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
GIT_MIRRORS = os.environ.get("TF_TINYSE_GIT_MIRRORS", "/work/.mirror")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SPEECH = "speech/test/ls_2391_145015_0000.flac"  # 12 s
NOISE = "noise/test/chainsaw__esc10_4-149294-A.flac"  # 5 s


def _demo_pcm(path):
  return sf.read(os.path.join(demo_data.path(), path), dtype="int16")[0]


def _quantize(x):
  return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _fade(x, fade_in, fade_out):
  x = np.array(x, dtype=np.float64)
  ramp = np.linspace(0.0, 1.0, 160)
  if fade_in:
    x[:160] *= ramp
  if fade_out:
    x[-160:] *= ramp[::-1]
  return x


def _piece(path, repo, source_path, data, expected, **kw):
  info = sf.info(kw.pop("decoded_from"))
  values = dict(
      path=path, split=path.split("/")[1], kind=path.split("/")[0],
      seconds=f"{len(expected) / 16000:g}", speaker_or_noise_type="test", source=repo,
      repo=repo, commit=COMMIT, source_path=source_path, source_sha1=rc.git_blob_sha1(data),
      source_bytes=len(data), source_rate=info.samplerate, source_channels=info.channels,
      license="CC BY 4.0", resample_quality="VHQ" if info.samplerate != 16000 else "",
      length=len(expected), pcm_sha256=rc.pcm_sha256(expected), build_sha256="", max_diff=0,
      rms_bound=1.0, sketch=rc.pcm_sketch(expected))
  values.update(kw)
  return rc.Piece(**values)


@pytest.fixture
def mirror(tmp_path):
  """A file:// mirror of two sources made from demo files, their recipe and expected outputs.

  Source 1 is a demo speech FLAC as it is (16 kHz mono): one piece is the whole file, another a
  faded, attenuated cut. Source 2 is a demo noise clip at 44.1 kHz in stereo (each channel
  x/sqrt(2)), so decoding, down-mixing (gain sqrt(2) restores the corpus's (L+R)/sqrt(2)) and
  resampling all run; it makes two pieces.
  """
  root = tmp_path / "mirror"
  speech_path = "audio/speaker one/utt.flac"  # a space, URL-quoted in the template
  speech_file = root / "test/speech" / COMMIT / speech_path
  os.makedirs(speech_file.parent)
  shutil.copyfile(os.path.join(demo_data.path(), SPEECH), speech_file)
  speech_bytes = speech_file.read_bytes()
  speech = _demo_pcm(SPEECH)

  noise_path = "sounds/chainsaw.wav"
  noise_file = root / "test/noise" / COMMIT / noise_path
  os.makedirs(noise_file.parent)
  x = sf.read(os.path.join(demo_data.path(), NOISE), dtype="float32")[0]
  x44 = soxr.resample(x, 16000, 44100, quality="VHQ") / np.sqrt(2)
  sf.write(str(noise_file), np.stack([x44, x44], axis=1), 44100, subtype="FLOAT")
  noise_bytes = noise_file.read_bytes()
  decoded = sf.read(str(noise_file), dtype="float32")[0].mean(axis=1, dtype=np.float32)
  y = soxr.resample(decoded, 44100, 16000, quality="VHQ").astype(np.float64)

  whole = speech
  cut = _quantize(_fade(speech[8000:40000] / 32768.0, True, True) * 0.5)
  first = _quantize(_fade(y[:40000], False, True) * np.sqrt(2))
  second = _quantize(_fade(y[40000:79000], True, True) * np.sqrt(2))
  pieces = [
      _piece("speech/test/whole.flac", "test/speech", speech_path, speech_bytes, whole,
             decoded_from=speech_file, start=0, fade_in=False, fade_out=False, gain=1.0),
      _piece("speech/train/cut.flac", "test/speech", speech_path, speech_bytes, cut,
             decoded_from=speech_file, start=8000, fade_in=True, fade_out=True, gain=0.5),
      _piece("noise/train/chainsaw_s00.flac", "test/noise", noise_path, noise_bytes, first,
             decoded_from=noise_file, start=0, fade_in=False, fade_out=True, gain=np.sqrt(2)),
      _piece("noise/train/chainsaw_s01.flac", "test/noise", noise_path, noise_bytes, second,
             decoded_from=noise_file, start=40000, fade_in=True, fade_out=True,
             gain=np.sqrt(2)),
  ]
  recipe = tmp_path / "recipe.csv"
  rc.write_recipe(recipe, pieces)
  return dict(template=f"file://{root}/{{repo}}/{{commit}}/{{path}}", recipe=str(recipe),
              pieces=rc.load_recipe(str(recipe)), noise_file=noise_file,
              expected={"speech/test/whole.flac": whole, "speech/train/cut.flac": cut,
                        "noise/train/chainsaw_s00.flac": first,
                        "noise/train/chainsaw_s01.flac": second},
              noise=x)


def _leftovers(folder):
  """Temporary files an interrupted or refused write would have left."""
  return [p for p in glob.glob(os.path.join(folder, "**", ".*"), recursive=True)
          if ".tmp" in os.path.basename(p)]


def test_git_blob_sha1_is_the_id_git_gives_a_file():
  assert rc.git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
  assert rc.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_recipe_round_trips_through_csv(mirror, tmp_path):
  again = tmp_path / "again.csv"
  rc.write_recipe(again, mirror["pieces"])
  assert rc.load_recipe(str(again)) == mirror["pieces"]
  assert open(again).read() == open(mirror["recipe"]).read()


def test_builds_the_recipe_from_a_local_mirror(mirror, tmp_path):
  out = tmp_path / "corpus"
  summary = rc.build(str(out), mirror["pieces"], mirror["template"], jobs=2)
  assert [o.match for o in summary.outcomes] == ["exact"] * 4
  assert all(o.built for o in summary.outcomes)
  assert summary.downloaded_bytes == sum({p.source_key: p.source_bytes
                                          for p in mirror["pieces"]}.values())
  for path, expected in mirror["expected"].items():
    pcm, rate = sf.read(out / path, dtype="int16")
    assert rate == 16000 and sf.info(str(out / path)).subtype == "PCM_16"
    np.testing.assert_array_equal(pcm, expected)
  # Down-mixed and resampled back to 16 kHz, the stereo 44.1 kHz source is the demo clip again
  # (but for what the two resamplings' anti-alias filters take away next to 8 kHz).
  built = sf.read(out / "noise/train/chainsaw_s00.flac")[0][1000:38000]
  demo = mirror["noise"][1000:38000]
  assert 10 * np.log10(np.sum(demo**2) / np.sum((built - demo)**2)) > 35
  assert open(out / "SOURCES.md", "rb").read() == open(rc.SOURCES_MD, "rb").read()
  with open(out / "manifest.csv", newline="") as f:
    manifest = list(csv.DictReader(f))
  assert [r["path"] for r in manifest] == list(mirror["expected"])
  assert set(manifest[0]) == set(rc.MANIFEST_COLUMNS)
  assert len(os.listdir(out / rc.DOWNLOADS)) == 2
  assert not _leftovers(str(out))
  text = summary.text(str(out))
  assert "4 files" in text and "4 bit-exact" in text and "speech 0.2 min" in text


def test_a_second_run_builds_and_downloads_nothing(mirror, tmp_path):
  out = tmp_path / "corpus"
  rc.build(str(out), mirror["pieces"], mirror["template"])
  stamps = {p: os.stat(out / p).st_mtime_ns for p in mirror["expected"]}
  shutil.rmtree(tmp_path / "mirror")  # any download would now fail
  summary = rc.build(str(out), mirror["pieces"], mirror["template"])
  assert [o.built for o in summary.outcomes] == [False] * 4
  assert [o.match for o in summary.outcomes] == ["exact"] * 4
  assert summary.downloaded_bytes == 0
  assert {p: os.stat(out / p).st_mtime_ns for p in mirror["expected"]} == stamps


def test_an_interrupted_build_resumes_where_it_stopped(mirror, tmp_path):
  out = tmp_path / "corpus"
  hidden = tmp_path / "away.wav"
  os.replace(mirror["noise_file"], hidden)  # the second source cannot be had: the build stops
  with pytest.raises(UserError, match=r"cannot read 'file://.*/sounds/chainsaw\.wav'.*mirror"):
    rc.build(str(out), mirror["pieces"], mirror["template"], jobs=1)
  assert os.path.isfile(out / "speech/test/whole.flac")
  assert not os.path.exists(out / "noise/train/chainsaw_s00.flac")
  assert not os.path.exists(out / "manifest.csv")  # written when every file is there
  assert not _leftovers(str(out))
  # A file left by something else is not taken for a built one.
  (out / "speech/train/cut.flac").write_bytes(b"not a flac")
  os.replace(hidden, mirror["noise_file"])
  summary = rc.build(str(out), mirror["pieces"], mirror["template"], jobs=1)
  built = {o.piece.path: o.built for o in summary.outcomes}
  assert built == {"speech/test/whole.flac": False, "speech/train/cut.flac": True,
                   "noise/train/chainsaw_s00.flac": True, "noise/train/chainsaw_s01.flac": True}
  noise_source = mirror["pieces"][2]
  assert summary.downloaded_bytes == noise_source.source_bytes  # speech came from the cache
  for path, expected in mirror["expected"].items():
    np.testing.assert_array_equal(sf.read(out / path, dtype="int16")[0], expected)
  assert os.path.isfile(out / "manifest.csv")


def test_a_corrupted_source_is_refused_and_nothing_is_half_written(mirror, tmp_path):
  data = bytearray(mirror["noise_file"].read_bytes())
  data[len(data) // 2] ^= 0xFF
  mirror["noise_file"].write_bytes(bytes(data))
  out = tmp_path / "corpus"
  with pytest.raises(UserError) as e:
    rc.build(str(out), mirror["pieces"], mirror["template"], jobs=1)
  message = str(e.value)
  assert "\n" not in message
  assert "'sounds/chainsaw.wav'" in message and "file://" in message
  assert "SHA-1" in message and mirror["pieces"][2].source_sha1 in message
  assert "discarded" in message
  assert not glob.glob(str(out / "noise" / "**" / "*.flac"), recursive=True)
  cached = os.listdir(out / rc.DOWNLOADS)
  assert cached == [mirror["pieces"][0].source_sha1 + ".flac"]  # the bad download is not kept
  assert not _leftovers(str(out))


def test_a_damaged_cached_download_is_fetched_again(mirror, tmp_path):
  out = tmp_path / "corpus"
  rc.build(str(out), mirror["pieces"][:1], mirror["template"])
  cached = out / rc.DOWNLOADS / (mirror["pieces"][0].source_sha1 + ".flac")
  cached.write_bytes(b"garbage")
  os.remove(out / "speech/test/whole.flac")
  summary = rc.build(str(out), mirror["pieces"][:1], mirror["template"])
  assert summary.outcomes[0].match == "exact"
  assert summary.downloaded_bytes == mirror["pieces"][0].source_bytes
  assert rc.git_blob_sha1(cached.read_bytes()) == mirror["pieces"][0].source_sha1


def test_no_network_is_one_line_naming_the_url_and_the_need_for_the_internet(mirror, tmp_path):
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  template = f"http://127.0.0.1:{port}/{{repo}}/{{commit}}/{{path}}"
  with pytest.raises(UserError) as e:
    rc.build(str(tmp_path / "corpus"), mirror["pieces"][:1], template, retries=0)
  message = str(e.value)
  assert "\n" not in message
  assert f"'http://127.0.0.1:{port}/test/speech/{COMMIT}/audio/speaker%20one/utt.flac'" in message
  assert "needs the internet" in message


def test_verification_is_exact_or_within_the_stated_bound():
  pcm = _demo_pcm(NOISE)
  piece = rc.Piece(
      path="noise/test/x.flac", split="test", kind="noise", seconds="5.0",
      speaker_or_noise_type="x", source="x", repo="a/b", commit=COMMIT, source_path="x.ogg",
      source_sha1="0" * 40, source_bytes=1, source_rate=44100, source_channels=1, license="x",
      resample_quality="VHQ", start=0, length=len(pcm), fade_in=False, fade_out=False,
      gain=1.0, pcm_sha256=rc.pcm_sha256(pcm), build_sha256="", max_diff=0, rms_bound=1.0,
      sketch=rc.pcm_sketch(pcm))
  assert rc.verify(pcm, piece) == ("exact", 0.0)
  flipped = pcm.copy()
  flipped[::997] += 1  # one LSB next to a rounding tie, here and there: decoder noise
  match, error = rc.verify(flipped, piece)
  assert match == "tolerance" and 0 < error < 0.2
  reference = dataclasses.replace(piece, build_sha256=rc.pcm_sha256(flipped), max_diff=1)
  assert rc.verify(flipped, reference) == ("reference", 1.0)
  for wrong in (np.roll(pcm, 1), _quantize(pcm / 32768.0 * 1.02), pcm[:-1]):
    assert rc.verify(wrong, piece)[0] is None


def test_the_shipped_recipe_covers_the_corpus_and_its_demo_subset():
  pieces = rc.load_recipe()
  assert len(pieces) == 253
  by_path = {p.path: p for p in pieces}
  sources_md = open(rc.SOURCES_MD).read()
  for p in pieces:
    assert re.fullmatch(r"[0-9a-f]{40}", p.source_sha1) and re.fullmatch(r"[0-9a-f]{40}", p.commit)
    assert f"`{p.repo}`, commit `{p.commit}`" in sources_md
    assert re.fullmatch(r"[0-9a-f]{64}", p.pcm_sha256) and p.license
    assert abs(p.length / 16000 - float(p.seconds)) < 0.01
    assert (p.build_sha256 == "") == (p.max_diff == 0)
  speech = sum(p.length for p in pieces if p.kind == "speech") / 16000 / 60
  assert 31.0 < speech < 31.2
  # The demo corpus is a bit-exact subset of the reference corpus.
  with open(os.path.join(demo_data.path(), "manifest.csv"), newline="") as f:
    demo = list(csv.DictReader(f))
  assert len(demo) == 103
  for row in demo:
    piece = by_path[row["path"]]
    assert {c: getattr(piece, c) for c in rc.MANIFEST_COLUMNS} == row
    pcm = _demo_pcm(row["path"])
    assert rc.pcm_sha256(pcm) == piece.pcm_sha256
    assert rc.pcm_sketch(pcm) == piece.sketch
  assert open(os.path.join(demo_data.path(), "SOURCES.md"), "rb").read() == open(
      rc.SOURCES_MD, "rb").read()


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, "manifest.csv")),
                    reason="the reference corpus (../shared/data) is not on this machine")
def test_the_shipped_recipe_writes_the_corpus_manifest():
  with open(os.path.join(SHARED_DATA, "manifest.csv"), newline="") as f:
    assert rc.manifest_text(rc.load_recipe()) == f.read()


def test_cli_builds_from_a_mirror_and_says_no_network_in_one_line(mirror, tmp_path):
  out = tmp_path / "corpus"
  args = [sys.executable, "-m", "tf_tinyse.reference_corpus", f"--output_dir={out}",
          f"--recipe={mirror['recipe']}", "--jobs=2"]
  proc = subprocess.run(args + [f"--source_url={mirror['template']}"], capture_output=True,
                        text=True, env=ENV, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "reference corpus: 4 files" in proc.stdout and "4 bit-exact" in proc.stdout
  assert "averaging" not in proc.stderr  # the recipe asks for the down-mix: no warning
  shutil.rmtree(out)
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  offline = f"--source_url=http://127.0.0.1:{port}/{{repo}}/{{commit}}/{{path}}"
  proc = subprocess.run(args + [offline], capture_output=True, text=True, env=ENV, timeout=300)
  assert proc.returncode == 2
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, proc.stderr
  assert f"'http://127.0.0.1:{port}/test/" in errors[0] and "needs the internet" in errors[0]


# Real rows, from git mirrors of the source repositories (bare repos) and the corpus itself.

REAL_ROWS = (
    "speech/test/ls_307_127535_0000.flac",  # LibriSpeech, cut at 14.4 s, faded
    "noise/train/dog_bark__esc10_1-30344-A.flac",  # ESC-10 Vorbis, leading silence trimmed
    "noise/train/dog_bark__esc10_3-144028-A.flac",  # peak-limited
    "noise/train/train_ride__blanket_train_s00.flac",  # stereo Vorbis
    "noise/train/keyboard_typing__keys_zoom_0_s00.flac",  # 32 kHz WAV, 0.5 s skipped
    "noise/test/street_traffic__mac_city_s00.flac",  # 24 kHz stereo MP3
)


def _git_dir(repo):
  return os.path.join(GIT_MIRRORS, repo.replace("/", "+"), "repo")


@pytest.mark.skipif(
    not (os.path.isdir(SHARED_DATA) and shutil.which("git")
         and all(os.path.isdir(_git_dir(p.repo)) for p in rc.load_recipe()
                 if p.path in REAL_ROWS)),
    reason="the reference corpus or git mirrors of its sources are not on this machine")
def test_real_rows_rebuild_the_corpus_files_from_mirrors_of_their_sources(tmp_path):
  pieces = [p for p in rc.load_recipe() if p.path in REAL_ROWS]
  root = tmp_path / "mirror"
  for p in pieces:
    data = subprocess.run(["git", "-C", _git_dir(p.repo), "cat-file", "blob",
                           f"{p.commit}:{p.source_path}"], capture_output=True, check=True).stdout
    target = root / p.repo / p.commit / p.source_path
    os.makedirs(target.parent, exist_ok=True)
    target.write_bytes(data)
  out = tmp_path / "corpus"
  summary = rc.build(str(out), pieces, f"file://{root}/{{repo}}/{{commit}}/{{path}}")
  assert all(o.match for o in summary.outcomes)
  for p in pieces:
    built = sf.read(out / p.path, dtype="int16")[0].astype(np.int64)
    corpus = sf.read(os.path.join(SHARED_DATA, p.path), dtype="int16")[0]
    assert len(built) == len(corpus)
    assert np.abs(built - corpus).max() <= p.max_diff, p.path
    if p.max_diff == 0:
      assert summary.outcomes[pieces.index(p)].match == "exact"
