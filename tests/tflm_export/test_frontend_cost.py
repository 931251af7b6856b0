"""The CPU front-end per hop: one hop at a time it computes what `tf_tinyse.features` computes
for the whole utterance, and its operation count follows the sizes of the feature config."""
import math

import numpy as np
import pytest

from tf_tinyse import features
from tflm_export import frontend
from tflm_export import frontend_cost
from tflm_export import tflm_runner

CONFIG = features.FeatureConfig()
QEQ = frontend.Frontend(CONFIG, qeq_gain=np.linspace(0.5, 3.0, 128).astype(np.float32),
                        qeq_bias=np.linspace(-1.5, 0.5, 128).astype(np.float32))
INPUT_Q = (2.0 / 255.0, 0, np.int8)
OUTPUT_Q = (1.0 / 256.0, -128, np.int8)


def _hops(wave, config):
  """The waveform as whole hops (zero-padded at the end)."""
  h = config.hop_length
  frames = -(-len(wave) // h)
  return np.concatenate([wave, np.zeros(frames * h - len(wave), np.float32)]).reshape(-1, h)


def test_hop_frontend_computes_the_stft_mel_features_and_qeq(noisy_clip):
  wave = noisy_clip[0][:16000]
  spectra = features.stft(wave[None], CONFIG)
  expected = QEQ.model_input(features.mel_features(spectra, CONFIG).numpy()[0])
  hop = frontend_cost.HopFrontend(QEQ)
  got = [hop.analyze(h) for h in _hops(wave, CONFIG)]
  # stft pads one hop more at the end: the frames the hops give are its first ones.
  frames = len(got)
  np.testing.assert_allclose(np.stack([g[0] for g in got]), expected[:frames], atol=1e-4)
  np.testing.assert_allclose(np.stack([g[1] for g in got]), spectra.numpy()[0, :frames],
                             atol=1e-4)
  # With the int8 model's input grid: tflm_runner's quantization of the same values.
  quantized = frontend_cost.HopFrontend(QEQ, input_quantization=INPUT_Q)
  q = np.stack([quantized.analyze(h)[0] for h in _hops(wave, CONFIG)])
  assert q.dtype == np.int8
  assert np.abs(q.astype(int) - tflm_runner.quantize(expected[:frames], *INPUT_Q)).max() <= 1


@pytest.mark.parametrize("mask_floor, low_cut_hz", [(0.0, 0.0), (0.05, 0.0), (0.05, 40.0)])
def test_hop_frontend_synthesis_is_the_istft_of_the_masked_spectrum(noisy_clip, mask_floor,
                                                                    low_cut_hz):
  config = features.FeatureConfig(mask_floor=mask_floor, low_cut_hz=low_cut_hz)
  wave = noisy_clip[0][:16000]
  spectra = features.stft(wave[None], config)
  rng = np.random.default_rng(0)
  # Masks near zero, where the floor decides the gain.
  mask = rng.uniform(0, 0.2, (spectra.shape[1], config.num_bands)).astype(np.float32)
  expected = features.istft(features.apply_mel_mask(spectra, mask[None], config), config,
                            len(wave)).numpy()[0]
  if low_cut_hz:
    uncut = features.istft(
        features.apply_mel_mask(spectra, mask[None], features.FeatureConfig(mask_floor=mask_floor)),
        config, len(wave)).numpy()[0]
    assert np.abs(expected - uncut).max() > 1e-4
  elif mask_floor:
    unfloored = features.istft(features.apply_mel_mask(spectra, mask[None], CONFIG), CONFIG,
                               len(wave)).numpy()[0]
    assert np.abs(expected - unfloored).max() > 1e-3
  hop = frontend_cost.HopFrontend(frontend.Frontend(config, QEQ.qeq_gain, QEQ.qeq_bias))
  out = []
  for t, h in enumerate(_hops(wave, CONFIG)):
    _, spectrum = hop.analyze(h)
    out.append(hop.synthesize(mask[t], spectrum))
  out = np.concatenate(out)
  lag = CONFIG.frame_length - CONFIG.hop_length
  # The last hop needs the frame after it (stft's extra padding): compare up to there.
  n = len(out) - lag
  np.testing.assert_allclose(out[lag:], expected[:n], atol=1e-5)


def test_ops_per_hop_follow_the_sizes():
  ops = frontend_cost.ops_per_hop(CONFIG, qeq=True)
  stages = ops["stages"]
  # 512-point real FFT: complex radix-2 FFT of 256 points (128 * 8 butterflies) + the split.
  assert stages["rfft"] == {"multiplies": 4 * 128 * 8 + 8 * 127, "adds": 6 * 128 * 8 + 10 * 127 + 2}
  assert stages["irfft"] == stages["rfft"]
  g = features.mel_matrix(CONFIG)
  assert stages["mel"]["multiplies"] == stages["mask_expansion"]["multiplies"] == \
      np.count_nonzero(g) == ops["sizes"]["mel_nonzeros"]
  assert stages["mel"]["adds"] == np.count_nonzero(g) - 128
  assert stages["mask_expansion"]["adds"] == np.count_nonzero(g) - 257
  assert stages["magnitude"] == {"multiplies": 2 * 257, "adds": 257, "sqrt": 257}
  assert stages["overlap_add"]["adds"] == 256
  for key in ("multiplies", "adds", "sqrt", "pow", "round_and_clip"):
    assert ops[key] == sum(s.get(key, 0) for s in stages.values())
  assert (ops["sqrt"], ops["pow"]) == (257, 128)
  # Without QEQ, one multiply and one add per band fewer.
  plain = frontend_cost.ops_per_hop(CONFIG, qeq=False)
  assert ops["multiplies"] - plain["multiplies"] == ops["adds"] - plain["adds"] == 128
  # Half the frame: the FFT count follows (128-point complex FFT, 64 * 7 butterflies).
  small = frontend_cost.ops_per_hop(features.FeatureConfig(frame_length=256, hop_length=128,
                                                           num_bands=64))
  assert small["stages"]["rfft"]["multiplies"] == 4 * 64 * int(math.log2(128)) + 8 * 63
  assert small["sizes"]["bins"] == 129 and small["stages"]["overlap_add"]["adds"] == 128
  # A 40 Hz low cut zeroes bins 0 and 1: no gain to expand or multiply there.
  cut = frontend_cost.ops_per_hop(features.FeatureConfig(low_cut_hz=40.0))
  assert cut["sizes"]["low_cut_bins"] == 2 and ops["sizes"]["low_cut_bins"] == 0
  assert cut["stages"]["mask_multiply"]["multiplies"] == 2 * (257 - 2)
  assert cut["stages"]["mask_expansion"]["multiplies"] == np.count_nonzero(g[:, 2:])
  assert cut["stages"]["mask_expansion"]["adds"] == np.count_nonzero(g[:, 2:]) - 255
  assert {k: v for k, v in cut["stages"].items() if not k.startswith("mask_")} == \
      {k: v for k, v in stages.items() if not k.startswith("mask_")}


def test_host_ms_per_hop_is_a_median_of_one_hop_runs():
  hop = frontend_cost.HopFrontend(QEQ, INPUT_Q, OUTPUT_Q)
  timing = frontend_cost.host_ms_per_hop(hop, hops=10, warmup_hops=2)
  assert timing["hops"] == 10 and timing["statistic"] == "median"
  assert timing["analysis"] > 0 and timing["synthesis"] > 0 and timing["total"] > 0
  assert timing["how_measured"] == frontend_cost.HOW_MEASURED
  # Timing leaves the front-end as it was before the first hop.
  first = frontend_cost.HopFrontend(QEQ, INPUT_Q, OUTPUT_Q).analyze(np.ones(256, np.float32))
  np.testing.assert_array_equal(hop.analyze(np.ones(256, np.float32))[0], first[0])


@pytest.mark.parametrize("qeq", [QEQ, frontend.Frontend(CONFIG)])
def test_hop_frontend_runs_with_and_without_qeq(qeq):
  out = frontend_cost.HopFrontend(qeq).analyze(np.zeros(256, np.float32))[0]
  assert out.shape == (128,) and np.all(np.isfinite(out))
