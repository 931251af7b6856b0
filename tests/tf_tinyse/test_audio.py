"""Tests of tf_tinyse.audio on real clips from the demo corpus."""
import glob
import os

from absl import logging
import numpy as np
import pytest
import soundfile as sf

from tf_tinyse import audio
from tf_tinyse import demo_data
from tf_tinyse.errors import UserError


def _speech_clip():
  return sorted(glob.glob(os.path.join(demo_data.path(), "speech", "test", "*.flac")))[0]


def test_read_audio_real_clip_is_16k_mono_float32_in_range():
  path = _speech_clip()
  wave = audio.read_audio(path)
  assert wave.dtype == np.float32 and wave.ndim == 1
  assert wave.size == sf.info(path).frames
  assert 0.01 < np.max(np.abs(wave)) <= 1.0


def test_48k_stereo_is_resampled_and_downmixed_with_warning(tmp_path, monkeypatch):
  original = audio.read_audio(_speech_clip())[:16000]  # 1 s
  # A 48 kHz stereo file: left the clip, right a scaled copy, so the mono mix is 0.75 x clip.
  import soxr
  at_48k = soxr.resample(original, 16000, 48000)
  stereo = np.stack([at_48k, 0.5 * at_48k], axis=1)
  path = str(tmp_path / "stereo48k.wav")
  sf.write(path, stereo, 48000, subtype="FLOAT")
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))

  wave = audio.read_audio(path)

  assert wave.dtype == np.float32 and wave.ndim == 1
  assert abs(wave.size - 16000) <= 1
  n = min(wave.size, original.size)
  # Away from the edges (resampler transients) the result matches the expected mono mix up to
  # the resampler's anti-alias filter near 8 kHz: error at least 25 dB below the signal.
  expected, got = 0.75 * original[200:n - 200], wave[200:n - 200]
  error_db = 10 * np.log10(np.sum((got - expected)**2) / np.sum(expected**2))
  assert error_db < -25
  assert any("stereo48k.wav" in w and "2 channels" in w for w in warnings)


def test_missing_file(tmp_path):
  with pytest.raises(UserError, match=r"'.*nope\.wav' does not exist"):
    audio.read_audio(str(tmp_path / "nope.wav"))


def test_corrupt_file(tmp_path):
  path = tmp_path / "corrupt.flac"
  path.write_bytes(b"fLaC" + bytes(range(256)) * 4)
  with pytest.raises(UserError, match=r"cannot decode audio file '.*corrupt\.flac'.*skip_bad_audio"):
    audio.read_audio(str(path))


def test_truncated_real_file_is_corrupt(tmp_path):
  data = open(_speech_clip(), "rb").read()
  path = tmp_path / "truncated.flac"
  path.write_bytes(data[:30])  # header cut in the middle
  with pytest.raises(UserError, match="cannot decode"):
    audio.read_audio(str(path))


def test_empty_file(tmp_path):
  path = str(tmp_path / "empty.wav")
  sf.write(path, np.zeros(0, np.float32), 16000)
  with pytest.raises(UserError, match=r"'.*empty\.wav' holds no samples"):
    audio.read_audio(path)


def test_nan_samples(tmp_path):
  wave = audio.read_audio(_speech_clip())[:8000].copy()
  wave[100] = np.nan
  path = str(tmp_path / "nan.wav")
  sf.write(path, wave, 16000, subtype="FLOAT")
  with pytest.raises(UserError, match=r"'.*nan\.wav' contains NaN or infinite"):
    audio.read_audio(path)


def test_silent_file_refused_unless_allowed(tmp_path):
  path = str(tmp_path / "silent.wav")
  sf.write(path, np.zeros(16000, np.float32), 16000)
  with pytest.raises(UserError, match=r"'.*silent\.wav' is silent"):
    audio.read_audio(path)
  assert np.all(audio.read_audio(path, allow_silent=True) == 0)


def test_min_seconds_only_when_asked(tmp_path):
  path = str(tmp_path / "short.wav")
  sf.write(path, audio.read_audio(_speech_clip())[:3200], 16000)  # 0.2 s
  assert audio.read_audio(path).size == 3200
  with pytest.raises(UserError, match=r"0\.200 s long, shorter than the 0\.4 s"):
    audio.read_audio(path, min_seconds=0.4)


def test_write_audio_round_trip(tmp_path):
  wave = audio.read_audio(_speech_clip())[:16000]
  path = str(tmp_path / "out" / "x.wav")
  audio.write_audio(path, wave)
  info = sf.info(path)
  assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
  back = audio.read_audio(path)
  np.testing.assert_allclose(back, wave, atol=1.0 / 32768 + 1e-7)
  assert os.listdir(tmp_path / "out") == ["x.wav"]  # no temporary file left behind


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_write_audio_gives_the_mode_of_a_new_file_under_the_umask(tmp_path, umask, mode):
  previous = os.umask(umask)
  try:
    path = tmp_path / "x.wav"
    audio.write_audio(str(path), np.zeros(160, np.float32))
  finally:
    os.umask(previous)
  assert os.stat(path).st_mode & 0o777 == mode


def test_write_audio_clips_loud_input_with_warning(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  path = str(tmp_path / "loud.wav")
  audio.write_audio(path, np.array([0.0, 2.0, -3.0, 0.5], np.float32))
  back, _ = sf.read(path, dtype="float32")
  assert np.max(np.abs(back)) <= 1.0 and back[3] == pytest.approx(0.5, abs=1e-4)
  assert any("clipping" in w and "loud.wav" in w for w in warnings)


def test_write_audio_rejects_nan(tmp_path):
  with pytest.raises(UserError, match="NaN"):
    audio.write_audio(str(tmp_path / "bad.wav"), np.array([0.0, np.nan], np.float32))
  assert os.listdir(tmp_path) == []


def test_write_audio_is_atomic_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "x.wav"
  path.write_bytes(b"previous content")
  real_write = sf.write

  def failing_write(file, data, *args, **kwargs):
    real_write(file, data[: data.size // 2], *args, **kwargs)  # a partial file, then failure
    raise OSError("disk full")

  monkeypatch.setattr(sf, "write", failing_write)
  with pytest.raises(OSError, match="disk full"):
    audio.write_audio(str(path), np.full(16000, 0.1, np.float32))
  assert path.read_bytes() == b"previous content"
  assert os.listdir(tmp_path) == ["x.wav"]


def test_list_audio_files_sorted_recursive(tmp_path):
  wave = np.full(100, 0.1, np.float32)
  for rel in ["b/2.wav", "a.flac", "b/1.WAV", "c/deep/z.ogg"]:
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    fmt = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}[rel.rsplit(".", 1)[1].lower()]
    sf.write(str(tmp_path / rel), wave, 16000, format=fmt)
  (tmp_path / "notes.txt").write_text("not audio")
  (tmp_path / ".x.tmp.wav").write_bytes(b"partial")
  found = [os.path.relpath(p, tmp_path) for p in audio.list_audio_files(str(tmp_path))]
  assert found == ["a.flac", "b/1.WAV", "b/2.wav", "c/deep/z.ogg"]


def test_list_audio_files_errors(tmp_path):
  with pytest.raises(UserError, match=r"data_dir '.*missing' does not exist"):
    audio.list_audio_files(str(tmp_path / "missing"), what="data_dir")
  (tmp_path / "speech").mkdir()
  (tmp_path / "speech" / "readme.txt").write_text("x")
  with pytest.raises(UserError, match=r"^data_dir '.*speech' holds no audio files "
                     r"\(looked for \.wav/\.flac/\.ogg\)$"):
    audio.list_audio_files(str(tmp_path / "speech"), what="data_dir")
