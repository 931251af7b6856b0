"""Probe noises: synthetic tones and clicks that no corpus of recorded noise holds, for scoring.

A denoiser trained on recorded noise can fail on whole kinds of sound it never heard: a
steady narrowband tone looks like a voiced harmonic and is kept, and broadband clicks get
the speech band they cover suppressed with them. These signals measure that. They are made
from formulas (sines, sweeps, impulses, ringing bursts), unlike anything the training
augmentations make from recordings (`augment.tonal_noise`, `augment.clicks`), so a probe
score checks that a model learned the *kind* of sound, not the generator.

They are noise for evaluation only: mixed with real held-out speech by the usual
evaluation set (`evaluation.make_evaluation_set`, LUFS SNR), never as speech and never in
training. `write_probe_corpus` lays them out as a `speech/` + `noise/` test split.
"""
import os
from typing import Sequence

import numpy as np

from tf_tinyse import audio
from tf_tinyse import fileio

KINDS = ("tones", "clicks")
_LEVEL = 0.1  # peak of a sine; the mixing sets the real level from the SNR


def _sine(freq_hz, seconds, rate, rng):
  """A sine of an instantaneous frequency array (or a constant), random start phase."""
  n = int(seconds * rate)
  freq = np.broadcast_to(np.asarray(freq_hz, np.float64), (n,))
  phase = 2 * np.pi * np.cumsum(freq) / rate + rng.uniform(0, 2 * np.pi)
  return np.sin(phase)


def tone(rng, variant, seconds, rate=audio.SAMPLE_RATE) -> np.ndarray:
  """One of six tonal noises, by `variant` (0–5), its parameters drawn from `rng`:
  0 a steady sine with slight vibrato, 1 mains hum with harmonics, 2 a beeping tone,
  3 a dual-tone (DTMF) pair, 4 a siren sweep, 5 a high whine."""
  n = int(seconds * rate)
  t = np.arange(n) / rate
  if variant == 0:
    f = np.exp(rng.uniform(np.log(300), np.log(5000)))
    wave = _sine(f * (1 + 0.003 * np.sin(2 * np.pi * 5 * t)), seconds, rate, rng)
  elif variant == 1:
    f0 = (50.0, 60.0)[int(rng.integers(2))]
    wave = sum(_sine(f0 * k, seconds, rate, rng) / k for k in range(1, 16))
  elif variant == 2:
    f = np.exp(rng.uniform(np.log(800), np.log(3000)))
    period = rng.uniform(0.3, 0.8)
    gate = ((t % period) < period / 2).astype(np.float64)
    # 5 ms ramps, as a real beeper's: an instant switch would add clicks to the tone.
    ramp = np.hanning(int(0.01 * rate))
    gate = np.convolve(gate, ramp / ramp.sum(), mode="same")
    wave = gate * _sine(f, seconds, rate, rng)
  elif variant == 3:
    low = (697.0, 770.0, 852.0, 941.0)[int(rng.integers(4))]
    high = (1209.0, 1336.0, 1477.0)[int(rng.integers(3))]
    wave = _sine(low, seconds, rate, rng) + _sine(high, seconds, rate, rng)
  elif variant == 4:
    period = rng.uniform(2.0, 4.0)
    wave = _sine(1000 + 400 * np.sin(2 * np.pi * t / period), seconds, rate, rng)
  elif variant == 5:
    wave = _sine(rng.uniform(5000, 7500), seconds, rate, rng)
  else:
    raise ValueError(f"tone variant {variant} not in 0-5")
  return (_LEVEL * wave / np.max(np.abs(wave))).astype(np.float32)


def click_train(rng, variant, seconds, rate=audio.SAMPLE_RATE) -> np.ndarray:
  """One of four click noises, by `variant` (0–3): 0 cracks (decaying white bursts of
  0.5–3 ms) at random times, 1 ringing clicks (decaying 1–6 kHz bursts), 2 dense crackle
  (vinyl: single-sample impulses), 3 a ticking clock (periodic 1 ms ticks)."""
  n = int(seconds * rate)
  out = np.zeros(n, np.float64)
  if variant == 0:
    for at in rng.integers(n, size=rng.poisson(rng.uniform(3, 10) * seconds)):
      length = min(int(rng.uniform(0.0005, 0.003) * rate), n - at)
      out[at:at + length] += (rng.standard_normal(length) * rng.uniform(0.5, 1.0)
                              * np.exp(-np.arange(length) / max(length / 3, 1)))
  elif variant == 1:
    for at in rng.integers(n, size=rng.poisson(rng.uniform(2, 8) * seconds)):
      length = min(int(0.02 * rate), n - at)
      k = np.arange(length) / rate
      burst = (np.exp(-k / rng.uniform(0.001, 0.003))
               * np.sin(2 * np.pi * rng.uniform(1000, 6000) * k + rng.uniform(0, 2 * np.pi)))
      out[at:at + length] += burst
  elif variant == 2:
    at = rng.integers(n, size=rng.poisson(rng.uniform(30, 100) * seconds))
    out[at] = rng.choice((-1.0, 1.0), size=at.size) * rng.lognormal(0.0, 1.0, size=at.size)
  elif variant == 3:
    period = int(rng.uniform(0.25, 1.0) * rate)
    out[rng.integers(period)::period] = 1.0
    k = np.arange(int(0.001 * rate)) / rate
    tick = np.exp(-k / 0.0002) * np.cos(2 * np.pi * rng.uniform(2500, 4500) * k)
    out = np.convolve(out, tick)[:n]  # a short, bright tick
  else:
    raise ValueError(f"click variant {variant} not in 0-3")
  peak = np.max(np.abs(out))
  if peak == 0:  # no click drawn in so short a span: one in the middle
    out[n // 2] = 1.0
    peak = 1.0
  return (_LEVEL * out / peak).astype(np.float32)


_MAKERS = {"tones": (tone, 6), "clicks": (click_train, 4)}


def probe_noises(kind, count, seed=0, seconds=12.0, rate=audio.SAMPLE_RATE) -> list:
  """`count` noises of `kind` ('tones' or 'clicks'), cycling through its variants, each from
  its own generator (seed, kind, index): [(name, waveform)], the same for the same seed."""
  if kind not in _MAKERS:
    raise ValueError(f"unknown probe noise kind {kind!r}; known: {', '.join(KINDS)}")
  make, variants = _MAKERS[kind]
  noises = []
  for i in range(count):
    rng = np.random.default_rng([int(seed), KINDS.index(kind), i])
    noises.append((f"probe_{kind}_{i:02d}", make(rng, i % variants, seconds, rate)))
  return noises


def write_probe_corpus(speech_paths: Sequence[str], out_dir, kind, count=12, seed=0):
  """Lays out `out_dir/speech/test` (links to `speech_paths`) and `out_dir/noise/test`
  (`count` probe noises of `kind` as WAV files): a test split to score with
  `tf_tinyse.evaluate --data_dir=out_dir --split=test`. Returns out_dir."""
  fileio.link_files(speech_paths, os.path.join(out_dir, "speech", "test"))
  noise_dir = os.path.join(out_dir, "noise", "test")
  os.makedirs(noise_dir, exist_ok=True)
  for name, wave in probe_noises(kind, count, seed):
    audio.write_audio(os.path.join(noise_dir, name + ".wav"), wave)
  return out_dir
