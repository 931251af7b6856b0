"""Runs an integer `.tflite` mask model in the TFLite Micro interpreter, frame by frame.

The model holds its LSTM state in variable tensors, so calling `run` on consecutive chunks of
one utterance continues where the last call stopped; `reset()` starts a new utterance.
"""
import os
import re
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tflite_micro.python.tflite_micro import runtime

from tf_tinyse.errors import UserError

_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


def _capture_native_stderr(fn):
  """Calls `fn()` and returns what native code wrote to file descriptor 2 meanwhile.

  TFLM's RecordingMicroAllocator reports arena usage only by printing from C++.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      fn()
    finally:
      os.dup2(saved, 2)
      os.close(saved)
    tmp.seek(0)
    return tmp.read().decode("utf-8", "replace")


def _has_sparse_tensors(tflite_bytes):
  model = schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0)
  for g in range(model.SubgraphsLength()):
    graph = model.Subgraphs(g)
    if any(graph.Tensors(i).Sparsity() is not None for i in range(graph.TensorsLength())):
      return True
  return False


def quantize(values, scale, zero_point, dtype):
  """Float → integer with the tensor's scale and zero point, saturating."""
  info = np.iinfo(dtype)
  q = np.round(np.asarray(values, np.float64) / scale) + zero_point
  return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values, scale, zero_point):
  return ((np.asarray(values, np.float64) - zero_point) * scale).astype(np.float32)


class TflmModel:
  """A streaming mask model in the TFLite Micro interpreter.

  Attributes:
    input_scale, input_zero_point, input_dtype: quantization of the feature input.
    output_scale, output_zero_point, output_dtype: quantization of the mask output.
    num_bands: features per frame (= mask values per frame).
    arena_used_bytes: bytes of the tensor arena TFLM actually allocated (persistent and
      scratch memory, as its RecordingMicroAllocator reports), i.e. the working memory a
      device needs besides the model's flash.
    mean_invoke_seconds: mean wall time of one `invoke()` (one frame) over all frames run so
      far on this host; None before the first frame.
  """

  def __init__(self, tflite_bytes, *, arena_size=None):
    """`tflite_bytes`: an integer model from `convert.convert_to_int8`.

    `arena_size`: bytes given to TFLM (default: the runtime's 10 × model size).
    """
    self.tflite_bytes = bytes(tflite_bytes)
    # A .tflite flatbuffer carries the file identifier "TFL3" at bytes 4..8; the runtime would
    # read garbage offsets out of anything else.
    if self.tflite_bytes[4:8] != b"TFL3":
      raise UserError("the bytes given to TflmModel are not a .tflite model (no TFL3 "
                      "identifier); convert with tflm_export.convert.convert_to_int8")
    # TFLM has no sparse kernels, yet it runs a sparse constant as if it were dense and
    # computes wrong values without an error (tflm_export.sparse_tflite): refuse it.
    if _has_sparse_tensors(self.tflite_bytes):
      raise UserError("the model holds sparse-encoded weights (a model_sparse.tflite), which "
                      "TFLite Micro cannot run: densify it with "
                      "tflm_export.sparse_tflite.decode, or run the dense export")
    try:
      self._interpreter = runtime.Interpreter.from_bytes(self.tflite_bytes,
                                                         arena_size=arena_size)
    except (RuntimeError, ValueError) as e:
      raise UserError(f"TFLite Micro cannot load the model ({e}); convert it with "
                      "tflm_export.convert.convert_to_int8") from e
    inp = self._interpreter.get_input_details(0)
    out = self._interpreter.get_output_details(0)
    self.input_dtype = np.dtype(inp["dtype"])
    self.output_dtype = np.dtype(out["dtype"])
    self._input_shape = tuple(int(d) for d in inp["shape"])
    self.num_bands = self._input_shape[-1]
    self.input_scale = float(inp["quantization_parameters"]["scales"][0])
    self.input_zero_point = int(inp["quantization_parameters"]["zero_points"][0])
    self.output_scale = float(out["quantization_parameters"]["scales"][0])
    self.output_zero_point = int(out["quantization_parameters"]["zero_points"][0])
    self._invoke_seconds = 0.0
    self._invokes = 0
    self.arena_used_bytes = self._measure_arena()

  def _measure_arena(self):
    # The allocator's record is complete only after the first invoke (scratch buffers are
    # requested in Prepare/Eval); one silent frame is run and its state discarded.
    self._interpreter.set_input(np.full(self._input_shape, self.input_zero_point,
                                        self.input_dtype), 0)
    self._interpreter.invoke()
    report = _capture_native_stderr(self._interpreter.print_allocations)
    self._interpreter.reset()
    match = _ARENA_TOTAL.search(report)
    return int(match.group(1)) if match else None

  @property
  def mean_invoke_seconds(self):
    return self._invoke_seconds / self._invokes if self._invokes else None

  def reset(self):
    """Clears the LSTM state: the next frame is the first of a new utterance."""
    self._interpreter.reset()

  def run_quantized(self, frames_q):
    """[T, bands] integers (input dtype) → [T, bands] integers (output dtype), in order."""
    frames_q = np.asarray(frames_q, self.input_dtype)
    out = np.empty(frames_q.shape, self.output_dtype)
    for t in range(frames_q.shape[0]):
      self._interpreter.set_input(frames_q[t].reshape(self._input_shape), 0)
      start = time.perf_counter()
      self._interpreter.invoke()
      self._invoke_seconds += time.perf_counter() - start
      self._invokes += 1
      out[t] = self._interpreter.get_output(0).reshape(-1)
    return out

  def run(self, features):
    """Float features [T, bands] → float mask [T, bands], continuing from the current state."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[1] != self.num_bands:
      raise UserError(f"features have shape {features.shape}, the model expects "
                      f"[frames, {self.num_bands}]")
    q = quantize(features, self.input_scale, self.input_zero_point, self.input_dtype)
    return dequantize(self.run_quantized(q), self.output_scale, self.output_zero_point)


def interleaved_ms_per_frame(models, frames, repeats=3):
  """Median host ms per `invoke()` of each `TflmModel` in `models` over the same frames.

  The host is noisy (other processes, frequency scaling), so the models are timed in turns:
  each of `repeats` rounds runs every model over `frames` (float model input [T, bands],
  quantized once per model with its own input grid) from a reset state, one after the other;
  each model's median over the rounds is returned (ms per frame, in the order of `models`).
  The models are reset afterwards.
  """
  frames = np.asarray(frames, np.float32)
  if repeats < 1 or frames.ndim != 2 or len(frames) < 1:
    raise ValueError("interleaved_ms_per_frame needs repeats >= 1 and frames [T >= 1, bands]")
  frames_q = [quantize(frames, m.input_scale, m.input_zero_point, m.input_dtype)
              for m in models]
  times = [[] for _ in models]
  for _ in range(repeats):
    for k, model in enumerate(models):
      model.reset()
      before_s, before_n = model._invoke_seconds, model._invokes  # pylint: disable=protected-access
      model.run_quantized(frames_q[k])
      spent = model._invoke_seconds - before_s  # pylint: disable=protected-access
      times[k].append(1000.0 * spent / (model._invokes - before_n))  # pylint: disable=protected-access
  for model in models:
    model.reset()
  return [float(np.median(t)) for t in times]


def run_keras_streaming(keras_streaming_model, features):
  """Float features [T, bands] → mask [T, bands] through a stateful Keras model, frame by frame.

  Continues from the model's current state (call `reset_states()` first for a new utterance).
  """
  step = tf.function(lambda x: keras_streaming_model(x, training=False))
  features = np.asarray(features, np.float32)
  out = np.empty_like(features, shape=(features.shape[0], keras_streaming_model.output_shape[-1]))
  for t in range(features.shape[0]):
    out[t] = step(tf.constant(features[t][None, None, :])).numpy().reshape(-1)
  return out


def compare_with_keras(tflm_model, keras_streaming_model, utterances_features):
  """Mask error of the TFLM model against the float Keras streaming model.

  Both are reset before each utterance and run frame by frame over it.

  Args:
    tflm_model: a `TflmModel`.
    keras_streaming_model: the float streaming model the TFLM model was converted from.
    utterances_features: a list of [T, bands] float feature arrays (or one such array).

  Returns:
    dict with `max_abs_error`, `mean_abs_error` (mask units, mask in [0, 1]),
    `max_abs_error_lsb`, `mean_abs_error_lsb` (in units of the output quantization step),
    `frames`, `utterances`.
  """
  if isinstance(utterances_features, np.ndarray):
    utterances_features = [utterances_features]
  errors = []
  for features in utterances_features:
    tflm_model.reset()
    keras_streaming_model.reset_states()
    errors.append(np.abs(tflm_model.run(features) - run_keras_streaming(keras_streaming_model,
                                                                        features)))
  keras_streaming_model.reset_states()
  tflm_model.reset()
  err = np.concatenate(errors, axis=0)
  return {
      "max_abs_error": float(err.max()),
      "mean_abs_error": float(err.mean()),
      "max_abs_error_lsb": float(err.max() / tflm_model.output_scale),
      "mean_abs_error_lsb": float(err.mean() / tflm_model.output_scale),
      "frames": int(err.shape[0]),
      "utterances": len(errors),
  }
