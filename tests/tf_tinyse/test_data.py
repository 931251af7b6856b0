"""Tests of tf_tinyse.data: corpus layouts, LUFS mixing, training stream, evaluation sets."""
import copy
import glob
import os
from unittest import mock

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pyloudnorm
import pytest

from tf_tinyse import audio
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse.errors import UserError



def assert_same_batches(batches, others):
  """(noisy, clean) batches equal, pairwise."""
  assert len(batches) == len(others)
  for (n1, c1), (n2, c2) in zip(batches, others):
    np.testing.assert_array_equal(n1, n2)
    np.testing.assert_array_equal(c1, c2)

def _demo(kind, split):
  return sorted(glob.glob(os.path.join(demo_data.path(), kind, split, "*.flac")))


def _write_crops(folder, sources, seconds=3.0, offset=1.0):
  """Writes short WAV crops of real demo clips (keeps the tests fast)."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for src in sources:
    wave = audio.read_audio(src)
    start = int(offset * audio.SAMPLE_RATE)
    crop = wave[start:start + int(seconds * audio.SAMPLE_RATE)]
    path = os.path.join(folder, os.path.splitext(os.path.basename(src))[0] + ".wav")
    audio.write_audio(path, crop)
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
  """speech/{train,test} + noise/{train,test}, a few 3 s real clips each."""
  root = str(tmp_path_factory.mktemp("corpus"))
  _write_crops(os.path.join(root, "speech", "train"), _demo("speech", "train")[::9])  # 5
  _write_crops(os.path.join(root, "speech", "test"), _demo("speech", "test")[:3])
  _write_crops(os.path.join(root, "noise", "train"), _demo("noise", "train")[::8])  # 4
  _write_crops(os.path.join(root, "noise", "test"), _demo("noise", "test")[:2])
  return root


@pytest.fixture(scope="module")
def train_set(small_corpus):
  return data.load_audio_set(data.discover_corpus(small_corpus, validation_fraction=0.2).train)


def _measured_snr(noisy, clean):
  return data.loudness(clean) - data.loudness(noisy - clean)


# --- corpus discovery ------------------------------------------------------------------------


def test_demo_corpus_layout_and_held_out_validation():
  corpus = data.discover_corpus(demo_data.path())
  assert corpus.layout == data.SPEECH_NOISE
  assert (len(corpus.train.clean), len(corpus.valid.clean), len(corpus.test.clean)) == (41, 4, 8)
  assert not set(corpus.train.clean) & set(corpus.valid.clean)
  # Validation noise is held out too: 4 of the 42 recordings, of 4 different noise types.
  assert (len(corpus.train.noise), len(corpus.valid.noise)) == (38, 4)
  assert not set(corpus.valid.noise) & set(corpus.train.noise)
  assert len({os.path.basename(p).split("__")[0] for p in corpus.valid.noise}) == 4
  assert len(corpus.test.noise) == 8 and not set(corpus.test.noise) & set(corpus.train.noise)
  report = corpus.validation_report()
  assert report["speakers"] == ["1992", "3526", "5703", "7800"] and report["files"] == 4
  assert report["shared_with_train"] == {"speakers": [], "noise_sources": []}
  assert data.discover_corpus(demo_data.path()) == corpus  # deterministic


def test_speech_noise_flat_layout_has_no_test_split(tmp_path):
  _write_crops(str(tmp_path / "speech"), _demo("speech", "train")[:5], seconds=1.0)
  _write_crops(str(tmp_path / "noise"), _demo("noise", "train")[:2], seconds=1.0)
  corpus = data.discover_corpus(str(tmp_path), validation_fraction=0.2)
  assert corpus.layout == data.SPEECH_NOISE
  assert len(corpus.train.clean) == 4 and len(corpus.valid.clean) == 1
  # Two noise recordings: one trains, the other is the validation noise.
  assert len(corpus.train.noise) == 1 and len(corpus.split("valid").noise) == 1
  assert corpus.valid.noise != corpus.train.noise
  with pytest.raises(UserError, match=r"has no test split: expected audio under '.*speech/test/'"):
    corpus.split("test")


def test_speech_noise_with_valid_folder_holds_no_speech_out(tmp_path):
  for split, n in (("train", 3), ("valid", 2), ("test", 2)):
    _write_crops(str(tmp_path / "speech" / split), _demo("speech", "train")[10 * n:10 * n + n],
                 seconds=1.0)
  _write_crops(str(tmp_path / "noise" / "train"), _demo("noise", "train")[:2], seconds=1.0)
  _write_crops(str(tmp_path / "noise" / "test"), _demo("noise", "test")[:1], seconds=1.0)
  corpus = data.discover_corpus(str(tmp_path))
  assert [len(corpus.split(s).clean) for s in data.SPLITS] == [3, 2, 2]
  # No noise/valid/: one of the two training noise recordings is held out for validation.
  assert len(corpus.test.noise) == 1 and len(corpus.valid.noise) == 1
  assert not set(corpus.valid.noise) & set(corpus.train.noise)
  # A noise/valid/ folder is used as it is.
  _write_crops(str(tmp_path / "noise" / "valid"), _demo("noise", "train")[5:6], seconds=1.0)
  corpus = data.discover_corpus(str(tmp_path))
  assert len(corpus.train.noise) == 2 and corpus.valid.noise == (
      str(tmp_path / "noise" / "valid" / os.path.basename(_demo("noise", "train")[5])[:-5]) +
      ".wav",)


def test_pairs_layout_flat_and_split(tmp_path):
  flat = tmp_path / "flat"
  _write_crops(str(flat / "clean"), _demo("speech", "test")[:4], seconds=1.0)
  _write_crops(str(flat / "noisy"), _demo("speech", "test")[:4], seconds=1.0)
  corpus = data.discover_corpus(str(flat), validation_fraction=0.25)
  assert corpus.layout == data.PAIRS
  assert len(corpus.train.clean) == 3 and len(corpus.valid.clean) == 1 and not corpus.test
  for files in (corpus.train, corpus.valid):
    assert [os.path.basename(p) for p in files.clean] == [os.path.basename(p) for p in files.noisy]

  split = tmp_path / "split"
  for s, clips in (("train", _demo("speech", "train")[:3]), ("test", _demo("speech", "test")[:2])):
    _write_crops(str(split / "clean" / s), clips, seconds=1.0)
    _write_crops(str(split / "noisy" / s), clips, seconds=1.0)
  corpus = data.discover_corpus(str(split), validation_fraction=0.34)
  assert len(corpus.test.clean) == 2 and all("/noisy/test/" in p for p in corpus.test.noisy)
  assert len(corpus.train.clean) + len(corpus.valid.clean) == 3


def test_pairs_unmatched_names_error(tmp_path):
  _write_crops(str(tmp_path / "clean"), _demo("speech", "test")[:3], seconds=1.0)
  _write_crops(str(tmp_path / "noisy"), _demo("speech", "test")[:2], seconds=1.0)
  missing = os.path.splitext(os.path.basename(_demo("speech", "test")[2]))[0]
  with pytest.raises(UserError, match=rf"1 clean file\(s\) have no noisy file with the same name "
                     rf"\(e\.g\. '.*{missing}\.wav'\)"):
    data.discover_corpus(str(tmp_path))


def test_unknown_layout_and_missing_folder_errors(tmp_path):
  (tmp_path / "audio").mkdir()
  with pytest.raises(UserError, match=r"matches no corpus layout: expected folders 'speech/' \+ "
                     r"'noise/'.*'clean/' \+ 'noisy/'"):
    data.discover_corpus(str(tmp_path))
  with pytest.raises(UserError, match="does not exist"):
    data.discover_corpus(str(tmp_path / "nope"))
  (tmp_path / "speech").mkdir()
  (tmp_path / "noise").mkdir()
  with pytest.raises(UserError, match=r"data_dir '.*speech' holds no audio files"):
    data.discover_corpus(str(tmp_path))


def _write_named(folder, names, seconds=0.5):
  """Writes the same short real speech crop under each of `names` (file names only matter)."""
  os.makedirs(folder, exist_ok=True)
  wave = audio.read_audio(_demo("speech", "train")[0])[:int(seconds * audio.SAMPLE_RATE)]
  paths = [os.path.join(folder, name) for name in names]
  for path in paths:
    audio.write_audio(path, wave)
  return paths


def test_speaker_ids_and_noise_sources_from_file_names():
  assert data.speaker_id("x/1034-121119-0000.flac") == "1034"
  assert data.speaker_id("ls_1034_121119_0000.flac") == "1034"
  assert data.speaker_id("clean/p226_001.wav") == "p226"
  assert data.speaker_id("interview_07.wav") == "interview_07"  # no match: its own speaker
  assert data.speaker_id("anna-03.wav", r"^([a-z]+)-") == "anna"
  assert data.noise_source("rain__blanket_rain_s00.flac") == "rain__blanket_rain"
  assert data.noise_source("rain__blanket_rain_s01.flac") == "rain__blanket_rain"
  assert data.noise_source("rain__esc10_1-17367-A.flac") == "rain__esc10_1-17367"
  assert data.noise_source("1-17367-B.ogg") == "1-17367"
  assert data.noise_source("hum.wav") == "hum"
  assert data.noise_source("street-07.wav", r"^(\w+)-\d+$") == "street"


def test_validation_holds_out_whole_speakers(tmp_path):
  # 5 speakers with 3 utterances each, in both LibriSpeech spellings, and one unmatched name.
  names = [f"{s}-121119-000{u}.wav" for s in (19, 26, 32) for u in range(3)]
  names += [f"ls_{s}_5140_000{u}.wav" for s in (40, 78) for u in range(3)] + ["zz_notes.wav"]
  _write_named(str(tmp_path / "speech"), names)
  _write_crops(str(tmp_path / "noise"), _demo("noise", "train")[:1], seconds=1.0)
  corpus = data.discover_corpus(str(tmp_path), validation_fraction=0.34)
  speakers = lambda files: {data.speaker_id(p) for p in files}
  # 6 speakers (zz_notes is one of its own), 2 held out, spread over the sorted ids.
  assert speakers(corpus.valid.clean) == {"26", "78"}
  assert speakers(corpus.train.clean) == {"19", "32", "40", "zz_notes"}
  assert len(corpus.valid.clean) == 6 and len(corpus.train.clean) == 10
  assert data.discover_corpus(str(tmp_path), validation_fraction=0.34) == corpus
  report = corpus.validation_report()
  assert report["speakers"] == ["26", "78"] and report["shared_with_train"]["speakers"] == []



def test_one_speaker_holds_out_some_of_its_files_with_a_warning(tmp_path):
  _write_named(str(tmp_path / "speech"), ["19-1-0.wav", "19-1-1.wav", "19-2-0.wav"])
  _write_crops(str(tmp_path / "noise"), _demo("noise", "train")[:1], seconds=1.0)
  with mock.patch.object(data.corpus.logging, "warning") as warning:
    corpus = data.discover_corpus(str(tmp_path), validation_fraction=0.34)
  assert any("validation holds out files of that speaker" in call[0][0]
             for call in warning.call_args_list)
  assert (len(corpus.train.clean), len(corpus.valid.clean)) == (2, 1)
  assert corpus.validation_report()["shared_with_train"]["speakers"] == ["19"]


def test_validation_holds_out_whole_noise_recordings(tmp_path):
  _write_crops(str(tmp_path / "speech"), _demo("speech", "train")[:4], seconds=1.0)
  pieces = {"birds__blanket_birds": 3, "chainsaw__esc10_1-116765": 2, "dog__esc10_1-30226": 1,
            "rain__blanket_rain": 3, "sea__esc10_2-124662": 1, "wind__blanket_wind": 2}
  names = [f"{source}_s0{k}.wav" if "blanket" in source else f"{source}-{'ABC'[k]}.wav"
           for source, count in pieces.items() for k in range(count)]
  _write_named(str(tmp_path / "noise"), names)
  corpus = data.discover_corpus(str(tmp_path), validation_fraction=0.34)
  sources = lambda files: {data.noise_source(p) for p in files}
  assert sources(corpus.valid.noise) == {"chainsaw__esc10_1-116765", "sea__esc10_2-124662"}
  assert not sources(corpus.valid.noise) & sources(corpus.train.noise)
  assert len(corpus.valid.noise) == 3 and len(corpus.train.noise) == 9
  assert corpus.validation_report()["noise_files"] == [
      "chainsaw__esc10_1-116765-A.wav", "chainsaw__esc10_1-116765-B.wav",
      "sea__esc10_2-124662-A.wav"]
  # Grouping with another pattern: by noise type.
  by_type = data.discover_corpus(str(tmp_path), validation_fraction=0.34,
                                 noise_source_pattern=r"^(\w+?)__")
  assert {os.path.basename(p).split("__")[0] for p in by_type.valid.noise} == {"chainsaw",
                                                                               "sea"}


def test_one_noise_recording_is_shared_with_validation_with_a_warning(tmp_path):
  _write_crops(str(tmp_path / "speech"), _demo("speech", "train")[:4], seconds=1.0)
  _write_named(str(tmp_path / "noise"), [f"rain__blanket_rain_s0{k}.wav" for k in range(3)])
  with mock.patch.object(data.corpus.logging, "warning") as warning:
    corpus = data.discover_corpus(str(tmp_path), validation_fraction=0.25)
  assert corpus.valid.noise == corpus.train.noise and len(corpus.train.noise) == 3
  assert any("validation uses the training noise" in call[0][0]
             for call in warning.call_args_list)
  assert corpus.validation_report()["shared_with_train"] == {
      "speakers": [], "noise_sources": ["rain__blanket_rain"]}


def test_pairs_hold_out_whole_speakers(tmp_path):
  names = [f"p{s}_00{u}.wav" for s in (226, 227, 228, 229) for u in range(1, 4)]
  _write_named(str(tmp_path / "clean"), names)
  _write_named(str(tmp_path / "noisy"), names)
  corpus = data.discover_corpus(str(tmp_path), validation_fraction=0.25)
  assert {data.speaker_id(p) for p in corpus.valid.clean} == {"p228"}
  assert [os.path.basename(p) for p in corpus.valid.noisy] == ["p228_001.wav", "p228_002.wav",
                                                                "p228_003.wav"]
  assert "p228" not in {data.speaker_id(p) for p in corpus.train.clean}
  assert len(corpus.train.clean) == len(corpus.train.noisy) == 9


def test_validation_report_names_speakers_a_valid_folder_shares_with_train(tmp_path):
  _write_named(str(tmp_path / "speech" / "train"), ["19-1-0.wav", "26-1-0.wav", "32-1-0.wav"])
  _write_named(str(tmp_path / "speech" / "valid"), ["26-1-1.wav", "40-1-0.wav"])
  _write_crops(str(tmp_path / "noise"), _demo("noise", "train")[::20], seconds=1.0)  # 3
  report = data.discover_corpus(str(tmp_path)).validation_report()
  assert report["speakers"] == ["26", "40"] and report["train_speakers"] == 3
  assert report["shared_with_train"] == {"speakers": ["26"], "noise_sources": []}
  assert len(report["noise_files"]) == 1 and report["train_noise_files"] == 2


# --- loading bad files -----------------------------------------------------------------------


def test_bad_file_stops_loading_or_is_skipped(tmp_path):
  speech = _write_crops(str(tmp_path / "speech"), _demo("speech", "train")[:3], seconds=1.0)
  _write_crops(str(tmp_path / "noise"), _demo("noise", "train")[:1], seconds=1.0)
  bad = tmp_path / "speech" / "zz_bad.flac"
  bad.write_bytes(b"not audio at all")
  files = data.discover_corpus(str(tmp_path), validation_fraction=0).train
  with pytest.raises(UserError, match=r"'.*zz_bad\.flac'.*--skip_bad_audio"):
    data.load_audio_set(files)
  loaded = data.load_audio_set(files, skip_bad_audio=True)
  assert loaded.clean_names == speech and len(loaded.noise) == 1


# --- mixing ----------------------------------------------------------------------------------


def test_loudness_matches_pyloudnorm():
  meter = pyloudnorm.Meter(audio.SAMPLE_RATE)
  keys = [p for p in _demo("noise", "train") if "keyboard" in p][0]  # has digital silence
  for path in (_demo("speech", "train")[3], _demo("noise", "test")[1], keys):
    wave = audio.read_audio(path)
    for start, length in ((0, 6400), (1000, 12800), (5000, 12801), (0, 40000), (0, wave.size)):
      segment = wave[start:start + length]
      expected = meter.integrated_loudness(segment.astype(np.float64))
      assert data.loudness(segment) == pytest.approx(expected, abs=1e-9) or (
          np.isinf(expected) and data.loudness(segment) == expected)
  assert data.loudness(np.zeros(8000, np.float32)) == -np.inf
  with pytest.raises(ValueError, match="0.4 s"):
    data.loudness(np.ones(6000, np.float32))


def _segments(n=12800):
  speech = audio.read_audio(_demo("speech", "train")[0])[16000:16000 + n]
  noise = audio.read_audio(_demo("noise", "train")[5])[:n]
  return speech, noise


@pytest.mark.parametrize("snr_db, gain_db", [(-6.0, 0.0), (0.0, -5.0), (9.0, -1.0), (3.3, -12.0)])
def test_mix_at_snr_reaches_lufs_difference_and_gain(snr_db, gain_db):
  speech, noise = _segments()
  noisy, clean = data.mix_at_snr(speech, noise, snr_db, gain_db)
  assert noisy.dtype == np.float32 and clean.dtype == np.float32
  assert _measured_snr(noisy, clean) == pytest.approx(snr_db, abs=0.1)
  # The target is the speech times the gain, or times less where clip protection stepped in.
  scale = float(np.dot(clean, speech) / np.dot(speech, speech))
  np.testing.assert_allclose(clean, scale * speech, rtol=1e-5, atol=1e-6)
  peak = max(np.abs(noisy).max(), np.abs(clean).max())
  if scale == pytest.approx(10**(gain_db / 20), rel=1e-5):
    assert peak <= data.CLIP_PEAK + 1e-6
  else:
    assert scale < 10**(gain_db / 20) and peak == pytest.approx(data.CLIP_PEAK, abs=1e-6)


def test_mix_at_snr_sparse_noise_still_exact():
  # Keyboard clicks: the absolute -70 LUFS gate changes with the noise gain; still exact.
  speech, _ = _segments()
  keys = [p for p in _demo("noise", "train") if "keyboard" in p][0]
  wave = audio.read_audio(keys)
  # A 0.8 s window with a few clicks (the recording has digital silence between them).
  noise = next(w for w in (wave[i:i + 12800] for i in range(0, wave.size - 12800, 12800))
               if np.isfinite(data.loudness(w)))
  noisy, clean = data.mix_at_snr(speech, noise, -3.0, 0.0)
  assert _measured_snr(noisy, clean) == pytest.approx(-3.0, abs=0.1)


def test_mix_at_snr_clip_protection_keeps_snr():
  speech, noise = _segments()
  noisy, clean = data.mix_at_snr(speech, noise, -6.0, 30.0)
  assert max(np.abs(noisy).max(), np.abs(clean).max()) == pytest.approx(data.CLIP_PEAK, abs=1e-6)
  assert _measured_snr(noisy, clean) == pytest.approx(-6.0, abs=0.1)


def test_mix_at_snr_too_quiet_raises():
  speech, _ = _segments()
  with pytest.raises(data.TooQuietError):
    data.mix_at_snr(speech, np.zeros_like(speech), 0.0, 0.0)


# --- training stream -------------------------------------------------------------------------


def _batches(audio_set, config, seed, count, start_step=0):
  dataset = data.make_training_dataset(audio_set, config, seed, start_step=start_step)
  return [(n.numpy(), c.numpy()) for n, c in dataset.take(count)]


def test_training_batches_shapes_values_and_snr(train_set):
  config = data.DataConfig(batch_size=8)
  batches = _batches(train_set, config, seed=3, count=3)
  for noisy, clean in batches:
    assert noisy.shape == clean.shape == (8, 12800)
    assert noisy.dtype == clean.dtype == np.float32
    assert np.all(np.isfinite(noisy)) and np.all(np.isfinite(clean))
    assert np.abs(noisy).max() <= data.CLIP_PEAK + 1e-6
    for n, c in zip(noisy, clean):
      assert data.loudness(c) > -70  # no silent speech segment
      assert -6.1 <= _measured_snr(n, c) <= 9.1
  # Different batches over time.
  assert not np.allclose(batches[0][1], batches[1][1])


def test_training_stream_is_deterministic_parallel_and_resumable(train_set):
  config = data.DataConfig(batch_size=4, data_parallel_calls=1)
  serial = _batches(train_set, config, seed=7, count=4)
  parallel = _batches(train_set, data.DataConfig(batch_size=4, data_parallel_calls=-1), 7, 4)
  resumed = _batches(train_set, config, seed=7, count=2, start_step=2)
  other_seed = _batches(train_set, config, seed=8, count=1)
  assert_same_batches(serial, parallel)
  assert_same_batches(serial[2:], resumed)
  assert not np.allclose(serial[0][0], other_seed[0][0])


def _source_file(segment, waves, window=400):
  """Index of the waveform that `segment` is a scaled crop of (normalized correlation ~ 1)."""
  k = min(max(0, int(np.argmax(np.abs(segment))) - window // 2), segment.size - window)
  chunk = segment[k:k + window].astype(np.float64)
  for i, wave in enumerate(waves):
    wave = wave.astype(np.float64)
    corr = np.correlate(wave, chunk, mode="valid")
    energy = np.convolve(wave**2, np.ones(window), mode="valid")
    if np.max(corr / (np.linalg.norm(chunk) * np.sqrt(energy) + 1e-12)) > 0.9999:
      return i
  return None


def test_training_stream_visits_every_speech_file_each_pass(train_set):
  config = data.DataConfig(batch_size=4, gain_db_max=0.0)
  per_pass = sum(w.size // config.segment_samples for w in train_set.clean)
  batches = _batches(train_set, config, seed=1, count=-(-per_pass // 4))
  sources = [_source_file(c, train_set.clean) for _, clean in batches for c in clean]
  assert None not in sources
  assert set(sources) == set(range(len(train_set.clean)))


def test_pairs_training_crops_are_aligned(tmp_path):
  clips = _demo("speech", "train")[:2]
  _write_crops(str(tmp_path / "clean"), clips)
  noisy_dir = tmp_path / "noisy"
  noisy_dir.mkdir()
  for path in sorted(glob.glob(str(tmp_path / "clean" / "*.wav"))):
    # Noisy = half the clean: an aligned crop of the pair keeps noisy == 0.5 * clean.
    audio.write_audio(str(noisy_dir / os.path.basename(path)), 0.5 * audio.read_audio(path))
  audio_set = data.load_audio_set(data.discover_corpus(str(tmp_path), 0).train)
  noisy, clean = _batches(audio_set, data.DataConfig(batch_size=6), seed=0, count=1)[0]
  assert noisy.shape == (6, 12800)
  np.testing.assert_allclose(noisy, 0.5 * clean, atol=2e-4)
  assert np.all(np.abs(clean).max(axis=1) > 0.01)


# --- evaluation sets -------------------------------------------------------------------------


def test_evaluation_set_is_deterministic_and_mixed_at_range(small_corpus):
  corpus = data.discover_corpus(small_corpus)
  first = data.make_evaluation_set(corpus, "test", seed=5)
  again = data.make_evaluation_set(corpus, "test", seed=5)
  other = data.make_evaluation_set(corpus, "test", seed=6)
  assert [e.name for e in first] == [os.path.splitext(os.path.basename(p))[0]
                                     for p in corpus.test.clean]
  for a, b in zip(first, again):
    assert a.name == b.name and a.snr_db == b.snr_db and a.noise_name == b.noise_name
    np.testing.assert_array_equal(a.noisy, b.noisy)
  assert any(not np.array_equal(a.noisy, b.noisy) for a, b in zip(first, other))
  for e in first:
    assert e.noisy.shape == e.clean.shape and e.noisy.dtype == np.float32
    assert -6 <= e.snr_db <= 9
    assert _measured_snr(e.noisy, e.clean) == pytest.approx(e.snr_db, abs=0.1)
    speech = audio.read_audio(os.path.join(small_corpus, "speech", "test", e.name + ".wav"))
    ratio = e.clean / np.where(speech == 0, 1, speech)
    assert np.allclose(ratio[speech != 0], ratio[speech != 0][0], rtol=1e-4)  # no gain draw

  subset = data.make_evaluation_set(corpus, "test", seed=5, max_files=1)
  match = [e for e in first if e.name == subset[0].name][0]
  np.testing.assert_array_equal(subset[0].noisy, match.noisy)


def test_evaluation_set_mixes_each_utterance_several_times(small_corpus):
  corpus = data.discover_corpus(small_corpus)
  single = data.make_evaluation_set(corpus, "test", seed=5)
  multi = data.make_evaluation_set(corpus, "test", seed=5, mixtures_per_file=3)
  assert len(multi) == 3 * len(single)
  for i, one in enumerate(single):
    first, *more = multi[3 * i:3 * i + 3]
    # The first mixture is the single-mixture example: raising the count keeps old scores.
    assert first.name == one.name and first.snr_db == one.snr_db
    np.testing.assert_array_equal(first.noisy, one.noisy)
    assert [e.name for e in more] == [f"{one.name}~mix1", f"{one.name}~mix2"]
    for e in more:
      np.testing.assert_allclose(e.clean / np.abs(e.clean).max(),
                                 one.clean / np.abs(one.clean).max(), atol=1e-6)
      assert not np.array_equal(e.noisy, one.noisy)
      assert -6 <= e.snr_db <= 9
      assert _measured_snr(e.noisy, e.clean) == pytest.approx(e.snr_db, abs=0.1)
  assert len({e.snr_db for e in multi}) == len(multi)
  with pytest.raises(ValueError, match="mixtures_per_file"):
    data.make_evaluation_set(corpus, "test", mixtures_per_file=0)


def test_evaluation_set_pairs_returns_pairs(tmp_path):
  clips = _demo("speech", "test")[:2]
  _write_crops(str(tmp_path / "clean" / "test"), clips, seconds=1.0)
  _write_crops(str(tmp_path / "noisy" / "test"), clips, seconds=1.0, offset=2.0)  # same names
  corpus = data.discover_corpus(str(tmp_path))
  examples = data.make_evaluation_set(corpus, "test")
  assert len(examples) == 2
  for e, clean_path, noisy_path in zip(examples, corpus.test.clean, corpus.test.noisy):
    np.testing.assert_array_equal(e.clean, audio.read_audio(clean_path))
    np.testing.assert_array_equal(e.noisy, audio.read_audio(noisy_path))
    assert e.snr_db is None and e.name == os.path.splitext(os.path.basename(clean_path))[0]


def test_data_config_from_flags_and_validators():
  values = flags.FlagValues()
  # The data flags and the augmentation flags that DataConfig.from_flags also reads.
  for module in ("tf_tinyse.data.config", "tf_tinyse.data.augment"):
    for flag in flags.FLAGS.get_flags_for_module(module):
      values[flag.name] = copy.deepcopy(flag)  # parsing must not touch the global FLAGS
  values(["prog", "--batch_size=4", "--snr_db_min=-3", "--skip_bad_audio",
          "--speaker_id_pattern=^spk(\\d+)"])
  config = data.DataConfig.from_flags(values)
  assert (config.batch_size, config.snr_db_min, config.skip_bad_audio) == (4, -3.0, True)
  assert config.segment_samples == 12800
  assert config.split_options() == {"validation_fraction": 0.1,
                                    "speaker_id_pattern": r"^spk(\d+)",
                                    "noise_source_pattern": data.DEFAULT_NOISE_SOURCE_PATTERN}

  with flagsaver.flagsaver():
    with pytest.raises(flags.IllegalFlagValueError, match="segment_seconds"):
      flags.FLAGS.segment_seconds = 0.2  # too short for a LUFS measurement
    with pytest.raises(flags.IllegalFlagValueError, match="snr_db_min must be <= --snr_db_max"):
      flags.FLAGS.snr_db_min = 20.0
    for name, value in (("speaker_id_pattern", "[0-9]+"), ("noise_source_pattern", "(unclosed")):
      with pytest.raises(flags.IllegalFlagValueError,
                         match=f"--{name} must be a regular expression with a \\(group\\)"):
        setattr(flags.FLAGS, name, value)
