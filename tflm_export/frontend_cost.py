"""What the CPU front-end around the int8 model costs per hop: operations and host time.

Every hop (256 samples at 16 kHz) the device's CPU runs, outside the int8 model and outside
anything Vela estimates: the analysis window, a 512-point real FFT, |Y|, the mel matrix G,
the compression (·)^0.3, QEQ and the quantization of the model input; then, on the model's
int8 mask, the dequantization, the mask expansion Gᵀ, the mask multiply, the inverse real
FFT, the synthesis window and the overlap-add.

`HopFrontend` runs exactly that one hop at a time in numpy, with the constants of
`tf_tinyse.features` (window, G) and the quantization of `tflm_export.tflm_runner`; its
frames equal `features.stft` / `mel_features` / `istft` (checked by its tests), so it is a
per-hop view of the same signal path, not a second one. `host_ms_per_hop` times it on this
host; `ops_per_hop` counts the real multiplies and adds of one hop from the sizes in the
feature config (how is in `HOW_COUNTED`).
"""
import math
import time

import numpy as np

from tf_tinyse import features
from tflm_export import tflm_runner

HOW_COUNTED = (
    "real multiplies and adds of one hop, from the frame, hop, bin and band sizes: each real "
    "FFT / inverse FFT of N points as a radix-2 complex FFT of N/2 points ((N/4)·log2(N/2) "
    "butterflies, 4 multiplies + 6 adds each, no savings on trivial twiddles) plus the "
    "real-signal split (N/4 - 1 bin pairs, 8 multiplies + 10 adds each, + 2 adds for DC and "
    "Nyquist); |Y| 2 multiplies + 1 add + 1 sqrt per bin; the mel matrix G and the mask "
    "expansion Gᵀ over G's non-zero entries only (1 multiply each, adds to sum them); the "
    "compression 1 add + 1 pow per band; QEQ, quantize and dequantize 1 multiply + 1 add per "
    "band (quantize also rounds and clips); the mask multiply 2 multiplies per bin (real gain "
    "× complex bin), bins below the low cut zeroed instead (no expansion, no multiply); "
    "analysis and synthesis windows 1 multiply per sample (the inverse FFT's "
    "1/N folded into the synthesis window); overlap-add N - H adds. Loads, stores, loop and "
    "index arithmetic and the frame-buffer shift are not counted")
HOW_MEASURED = ("tflm_export.frontend_cost.HopFrontend in numpy on this host, one hop at a "
                "time (not the device, not the int8 model): median over the timed hops of a "
                "seeded noise signal, after warm-up hops")


def _fft_points(frame_length):
  """Points of the complex FFT a real FFT of `frame_length` is counted as (a power of two)."""
  half = max(1, frame_length // 2)
  return 1 << max(0, math.ceil(math.log2(half)))


def _real_fft_ops(frame_length):
  m = _fft_points(frame_length)
  butterflies = (m // 2) * int(math.log2(m)) if m > 1 else 0
  pairs = max(0, m // 2 - 1)
  return {"multiplies": 4 * butterflies + 8 * pairs, "adds": 6 * butterflies + 10 * pairs + 2}


def ops_per_hop(feature_config, qeq=True):
  """The front-end's operations per hop (`HOW_COUNTED`), per stage and in total.

  Args:
    feature_config: `tf_tinyse.features.FeatureConfig` (frame, hop, bands) of the model.
    qeq: whether the front-end applies QEQ (a model trained with it).

  Returns:
    {"multiplies", "adds", "sqrt", "pow", "round_and_clip": totals, "stages": {stage: counts},
    "sizes": the sizes counted from, "how_counted": HOW_COUNTED}.
  """
  n, h = feature_config.frame_length, feature_config.hop_length
  bins, bands = feature_config.num_bins, feature_config.num_bands
  g = features.mel_matrix(feature_config)
  nonzeros = int(np.count_nonzero(g))
  bands_used = int(np.count_nonzero(np.any(g != 0, axis=1)))
  # Bins below the low cut are set to zero: no gain to expand, nothing to multiply.
  cut = features.low_cut_bins(feature_config)
  kept = g[:, cut:]
  expansion_nonzeros = int(np.count_nonzero(kept))
  expansion_bins = int(np.count_nonzero(np.any(kept != 0, axis=0)))
  fft = _real_fft_ops(n)
  stages = {
      "analysis_window": {"multiplies": n, "adds": 0},
      "rfft": dict(fft),
      "magnitude": {"multiplies": 2 * bins, "adds": bins, "sqrt": bins},
      "mel": {"multiplies": nonzeros, "adds": nonzeros - bands_used},
      "compression": {"multiplies": 0, "adds": bands, "pow": bands},
      "qeq": {"multiplies": bands if qeq else 0, "adds": bands if qeq else 0},
      "quantize_input": {"multiplies": bands, "adds": bands, "round_and_clip": bands},
      "dequantize_mask": {"multiplies": bands, "adds": bands},
      "mask_expansion": {"multiplies": expansion_nonzeros,
                         "adds": expansion_nonzeros - expansion_bins},
      "mask_multiply": {"multiplies": 2 * (bins - cut), "adds": 0},
      "irfft": dict(fft),
      "synthesis_window": {"multiplies": n, "adds": 0},
      "overlap_add": {"multiplies": 0, "adds": n - h},
  }
  totals = {key: sum(stage.get(key, 0) for stage in stages.values())
            for key in ("multiplies", "adds", "sqrt", "pow", "round_and_clip")}
  return {**totals, "stages": stages,
          "sizes": {"frame_length": n, "hop_length": h, "bins": bins, "bands": bands,
                    "mel_nonzeros": nonzeros, "low_cut_bins": cut,
                    "fft_points_counted": _fft_points(n)},
          "how_counted": HOW_COUNTED}


class HopFrontend:
  """The front-end of one hop at a time, as the device runs it around the int8 model.

  `analyze(hop)` takes the next `hop_length` samples and returns the int8 model's input for
  the frame that ends with them (and that frame's spectrum); `synthesize(mask, spectrum)`
  takes the model's output for that frame and returns the next `hop_length` output samples.
  The output lags the input by `frame_length - hop_length` samples (the overlap), as
  `features.istft` of `features.stft` does after its left padding.
  """

  def __init__(self, fe, input_quantization=None, output_quantization=None):
    """`fe`: a `tflm_export.frontend.Frontend` (feature settings, QEQ or none).
    `input_quantization`, `output_quantization`: (scale, zero_point, numpy dtype) of the int8
    model's input and output; None: float in and out (no quantize / dequantize)."""
    self.fe = fe
    self.config = fe.feature
    self._window = features.analysis_window(self.config)
    self._g = features.mel_matrix(self.config)  # [bands, bins]
    self._g_t = np.ascontiguousarray(self._g.T)  # [bins, bands]
    self._low_cut = features.low_cut_gain(self.config)
    self.input_quantization = input_quantization
    self.output_quantization = output_quantization
    self.reset()

  def reset(self):
    """Silence before the first hop: an empty frame buffer and overlap-add accumulator."""
    self._frame = np.zeros(self.config.frame_length, np.float32)
    self._overlap = np.zeros(self.config.frame_length, np.float32)

  def analyze(self, hop):
    """[hop_length] samples → (model input [bands], spectrum [bins] complex)."""
    h = self.config.hop_length
    self._frame[:-h] = self._frame[h:]
    self._frame[-h:] = hop
    spectrum = np.fft.rfft(self._frame * self._window)
    mel = np.abs(spectrum).astype(np.float32) @ self._g_t
    z = self.fe.model_input(np.power(mel + 1e-8, self.config.compression))
    if self.input_quantization is not None:
      z = tflm_runner.quantize(z, *self.input_quantization)
    return z, spectrum

  def synthesize(self, mask, spectrum):
    """Model output [bands] and the frame's spectrum → the next [hop_length] output samples."""
    if self.output_quantization is not None:
      scale, zero_point, _ = self.output_quantization
      mask = tflm_runner.dequantize(mask, scale, zero_point)
    # The floor is affine like the dequantization; on a device both fold into one multiply and
    # add per band (ops_per_hop's "dequantize_mask").
    mask = features.floored_mask(np.asarray(mask, np.float32), self.config)
    # Gᵀ M, then the low cut's zeros (a device skips those bins' multiplies).
    gain = (mask @ self._g) * self._low_cut  # [bins]
    frame = np.fft.irfft(spectrum * gain, n=self.config.frame_length) * self._window
    h = self.config.hop_length
    self._overlap += frame.astype(np.float32)
    out = self._overlap[:h].copy()
    self._overlap[:-h] = self._overlap[h:]
    self._overlap[-h:] = 0.0
    return out


def host_ms_per_hop(hop_frontend, hops=200, warmup_hops=20, seed=0):
  """Host time of `hop_frontend` (a `HopFrontend`) per hop, in ms (`HOW_MEASURED`).

  Returns {"analysis", "synthesis", "total": median ms per hop, "hops", "statistic",
  "how_measured"}; analysis is samples → model input, synthesis model output → samples (the
  model itself is not run: a constant mask stands in for its output). The front-end is reset
  afterwards.
  """
  config = hop_frontend.config
  rng = np.random.default_rng(seed)
  signal = (0.1 * rng.standard_normal((warmup_hops + hops, config.hop_length))).astype(np.float32)
  mask = np.full(config.num_bands, 0.5, np.float32)
  if hop_frontend.output_quantization is not None:
    mask = tflm_runner.quantize(mask, *hop_frontend.output_quantization)
  analysis, synthesis = [], []
  hop_frontend.reset()
  for i, hop in enumerate(signal):
    start = time.perf_counter()
    _, spectrum = hop_frontend.analyze(hop)
    middle = time.perf_counter()
    hop_frontend.synthesize(mask, spectrum)
    end = time.perf_counter()
    if i >= warmup_hops:
      analysis.append(middle - start)
      synthesis.append(end - middle)
  hop_frontend.reset()
  analysis, synthesis = np.asarray(analysis), np.asarray(synthesis)
  return {"analysis": 1000.0 * float(np.median(analysis)),
          "synthesis": 1000.0 * float(np.median(synthesis)),
          "total": 1000.0 * float(np.median(analysis + synthesis)),
          "hops": int(hops), "statistic": "median", "how_measured": HOW_MEASURED}
