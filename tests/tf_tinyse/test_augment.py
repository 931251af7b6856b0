"""Tests of tf_tinyse.data.augment: each augmentation on a known signal, and in the stream."""
import copy
import glob
import hashlib
import os

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import scipy.signal
import scipy.special

from tf_tinyse import audio
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse.data import augment
from tests.tf_tinyse.test_data import assert_same_batches

RATE = audio.SAMPLE_RATE


def _white(seconds=4.0, seed=0):
  return np.random.default_rng(seed).standard_normal(int(seconds * RATE)).astype(np.float32)


def _psd(wave):
  freqs, power = scipy.signal.welch(wave.astype(np.float64), RATE, nperseg=1024)
  return freqs, power


def _band_db(freqs, power, low, high):
  band = (freqs >= low) & (freqs <= high)
  return 10 * np.log10(np.mean(power[band]))


def _rms(x):
  return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


# --- spectral shaping ------------------------------------------------------------------------


@pytest.mark.parametrize("biquad, band, reference", [
    (augment.Biquad("peaking", 1000.0, 9.0, q=2.0), (950, 1050), (4000, 7000)),
    (augment.Biquad("peaking", 2500.0, -12.0, q=1.0), (2400, 2600), (100, 300)),
    (augment.Biquad("low_shelf", 400.0, -6.0), (30, 120), (3000, 7000)),
    (augment.Biquad("high_shelf", 2000.0, 8.0), (6000, 7500), (50, 300)),
])
def test_a_filter_moves_band_energy_by_its_gain_and_keeps_the_level(biquad, band, reference):
  noise = _white()
  shaped = augment.shape_spectrum(noise, [biquad])
  freqs, before = _psd(noise)
  _, after = _psd(shaped)
  moved = ((_band_db(freqs, after, *band) - _band_db(freqs, after, *reference))
           - (_band_db(freqs, before, *band) - _band_db(freqs, before, *reference)))
  assert moved == pytest.approx(biquad.gain_db, abs=1.0)
  assert shaped.dtype == np.float32 and shaped.shape == noise.shape
  assert _rms(shaped) == pytest.approx(_rms(noise), rel=1e-5)  # level kept
  assert np.abs(shaped).max() < 2.5 * np.abs(noise).max()


def test_random_filters_are_drawn_in_range_and_shape_the_spectrum_as_drawn():
  rng = np.random.default_rng(0)
  drawn = [augment.random_biquads(rng, 12.0) for _ in range(200)]
  gains = [f.gain_db for filters in drawn for f in filters]
  assert len(drawn[0]) == 2 and min(gains) >= -12 and max(gains) <= 12
  assert min(gains) < -9 and max(gains) > 9  # the range is used
  assert {f.kind for filters in drawn for f in filters} == {"peaking", "low_shelf", "high_shelf"}
  assert all(100 <= f.freq <= 6000 for filters in drawn for f in filters)

  noise = _white()
  for filters in drawn[:5]:
    freqs, before = _psd(noise)
    _, after = _psd(augment.shape_spectrum(noise, filters))
    _, response = scipy.signal.sosfreqz(np.stack([f.sos() for f in filters]), worN=freqs,
                                        fs=RATE)
    band = (freqs > 100) & (freqs < 7000)
    measured = 10 * np.log10(after[band] / before[band])
    expected = 20 * np.log10(np.abs(response[band]))
    # Up to the level renormalization, the spectrum moved by the drawn filters' response.
    error = (measured - measured.mean()) - (expected - expected.mean())
    assert np.abs(error).max() < 1.0


# --- speed perturbation ----------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration_and_pitch_by_the_factor(factor):
  t = np.arange(RATE) / RATE
  tone = (0.5 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
  faster = augment.change_speed(tone, factor)
  assert faster.size == pytest.approx(RATE / factor, abs=1)
  spectrum = np.abs(np.fft.rfft(faster * np.hanning(faster.size), n=16 * RATE))
  peak_hz = np.argmax(spectrum) / 16
  assert peak_hz == pytest.approx(200.0 * factor, abs=0.5)


# --- reverberation ---------------------------------------------------------------------------


def _decay_time(tail):
  """RT60 estimated from the energy decay curve of a response (T20: -5 to -25 dB, x3)."""
  edc = np.cumsum(np.square(tail[::-1], dtype=np.float64))[::-1]
  edc_db = 10 * np.log10(edc / edc[0] + 1e-30)
  t5, t25 = np.argmax(edc_db < -5), np.argmax(edc_db < -25)
  return 3 * (t25 - t5) / RATE


def _click_train(seconds=3.0, every=1.0):
  clicks = np.zeros(int(seconds * RATE), np.float32)
  clicks[::int(every * RATE)] = 0.5
  return clicks


def test_reverberation_lengthens_the_decay_and_the_target_keeps_the_early_part():
  early = augment.early_samples(50.0)
  decays = {}
  for rt60 in (0.3, 0.9):
    bank = augment.rir_bank(0, 2, rt60, rt60, 50.0)
    for rir in bank:
      context = rir.size - 1
      clicks = _click_train()
      wave = np.concatenate([np.zeros(context, np.float32), clicks])
      reverberant, target = augment.reverberate(wave, rir, early, context)
      assert reverberant.shape == target.shape == clicks.shape
      second = slice(RATE, 2 * RATE)  # the click at 1 s, and what follows it
      decays.setdefault(rt60, []).append(_decay_time(reverberant[second]))
      assert _decay_time(clicks[second]) == 0  # the dry click does not decay
      # The target is the direct sound and 50 ms of reflections: nothing after that.
      after = slice(RATE + early, 2 * RATE)
      assert np.sum(np.square(target[after])) < 1e-9 * np.sum(np.square(target[second]))
      assert np.sum(np.square(reverberant[after])) > 0.05 * np.sum(np.square(reverberant[second]))
      # The RIR's early part has unit energy: the target has the click's level.
      assert np.sum(np.square(target[second])) == pytest.approx(0.25, rel=1e-3)
  assert min(decays[0.3]) > 0.2
  assert min(decays[0.9]) > max(decays[0.3])  # a more reverberant room decays longer


def test_reverberation_is_the_linear_convolution_with_the_rir():
  rir = augment.rir_bank(0, 1, 0.4, 0.4, 50.0)[0]
  early = augment.early_samples(50.0)
  speech = _white(1.5, 3)
  context = rir.size - 1 + 100  # more context than needed is fine
  reverberant, target = augment.reverberate(speech, rir, early, context)
  full = scipy.signal.convolve(speech.astype(np.float64), rir.astype(np.float64))
  first = scipy.signal.convolve(speech.astype(np.float64), rir[:early].astype(np.float64))
  segment = slice(context, speech.size)
  scale = np.abs(full).max()
  np.testing.assert_allclose(reverberant, full[segment], atol=1e-5 * scale)
  np.testing.assert_allclose(target, first[segment], atol=1e-5 * scale)
  with pytest.raises(ValueError, match="context"):
    augment.reverberate(speech, rir, early, rir.size - 2)


def test_rir_bank_is_a_function_of_its_arguments():
  first = augment.rir_bank(3, 3, 0.2, 0.6, 50.0)
  augment.rir_bank.cache_clear()
  again = augment.rir_bank(3, 3, 0.2, 0.6, 50.0)
  other = augment.rir_bank(4, 3, 0.2, 0.6, 50.0)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[0][:100], other[0][:100])
  assert all(int(np.argmax(np.abs(r))) <= 41 for r in first)  # starts at the direct sound


# --- noise mixing and babble -----------------------------------------------------------------


def test_add_at_level_sets_the_relative_rms():
  noise, other = _white(1.0, 1), 3 * _white(1.0, 2)
  mixed = augment.add_at_level(noise, other, -6.0)
  added = mixed - noise
  assert 20 * np.log10(_rms(added) / _rms(noise)) == pytest.approx(-6.0, abs=0.01)


_TONES = {"11": 300.0, "22": 700.0, "33": 1300.0, "44": 2100.0, "55": 3100.0}


def _tone_speaker(hz, seconds=2.0, seed=0):
  """A 'speaker' at one frequency, amplitude modulated like syllables."""
  t = np.arange(int(seconds * RATE)) / RATE
  rng = np.random.default_rng(seed)
  envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi))
  return (0.3 * envelope * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _tone_power(wave, hz):
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size))) ** 2
  k = int(round(hz * wave.size / RATE))
  return float(spectrum[k - 3:k + 4].sum())


def test_babble_is_other_speakers_only():
  speakers = [s for s in _TONES for _ in range(2)]
  waves = [_tone_speaker(_TONES[s], seed=i) for i, s in enumerate(speakers)]
  by_speaker = augment.files_by_speaker(speakers)
  assert by_speaker["33"] == [4, 5]
  rng = np.random.default_rng(0)
  for exclude in _TONES:
    for talkers in (3, 4, 6):
      talk, files = augment.babble(rng, waves, by_speaker, exclude, RATE, talkers)
      used = [speakers[i] for i in files]
      assert len(files) == talkers and exclude not in used
      assert len(set(used)) == min(talkers, len(_TONES) - 1)  # distinct while there are some
      powers = {s: _tone_power(talk, hz) for s, hz in _TONES.items()}
      assert powers[exclude] < 1e-6 * max(powers.values())
      assert all(powers[s] > 1e-2 * max(powers.values()) for s in set(used))
  assert augment.babble(rng, waves[:2], augment.files_by_speaker(speakers[:2]), "11", RATE,
                        3) == (None, [])


@pytest.fixture(scope="module")
def tone_corpus(tmp_path_factory):
  """speech/: five tone 'speakers' (ls_<speaker>_1_<k>), noise/: quiet white noise."""
  root = tmp_path_factory.mktemp("tones")
  for i, (speaker, hz) in enumerate(_TONES.items()):
    for k in range(2):
      audio.write_audio(str(root / "speech" / f"ls_{speaker}_1_{k}.wav"),
                        _tone_speaker(hz, seconds=3.0, seed=10 * i + k))
  for k in range(2):
    audio.write_audio(str(root / "noise" / f"hiss_{k}.wav"), 0.05 * _white(3.0, 100 + k))
  return data.load_audio_set(data.discover_corpus(str(root), validation_fraction=0).train)


def test_stream_babble_holds_no_segment_of_the_target_speaker(tone_corpus):
  config = data.DataConfig(batch_size=8, gain_db_max=0.0, augment=data.AugmentConfig(
      babble=1.0, babble_talkers_min=3, babble_talkers_max=4, noise_mix_db=0.0))
  plain = data.DataConfig(batch_size=8, gain_db_max=0.0)
  for (noisy, clean), (plain_noisy, plain_clean) in zip(
      _batches(tone_corpus, config, 0, 2), _batches(tone_corpus, plain, 0, 2)):
    for n, c, pn, pc in zip(noisy, clean, plain_noisy, plain_clean):
      target = max(_TONES, key=lambda s: _tone_power(c, _TONES[s]))
      powers = {s: _tone_power(n - c, hz) for s, hz in _TONES.items()}
      others = [p for s, p in powers.items() if s != target]
      assert sorted(others)[-3] > 100 * powers[target]  # >= 3 talkers, none the target
      plain_powers = {s: _tone_power(pn - pc, hz) for s, hz in _TONES.items()}
      assert max(plain_powers.values()) < 10 * min(plain_powers.values())  # no babble: hiss


# --- tonal noise and clicks ------------------------------------------------------------------


def _top_bins_share(wave, share=0.02):
  """The fraction of `wave`'s power in its strongest `share` of spectrum bins."""
  power = np.sort(np.abs(np.fft.rfft(wave.astype(np.float64) * np.hanning(wave.size))) ** 2)
  return power[-int(share * power.size):].sum() / power.sum()


@pytest.mark.parametrize("seed", range(8))
def test_tonal_noise_is_narrowband_at_the_drawn_frequencies(seed):
  noises = [_white(3.0, 40 + k) for k in range(3)]
  freqs = augment.tone_frequencies(np.random.default_rng(seed))  # tonal_noise's first draws
  tone = augment.tonal_noise(np.random.default_rng(seed), noises, 2 * RATE)
  assert tone.shape == (2 * RATE,) and tone.dtype == np.float32 and np.all(np.isfinite(tone))
  assert 1 <= freqs.size <= 8 and np.all((freqs >= 50) & (freqs <= 7000))
  # White noise has about 10 % of its power in its strongest 2 % of bins; the tone most of it
  # (measured 0.73-0.99 over seeds 0-11), at the drawn frequencies (within 4.7 %).
  assert _top_bins_share(noises[0]) < 0.15 and _top_bins_share(tone) > 0.6
  spectrum = np.abs(np.fft.rfft(tone.astype(np.float64) * np.hanning(tone.size)))
  strongest = np.fft.rfftfreq(tone.size, 1 / RATE)[np.argsort(spectrum)[-20:]]
  off = np.min(np.abs(strongest[:, None] - freqs[None]) / freqs[None], axis=1)
  assert off.max() < 0.06, (freqs, strongest)


def test_tonal_noise_rings_from_the_first_sample():
  # The resonators are run in before the segment: no fade-in of the tone.
  tone = augment.tonal_noise(np.random.default_rng(3), [_white(3.0, 7)], 2 * RATE)
  frames = np.sqrt(np.mean(np.square(tone.reshape(-1, RATE // 10)), axis=1))
  assert frames[0] > 0.3 * np.median(frames)


@pytest.mark.parametrize("seed", range(4))
def test_clicks_are_sparse_broadband_bursts_even_from_a_rumble(seed):
  rumble = np.cumsum(_white(3.0, 9)).astype(np.float32)  # brown noise: -6 dB per octave
  rumble -= np.mean(rumble)
  length = 2 * RATE
  out = augment.clicks(np.random.default_rng(seed), [rumble], length)
  assert out.shape == (length,) and out.dtype == np.float32 and np.all(np.isfinite(out))
  active = np.abs(out) > 1e-3 * np.abs(out).max()
  # At most 20 clicks/s of at most 10 ms, each decaying: a small part of the time.
  assert 0 < active.mean() < 0.3
  freqs, click_power = _psd(out)
  _, rumble_power = _psd(rumble)
  above = lambda p: p[freqs >= 1000].sum() / p.sum()
  assert above(rumble_power) < 0.01
  assert above(click_power) > 0.5  # differenced: broadband cracks, not thumps


def _noise_with_and_without(audio_set, **augment_settings):
  """(noise, plain noise) per example of one batch streamed with a noise augmentation at
  the noise's own level and without it; asserts the speech is the same in both."""
  config = data.DataConfig(batch_size=8, gain_db_max=0.0, augment=data.AugmentConfig(
      noise_mix_db=0.0, **augment_settings))
  plain = data.DataConfig(batch_size=8, gain_db_max=0.0)
  (noisy, clean), = _batches(audio_set, config, 0, 1)
  (plain_noisy, plain_clean), = _batches(audio_set, plain, 0, 1)
  np.testing.assert_allclose(clean / np.abs(clean).max(axis=1, keepdims=True),
                             plain_clean / np.abs(plain_clean).max(axis=1, keepdims=True),
                             atol=1e-5)  # the speech is untouched
  return zip(noisy - clean, plain_noisy - plain_clean)


def test_stream_adds_the_tone_to_the_noise_only(tone_corpus):
  for noise, plain_noise in _noise_with_and_without(tone_corpus, tonal_noise=1.0):
    # Hiss is flat; with a tone at the hiss's own level, a few bins hold half the power.
    assert _top_bins_share(plain_noise) < 0.15 and _top_bins_share(noise) > 0.4


@pytest.mark.parametrize("seed", range(6))
def test_rumble_is_low_frequency_noise_from_the_recordings(seed):
  noises = [_white(3.0, 60 + k) for k in range(2)]
  out = augment.rumble(np.random.default_rng(seed), noises, 2 * RATE)
  assert out.shape == (2 * RATE,) and out.dtype == np.float32 and np.all(np.isfinite(out))
  # White noise in, all of the rumble's power below 200 Hz (twice the highest cutoff), at
  # unit RMS plus its DC offset; the same seed draws the same rumble.
  spectrum = np.abs(np.fft.rfft(out.astype(np.float64))) ** 2
  freqs = np.fft.rfftfreq(out.size, 1 / RATE)
  assert spectrum[freqs >= 200].sum() < 1e-3 * spectrum.sum()
  assert _rms(out - np.mean(out)) == pytest.approx(1.0, rel=0.25)
  np.testing.assert_array_equal(out, augment.rumble(np.random.default_rng(seed), noises,
                                                    2 * RATE))


def test_rumble_cutoffs_and_offsets_spread_over_their_ranges():
  noises = [_white(3.0, 70)]
  # 8 s each: long enough that the mean of a 10 Hz rumble (about 0.08 of its RMS) does not
  # pass for an offset (0.5 to 2 times its RMS).
  rumbles = [augment.rumble(np.random.default_rng(seed), noises, 8 * RATE) for seed in range(40)]
  # The frequency below which 90 % of the (offset-free) power lies follows the drawn cutoff.
  edges = []
  for r in rumbles:
    power = np.abs(np.fft.rfft((r - r.mean()).astype(np.float64))) ** 2
    edges.append(np.fft.rfftfreq(r.size, 1 / RATE)[np.searchsorted(np.cumsum(power),
                                                                      0.9 * power.sum())])
  assert min(edges) < 20 and max(edges) > 60
  offsets = np.abs([float(np.mean(r)) for r in rumbles])
  assert offsets.max() < 2.3 and not np.any((offsets > 0.3) & (offsets < 0.4))
  with_offset = int(np.sum(offsets > 0.35))
  assert 10 <= with_offset <= 30  # about half


def test_stream_adds_the_rumble_to_the_noise_only(tone_corpus):
  def low(x):
    """The share of `x`'s power below 100 Hz."""
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    return power[np.fft.rfftfreq(x.size, 1 / RATE) < 100].sum() / power.sum()

  for noise, plain_noise in _noise_with_and_without(tone_corpus, rumble=1.0):
    # Hiss holds about 1 % of its power below 100 Hz; with the rumble at the hiss's RMS, and
    # more after LUFS mixing, which weighs it little, about half of the noise's power is there.
    assert low(plain_noise) < 0.05 and low(noise) > 0.4


# --- SNR and level distributions -------------------------------------------------------------


def test_snr_distributions():
  uniform = augment.draw_snrs(np.random.default_rng(0), 20000, -6, 9)
  np.testing.assert_array_equal(uniform, np.random.default_rng(0).uniform(-6, 9, 20000))
  normal = augment.draw_snrs(np.random.default_rng(0), 20000, -6, 9, "normal", std=4.0)
  assert normal.min() >= -6 and normal.max() <= 9
  assert np.mean(normal) == pytest.approx(1.5, abs=0.1)
  assert np.std(normal) < 0.8 * np.std(uniform)
  # Within 1 dB of the middle: a normal (sd 4) truncated at ±7.5 dB puts 21 % there.
  expected = scipy.special.erf(1 / 4 / np.sqrt(2)) / scipy.special.erf(7.5 / 4 / np.sqrt(2))
  assert np.mean(np.abs(normal - 1.5) < 1) == pytest.approx(expected, abs=0.01)


def test_level_distribution_sets_the_speech_loudness(train_set):
  config = data.DataConfig(batch_size=8, augment=data.AugmentConfig(
      level_distribution="lufs", level_lufs_min=-45.0, level_lufs_max=-35.0))
  levels = [data.loudness(c) for _, batch in _batches(train_set, config, 0, 2) for c in batch]
  assert min(levels) >= -45.1 and max(levels) <= -34.9  # quiet enough never to clip
  assert max(levels) - min(levels) > 5


# --- the stream ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_set():
  files = sorted(glob.glob(os.path.join(demo_data.path(), "speech", "train", "*.flac")))
  noises = sorted(glob.glob(os.path.join(demo_data.path(), "noise", "train", "*.flac")))
  clip = lambda path: audio.read_audio(path)[:3 * RATE]
  speech, noise = files[::8], noises[::8]
  return data.AudioSet(layout=data.SPEECH_NOISE, clean=[clip(p) for p in speech],
                       clean_names=speech, noise=[clip(p) for p in noise], noise_names=noise)


def _batches(audio_set, config, seed, count, start_step=0):
  dataset = data.make_training_dataset(audio_set, config, seed, start_step=start_step)
  return [(n.numpy(), c.numpy()) for n, c in dataset.take(count)]


ALL_ON = data.AugmentConfig(spectral_shaping=0.5, speed=0.5, reverb=0.5, noise_mix=0.5,
                            babble=0.5, tonal_noise=0.5, clicks=0.5, rumble=0.5,
                            rir_bank_size=4,
                            snr_distribution="normal", level_distribution="lufs")


def test_all_augmentations_deterministic_parallel_resumable_and_clip_protected(train_set):
  config = data.DataConfig(batch_size=4, data_parallel_calls=1, augment=ALL_ON)
  serial = _batches(train_set, config, 7, 4)
  parallel = _batches(train_set, data.DataConfig(batch_size=4, data_parallel_calls=-1,
                                                 augment=ALL_ON), 7, 4)
  resumed = _batches(train_set, config, 7, 2, start_step=2)
  other_seed = _batches(train_set, config, 8, 1)
  plain = _batches(train_set, data.DataConfig(batch_size=4), 7, 1)
  assert_same_batches(serial, parallel)
  assert_same_batches(serial[2:], resumed)
  assert not np.allclose(serial[0][0], other_seed[0][0])
  assert not np.allclose(serial[0][1], plain[0][1])
  for noisy, clean in serial:
    assert noisy.shape == clean.shape == (4, 12800) and noisy.dtype == np.float32
    assert np.all(np.isfinite(noisy)) and np.all(np.isfinite(clean))
    assert np.abs(noisy).max() <= data.CLIP_PEAK + 1e-6
    assert np.abs(clean).max() <= data.CLIP_PEAK + 1e-6


def _peak_normalized(batch):
  return batch / np.abs(batch).max(axis=1, keepdims=True)


def test_spectral_shaping_signals_shape_only_the_signals_named(train_set):
  """Noise alone leaves the training target as recorded; each signal keeps its own draws."""
  def speech_and_noise(**shaping):
    config = data.DataConfig(batch_size=4, gain_db_max=0.0,
                             augment=data.AugmentConfig(**shaping))
    (noisy, clean), = _batches(train_set, config, 3, 1)
    # The mixing and the clip protection only scale each signal: compare shapes, not levels.
    return _peak_normalized(clean), _peak_normalized(noisy - clean)

  plain_speech, plain_noise = speech_and_noise()
  both_speech, both_noise = speech_and_noise(spectral_shaping=1.0)
  noise_speech, noise_noise = speech_and_noise(spectral_shaping=1.0,
                                               spectral_shaping_signals=("noise",))
  speech_speech, speech_noise = speech_and_noise(spectral_shaping=1.0,
                                                 spectral_shaping_signals=("speech",))
  np.testing.assert_allclose(noise_speech, plain_speech, atol=1e-5)
  np.testing.assert_allclose(noise_noise, both_noise, atol=1e-4)
  np.testing.assert_allclose(speech_speech, both_speech, atol=1e-5)
  np.testing.assert_allclose(speech_noise, plain_noise, atol=1e-4)
  for shaped, plain in ((noise_noise, plain_noise), (speech_speech, plain_speech)):
    differences = np.abs(shaped - plain).max(axis=1)
    # Every example's signal was filtered; the gains are drawn, so some only slightly.
    assert differences.min() > 1e-3 and differences.max() > 0.05


def test_spectral_shaping_signals_are_validated_and_canonical():
  assert data.AugmentConfig(spectral_shaping_signals=["noise", "speech"]) == data.AugmentConfig()
  assert data.AugmentConfig(
      spectral_shaping_signals=("noise",)).spectral_shaping_signals == ("noise",)
  for signals in ((), ("music",)):
    with pytest.raises(ValueError, match="spectral_shaping_signals"):
      data.AugmentConfig(spectral_shaping_signals=signals)


def test_switching_one_augmentation_on_keeps_the_draws_of_another(train_set):
  speed = data.AugmentConfig(speed=1.0)
  both = data.AugmentConfig(speed=1.0, noise_mix=1.0)
  (_, speed_clean), = _batches(train_set, data.DataConfig(batch_size=4, augment=speed), 0, 1)
  (_, both_clean), = _batches(train_set, data.DataConfig(batch_size=4, augment=both), 0, 1)
  # Same speech and speed factors; only the clip protection's scale may differ.
  for a, b in zip(speed_clean, both_clean):
    np.testing.assert_allclose(a / np.abs(a).max(), b / np.abs(b).max(), atol=1e-5)


# sha256 of the first 6 batches of the demo corpus's training stream (seed 0, batch 16,
# 0.8 s), recorded from the code before augmentation existed (commit e9e04cb).
_STREAM_BEFORE_AUGMENTATION = "cff2e3a3408a294c25043bab65a8afa41dd76fb0ac49bd12ddbbe4b5288be7a1"


@pytest.mark.parametrize("augment_config", [
    data.AugmentConfig(),
    # Settings of augmentations that are off change nothing either.
    data.AugmentConfig(spectral_shaping_db=3.0, speed_min=0.5, rt60_min=1.0, rt60_max=2.0,
                       noise_mix_db=20.0, babble_talkers_min=1, snr_db_std=1.0),
])
def test_all_augmentations_off_is_the_stream_before_augmentation(augment_config):
  corpus = data.discover_corpus(demo_data.path())
  train = data.load_audio_set(corpus.split("train"))
  config = data.DataConfig(batch_size=16, data_parallel_calls=2, augment=augment_config)
  digest = hashlib.sha256()
  for noisy, clean in _batches(train, config, 0, 6):
    digest.update(noisy.tobytes())
    digest.update(clean.tobytes())
  assert digest.hexdigest() == _STREAM_BEFORE_AUGMENTATION


# --- flags -----------------------------------------------------------------------------------


def _flag_values(*modules):
  values = flags.FlagValues()
  for module in modules:
    for flag in flags.FLAGS.get_flags_for_module(module):
      values[flag.name] = copy.deepcopy(flag)  # parsing must not touch the global FLAGS
  return values


def test_augment_config_from_flags_defaults_off_and_validators():
  values = _flag_values("tf_tinyse.data.config", "tf_tinyse.data.augment")
  values(["prog"])
  assert data.DataConfig.from_flags(values).augment == data.AugmentConfig()
  assert not data.AugmentConfig().changes_examples
  values = _flag_values("tf_tinyse.data.config", "tf_tinyse.data.augment")
  values(["prog", "--augment_reverb=0.3", "--rt60_max=1.2", "--augment_babble=0.5",
          "--snr_distribution=normal", "--level_distribution=lufs", "--speed_min=0.8",
          "--augment_tonal_noise=0.25", "--augment_clicks=0.75", "--augment_rumble=0.5",
          "--spectral_shaping_signals=noise"])
  config = data.DataConfig.from_flags(values).augment
  assert config.spectral_shaping_signals == ("noise",)
  assert (config.reverb, config.rt60_max, config.babble, config.speed_min) == (0.3, 1.2, 0.5, 0.8)
  assert (config.tonal_noise, config.clicks, config.rumble) == (0.25, 0.75, 0.5)
  assert config.snr_distribution == "normal" and config.changes_examples

  with flagsaver.flagsaver():
    for name, value, message in (
        ("augment_speed", 1.5, "--augment_speed must be in \\[0, 1\\]"),
        ("augment_clicks", -0.1, "--augment_clicks must be in \\[0, 1\\]"),
        ("augment_rumble", 1.1, "--augment_rumble must be in \\[0, 1\\]"),
        ("speed_min", 1.2, "--speed_min must be <= --speed_max"),
        ("rt60_max", 0.1, "--rt60_min must be <= --rt60_max"),
        ("babble_talkers_min", 9, "--babble_talkers_min must be <= --babble_talkers_max"),
        ("level_lufs_min", -10.0, "--level_lufs_min must be <= --level_lufs_max")):
      with pytest.raises(flags.IllegalFlagValueError, match=message):
        setattr(flags.FLAGS, name, value)
