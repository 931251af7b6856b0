"""Dense vs weight / 1×8 block / unit pruning of the paper TinyLSTM: bytes, Vela, TFLM, MACs.

For each structure and sparsity, RANDOM masks zero the Keras weights of the streaming model
(the cost does not depend on which weights a training run would keep), the model is converted
to int8 on compressed mel features of real audio (the demo corpus unless --data_dir), and
measured:
- `.tflite` bytes, and the sparse `.tflite` bytes (`tflm_export.sparse_tflite.encode`: CSR for
  weight pruning, 1×8 blocks for block and unit pruning);
- Vela for --accelerator in its default memory mode and in `Sram_Only`: NPU cycles, total
  cycles, inference ms, flash bytes, encoded weight bytes;
- TFLM host latency per frame (median over --repeats runs of --frames frames);
- MACs per frame under the dense, 1×8 block-skipping and unit-shrunk kernel models
  (`tflm_export.macs`).
Unit pruning is also measured as the physically smaller dense model (fewer LSTM / Dense units,
the kept rows and columns copied), the only form in which Vela's NPU and TFLM compute shrink.

Masks (Keras layout: kernel [in, out], LSTM kernel [in, 4u] and recurrent kernel [u, 4u]):
- weight: random elements of every kernel;
- block: random 1×8 blocks along the input dimension of the [out, in] int8 layout, i.e. 8
  consecutive rows of one column of a Keras kernel;
- unit: random LSTM units (the 4 gate columns of kernel, recurrent kernel and bias, the
  recurrent row, the next layer's kernel row) and hidden Dense units (column, bias, next row);
  the output layer keeps its 128 units.

  python benchmarks/sparse_speed.py --sparsities=0.8            # quick: one sparsity
  python benchmarks/sparse_speed.py --output_json=sparse.json   # 50/70/80/90 %
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np

import tf_tinyse  # pylint: disable=unused-import  (sets TF_USE_LEGACY_KERAS)
from benchmarks import tflm_latency  # owns --num_files, --seconds_per_file, --output_dir
from tf_tinyse import cli
from tf_tinyse import demo_data
from tf_tinyse import fileio
from tf_tinyse import model as model_lib  # owns --lstm_units, --dense_units
from tflm_export import convert
from tflm_export import macs
from tflm_export import sparse_tflite
from tflm_export import tflm_runner
from tflm_export import vela

STRUCTURES = ("weight", "block", "unit")
flags.DEFINE_list("sparsities", ["0.5", "0.7", "0.8", "0.9"], "Fractions of weights removed.")
flags.DEFINE_list("structures", list(STRUCTURES), "Which of weight, block, unit to measure.")
flags.DEFINE_integer("block_size", 8, "Block width along the input dimension.")
flags.DEFINE_string("accelerator", "ethos-u55-128", "Vela target.")
flags.DEFINE_list("memory_modes", ["default", "Sram_Only"],
                  "Vela memory modes from Arm/vela.ini ('default': Vela's own).")
flags.DEFINE_string("system_config", "Ethos_U55_High_End_Embedded", "Vela system config "
                    "(Arm/vela.ini) used with a named memory mode; Vela refuses a config file "
                    "with its internal default system config.")
flags.DEFINE_integer("frames", 200, "Frames per TFLM latency run.")
flags.DEFINE_integer("repeats", 3, "TFLM latency runs; the median is reported.")
flags.DEFINE_integer("seed", 0, "Seed of the random masks.")
flags.DEFINE_string("output_json", None, "Also write all measurements to this JSON file.")

FLAGS = flags.FLAGS


def _lstm_and_dense(model):
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  return [l for l in model.layers if isinstance(l, (keras.layers.LSTM, keras.layers.Dense))]


def weight_masks(model, sparsity, rng):
  out = []
  for layer in _lstm_and_dense(model):
    out.append([(rng.random(w.shape) >= sparsity).astype(np.float32) if w.ndim == 2
                else np.ones(w.shape, np.float32) for w in layer.get_weights()])
  return out


def block_masks(model, sparsity, rng, block):
  out = []
  for layer in _lstm_and_dense(model):
    masks = []
    for w in layer.get_weights():
      if w.ndim != 2:
        masks.append(np.ones(w.shape, np.float32))
        continue
      rows, cols = w.shape  # Keras [in, out]: a block is `block` consecutive rows of a column
      keep = rng.random((int(np.ceil(rows / block)), cols)) >= sparsity
      masks.append(np.repeat(keep, block, axis=0)[:rows].astype(np.float32))
    out.append(masks)
  return out


def _random_unit_keep(model, unit_fraction, seed):
  layers = _lstm_and_dense(model)
  rng = np.random.default_rng(seed)
  keep = []
  for k, layer in enumerate(layers):
    units = layer.units
    if k == len(layers) - 1:
      keep.append(np.arange(units))
      continue
    n = max(1, int(round(units * (1 - unit_fraction))))
    keep.append(np.sort(rng.choice(units, n, replace=False)))
  return keep


def kernel_zero_fraction(masks):
  """Fraction of zero weights in all kernels (2-D matrices) of a list of per-layer masks."""
  kernels = [m for layer in masks for m in layer if m.ndim == 2]
  return sum(float(np.sum(m == 0)) for m in kernels) / sum(m.size for m in kernels)


def unit_keep(model, sparsity, rng):
  """Kept unit indices of every LSTM and hidden Dense layer (the output layer keeps all).

  Units are removed at the same fraction in every hidden layer, that fraction chosen so that
  the fraction of zero *kernel weights* (the sparsity everywhere else in the project, with the
  rows that read a removed unit) comes closest to `sparsity`: removing a fraction p of the
  LSTM units zeroes about 1 - (1 - p)^2 of their recurrent weights, so 80 % weight sparsity
  takes far fewer than 80 % of the units.
  """
  seed = int(rng.integers(2**31))
  best = min(np.linspace(0.0, 0.99, 100),
             key=lambda q: abs(kernel_zero_fraction(
                 unit_masks(model, _random_unit_keep(model, q, seed))) - sparsity))
  return _random_unit_keep(model, best, seed)


def unit_masks(model, keep):
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  layers = _lstm_and_dense(model)
  out = []
  for k, layer in enumerate(layers):
    units = layer.units
    alive = np.zeros(units, np.float32)
    alive[keep[k]] = 1
    alive_in = np.ones(layer.get_weights()[0].shape[0], np.float32)
    if k > 0:
      alive_in = np.zeros_like(alive_in)
      alive_in[keep[k - 1]] = 1
    if isinstance(layer, keras.layers.LSTM):
      gates = np.tile(alive, 4)
      out.append([alive_in[:, None] * gates[None, :], alive[:, None] * gates[None, :], gates])
    else:
      out.append([alive_in[:, None] * alive[None, :], alive])
  return out


def apply_masks(model, masks):
  for layer, layer_masks in zip(_lstm_and_dense(model), masks):
    layer.set_weights([w * m for w, m in zip(layer.get_weights(), layer_masks)])


def shrunk_model(model, config, keep):
  """The dense model with only the kept units, weights copied from `model`."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  n_lstm = len(config.lstm_units)
  small_config = dataclasses.replace(
      config, lstm_units=tuple(len(k) for k in keep[:n_lstm]),
      dense_units=tuple(len(k) for k in keep[n_lstm:-1]))
  small = model_lib.build_mask_model(small_config, streaming=True)
  for layer in small.layers:
    if not isinstance(layer, (keras.layers.LSTM, keras.layers.Dense)):
      if layer.weights:
        layer.set_weights(model.get_layer(layer.name).get_weights())
  big_layers, small_layers = _lstm_and_dense(model), _lstm_and_dense(small)
  for k, (big, little) in enumerate(zip(big_layers, small_layers)):
    rows = keep[k - 1] if k > 0 else np.arange(big.get_weights()[0].shape[0])
    cols = keep[k]
    weights = big.get_weights()
    if isinstance(big, keras.layers.LSTM):
      units = big.units
      gate_cols = np.concatenate([g * units + cols for g in range(4)])
      little.set_weights([weights[0][rows][:, gate_cols], weights[1][cols][:, gate_cols],
                          weights[2][gate_cols]])
    else:
      little.set_weights([weights[0][rows][:, cols], weights[1][cols]])
  return small, small_config


def tflm_ms_per_frame(tflite_bytes, frames, repeats):
  model = tflm_runner.TflmModel(tflite_bytes)
  (ms,) = tflm_runner.interleaved_ms_per_frame([model], frames, repeats)
  return ms, model.arena_used_bytes


def measure(name, tflite_bytes, sparse_block, frames, output_dir):
  path = os.path.join(output_dir, f"{name}.tflite")
  fileio.write_bytes_atomic(path, tflite_bytes)
  sparse = sparse_tflite.encode(tflite_bytes, block_size=sparse_block)
  assert sparse_tflite.decode(sparse) == tflite_bytes
  row = {"name": name, "tflite_bytes": len(tflite_bytes), "sparse_tflite_bytes": len(sparse),
         "sparse_block": sparse_block,
         "sparse_weight_bytes": sparse_tflite.sparse_size_report(sparse).totals()}
  for mode in FLAGS.memory_modes:
    r = vela.run_vela(path, os.path.join(output_dir, f"vela_{mode}"),
                      accelerator=FLAGS.accelerator,
                      system_config=None if mode == "default" else FLAGS.system_config,
                      memory_mode=None if mode == "default" else mode)
    row[f"vela_{mode}"] = {"memory_mode": r.memory_mode, "cycles_npu": r.cycles_npu,
                           "cycles_total": r.cycles_total,
                           "inference_ms": 1000.0 * r.inference_time_s,
                           "flash_bytes": r.flash_bytes,
                           "encoded_weight_bytes": r.encoded_weight_bytes,
                           "npu_ops": r.npu_ops, "cpu_ops": r.cpu_ops}
  row["tflm_ms_per_frame"], row["tflm_arena_bytes"] = tflm_ms_per_frame(
      tflite_bytes, frames, FLAGS.repeats)
  report = macs.count_macs(tflite_bytes, FLAGS.block_size)
  row["macs"] = {m: report.total(m) for m in ("dense", "block", "unit", "nonzero")}
  row["weights"] = {"total": report.total("dense"), "nonzero": report.total("nonzero")}
  print(f"measured {name}: {len(tflite_bytes)} B, sparse {len(sparse)} B", flush=True)
  return row


def _speedup(base, value):
  return base / value if value else float("inf")


def table(rows):
  base = rows[0]
  modes = FLAGS.memory_modes
  head = ["model", "sparsity (nonzero)", "tflite B", "sparse B"]
  for mode in modes:
    head += [f"NPU cyc [{mode}]", f"total cyc [{mode}]", f"ms [{mode}]", f"flash B [{mode}]",
             f"enc. W B [{mode}]"]
  head += ["TFLM ms/frame", "MACs dense", f"MACs 1x{FLAGS.block_size}", "MACs unit"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    density = r["weights"]["nonzero"] / r["weights"]["total"]
    cells = [r["name"], f"{1 - density:.2f}", str(r["tflite_bytes"]),
             f"{r['sparse_tflite_bytes']} ({_speedup(base['tflite_bytes'], r['sparse_tflite_bytes']):.2f}x)"]
    for mode in modes:
      v, b = r[f"vela_{mode}"], base[f"vela_{mode}"]
      cells += [f"{v['cycles_npu']} ({_speedup(b['cycles_npu'], v['cycles_npu']):.2f}x)",
                f"{v['cycles_total']} ({_speedup(b['cycles_total'], v['cycles_total']):.2f}x)",
                f"{v['inference_ms']:.3f}", str(v["flash_bytes"]),
                str(v["encoded_weight_bytes"])]
    cells.append(f"{r['tflm_ms_per_frame']:.3f} "
                 f"({_speedup(base['tflm_ms_per_frame'], r['tflm_ms_per_frame']):.2f}x)")
    base_macs = base["macs"]["dense"]
    for m in ("dense", "block", "unit"):
      cells.append(f"{r['macs'][m]} ({_speedup(base_macs, r['macs'][m]):.2f}x)")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def report(output_dir):
  import tf_keras as keras  # pylint: disable=g-import-not-at-top
  for s in FLAGS.structures:
    if s not in STRUCTURES:
      raise ValueError(f"--structures: '{s}' is not one of {', '.join(STRUCTURES)}")
  config = model_lib.ModelConfig.from_flags(FLAGS)
  data_dir = FLAGS.data_dir or demo_data.path()
  utterances = tflm_latency.feature_utterances(data_dir, config.feature, FLAGS.num_files,
                                               FLAGS.seconds_per_file)
  frames = np.concatenate(utterances)[:FLAGS.frames]
  keras.utils.set_random_seed(FLAGS.seed)
  base_model = model_lib.build_mask_model(config, streaming=True)
  base_weights = base_model.get_weights()
  print(f"model: LSTM {config.lstm_units} dense {config.dense_units}, "
        f"{model_lib.count_parameters(base_model)} parameters; {len(frames)} frames of "
        f"'{data_dir}'", flush=True)
  rows = [measure("dense", convert.convert_to_int8(base_model, utterances), 1, frames,
                  output_dir)]
  rng = np.random.default_rng(FLAGS.seed)
  for sparsity in (float(s) for s in FLAGS.sparsities):
    for structure in FLAGS.structures:
      base_model.set_weights(base_weights)
      if structure == "weight":
        apply_masks(base_model, weight_masks(base_model, sparsity, rng))
      elif structure == "block":
        apply_masks(base_model, block_masks(base_model, sparsity, rng, FLAGS.block_size))
      else:
        keep = unit_keep(base_model, sparsity, rng)
        apply_masks(base_model, unit_masks(base_model, keep))
      name = f"{structure}_{int(round(100 * sparsity))}"
      block = 1 if structure == "weight" else FLAGS.block_size
      rows.append(measure(name, convert.convert_to_int8(base_model, utterances), block, frames,
                          output_dir))
      if structure == "unit":
        small, small_config = shrunk_model(base_model, config, keep)
        row = measure(f"{name}_shrunk", convert.convert_to_int8(small, utterances), block,
                      frames, output_dir)
        row["lstm_units"], row["dense_units"] = (list(small_config.lstm_units),
                                                 list(small_config.dense_units))
        rows.append(row)
  base_model.set_weights(base_weights)
  print()
  print(f"{FLAGS.accelerator}; TFLM on this host, median of {FLAGS.repeats} x {len(frames)} "
        "frames; (Nx) = speedup / size ratio over dense")
  print(table(rows))
  if FLAGS.output_json:
    fileio.write_json_atomic(FLAGS.output_json, {"accelerator": FLAGS.accelerator,
                                                 "config": config.to_dict(), "rows": rows})
  return rows


def main(argv):
  del argv
  if FLAGS.output_dir:
    report(FLAGS.output_dir)
  else:
    with tempfile.TemporaryDirectory() as tmp:
      report(tmp)


if __name__ == "__main__":
  cli.run(main)
