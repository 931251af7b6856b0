"""The plot_masks CLI: one panel per LSTM gate matrix (input and recurrent) and Dense matrix, in
the exported [out, in] orientation, zeros of the forward weights drawn as pruned, each panel's
sparsity in its title; a valid PNG written; one-line errors for a bad model_dir or extension."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tf_tinyse  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from keras_layers import pruning_groups
from tf_tinyse import fileio
from tf_tinyse import model as model_lib
from tf_tinyse import plot_masks
from tf_tinyse import sparsity
from tf_tinyse.errors import UserError

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
SMALL = dict(lstm_units=(32, 32), dense_units=(32,))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pruned(structure, quantile=0.5, **kwargs):
  """A small online-pruned model whose thresholds prune about `quantile` of each layer's groups."""
  config = model_lib.ModelConfig(**SMALL, sparsity_structure=structure, **kwargs)
  model = model_lib.build_mask_model(config)
  for layer in sparsity.sparse_layers(model):
    if hasattr(layer, "cell"):
      scores = pruning_groups.lstm_scores(layer.cell.kernel, layer.cell.recurrent_kernel,
                                          structure, config.block_size)
    elif layer.structure is not None:  # the output layer keeps its units
      scores = pruning_groups.dense_scores(layer.kernel, structure, config.block_size)
    else:
      continue
    scores = np.concatenate([np.ravel(s) for s in (
        scores if isinstance(scores, tuple) else (scores,))])
    tau = float(np.quantile(scores, quantile))
    layer.pruning_threshold.assign(tau / 4.0)  # θ = τ / THRESHOLD_SCALE
  return config, model


def _save(model_dir, config, model):
  model_lib.save_config(model_dir, config)
  with fileio.atomic_output(os.path.join(model_dir, model_lib.BEST_WEIGHTS)) as path:
    model.save_weights(path)


def _plot(args):
  proc = subprocess.run([sys.executable, "-m", "tf_tinyse.plot_masks", *args],
                        capture_output=True, text=True, env=ENV, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr


def _by_label(matrices, layer):
  return {label: m for name, label, m in matrices if name == layer}


def test_default_layout_has_one_panel_per_matrix_with_its_sparsity_in_the_title():
  config = model_lib.ModelConfig()  # 2 LSTMs of 256, one Dense of 128, the mask layer
  model = model_lib.build_mask_model(config)
  matrices = plot_masks.weight_matrices(model)
  fig = plot_masks.build_figure(config, model)
  assert len(fig.axes) == len(matrices) == 2 * 8 + 2
  shapes = {(name, label): m.shape for name, label, m in matrices}
  assert shapes[("lstm_0", "W_i input")] == (256, 128)  # [out, in]
  assert shapes[("lstm_0", "U_o recurrent")] == (256, 256)
  assert shapes[("dense_0", "kernel")] == (128, 256)
  assert shapes[("mask", "kernel")] == (128, 128)
  for ax, (name, label, matrix) in zip(fig.axes, matrices):
    title = ax.get_title()
    assert title.startswith(f"{name} {label}")
    assert plot_masks.sparsity_text(np.mean(matrix == 0)) in title
  assert "dense model" in fig._suptitle.get_text()  # pylint: disable=protected-access
  assert "overall sparsity 0.0 %" in fig._suptitle.get_text()  # pylint: disable=protected-access


def test_unit_pruning_removes_the_same_rows_in_all_four_gates_and_the_reading_columns():
  config, model = _pruned("unit", quantile=0.4)
  matrices = plot_masks.weight_matrices(model)
  pruned = {}
  for layer in ("lstm_0", "lstm_1"):
    gates = _by_label(matrices, layer)
    rows = [np.all(gates[f"W_{g} input"] == 0, axis=1) for g in plot_masks.GATES]
    assert 0 < rows[0].sum() < 32
    for other in rows[1:]:
      np.testing.assert_array_equal(other, rows[0])  # the four gates' columns of one unit
    for g in plot_masks.GATES:  # recurrent: the unit's row (its gate) and column (reads h[k])
      recurrent = gates[f"U_{g} recurrent"]
      np.testing.assert_array_equal(np.all(recurrent == 0, axis=1), rows[0])
      np.testing.assert_array_equal(np.all(recurrent == 0, axis=0), rows[0])
    pruned[layer] = rows[0]
  # The next layer's input columns that read a pruned unit are gone too.
  lstm_1_input = _by_label(matrices, "lstm_1")["W_i input"]
  assert np.all(lstm_1_input[:, pruned["lstm_0"]] == 0)
  fig = plot_masks.build_figure(config, model, name="unit")
  report = sparsity.measure(model)
  zeros = sum(int(np.sum(m == 0)) for _, _, m in matrices)
  assert zeros == report["kernel_weights"] - report["nonzero_weights"]
  title = fig._suptitle.get_text()  # pylint: disable=protected-access
  assert "unit pruning, online" in title
  assert f"overall sparsity {100 * report['overall']:.1f} %" in title


def test_block_pruning_zeros_come_as_1x8_strips_along_rows():
  _, model = _pruned("block")
  for name, label, matrix in plot_masks.weight_matrices(model):
    out_size, in_size = matrix.shape
    strips = (matrix == 0).reshape(out_size, in_size // 8, 8)
    # Every aligned 1×8 strip of a row is all kept or all pruned.
    assert np.all(strips.all(axis=2) == strips.any(axis=2)), (name, label)
  assert sparsity.measure(model)["overall"] > 0.3


def test_offline_mask_of_one_keras_column_is_one_row_of_one_gate():
  config = model_lib.ModelConfig(**SMALL, sparsity_structure="weight", pruning="offline")
  model = model_lib.build_mask_model(config)
  cell = model.get_layer("lstm_0").cell
  mask = np.ones(cell.kernel_mask.shape, np.float32)
  mask[:, 32 + 3] = 0  # Keras kernel [in, 4u]: gate f (second block of u), unit 3
  cell.kernel_mask.assign(mask)
  gates = _by_label(plot_masks.weight_matrices(model), "lstm_0")
  assert np.all(gates["W_f input"][3] == 0)
  assert np.count_nonzero(gates["W_f input"] == 0) == 128
  for g in ("i", "c", "o"):
    assert np.count_nonzero(gates[f"W_{g} input"]) == 32 * 128


def test_cli_writes_a_png_and_bad_model_dir_is_one_line(tmp_path):
  model_dir = str(tmp_path / "unit")
  _save(model_dir, *_pruned("unit", quantile=0.4))
  output = tmp_path / "figs" / "masks.png"
  rc, stdout, stderr = _plot([f"--model_dir={model_dir}", f"--output={output}"])
  assert rc == 0, stderr
  assert "18 matrices" in stdout
  data = output.read_bytes()
  assert data.startswith(PNG_MAGIC)
  from matplotlib import image  # pylint: disable=g-import-not-at-top
  pixels = image.imread(str(output))
  assert pixels.ndim == 3 and pixels.shape[0] > 500 and pixels.shape[1] > 500
  assert pixels.min() == 0.0 and pixels.max() == 1.0  # black (pruned) and white (kept)
  assert [p.name for p in output.parent.iterdir()] == ["masks.png"]  # no temporary left

  rc, _, stderr = _plot([f"--model_dir={tmp_path / 'absent'}", f"--output={tmp_path / 'x.png'}"])
  assert rc == 2
  assert stderr.strip().count("\n") == 0 and stderr.startswith("error: ")
  assert "absent" in stderr and "config.json" in stderr
  assert not (tmp_path / "x.png").exists()


def test_bad_extension_and_missing_weights_are_user_errors(tmp_path):
  with pytest.raises(UserError, match=r"must end in \.png"):
    plot_masks.plot_model_dir(str(tmp_path), str(tmp_path / "masks.jpg"))
  no_weights = str(tmp_path / "no_weights")
  model_lib.save_config(no_weights, model_lib.ModelConfig(**SMALL))
  with pytest.raises(UserError, match="no trained weights"):
    plot_masks.plot_model_dir(no_weights, str(tmp_path / "masks.png"))
  assert not (tmp_path / "masks.png").exists()


def test_dense_model_dir_plots_all_kept(tmp_path):
  config = model_lib.ModelConfig(**SMALL)
  model = model_lib.build_mask_model(config)
  model_dir = str(tmp_path / "dense")
  _save(model_dir, config, model)
  output = tmp_path / "dense.svg"
  assert plot_masks.plot_model_dir(model_dir, str(output)) == 18
  assert output.read_bytes().lstrip().startswith(b"<?xml")
