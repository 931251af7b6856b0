"""Plot CLI: the kept/pruned pattern of every weight matrix of a model (the paper's Figs. 3–6).

    python -m tf_tinyse.plot_masks --model_dir=PRUNED --output=masks.png

One panel per matrix, white = kept weight, black = pruned (zero), each in the exported int8
layout `[out, in]`: rows are outputs, columns are inputs (the direction the accelerator
multiplies-accumulates along), so a 1×8 block is a horizontal strip of 8 weights along a row,
and a pruned unit is a black row (its outputs) in all four gates plus, in the recurrent matrices
and the next layer, a black column (the inputs that read it). An LSTM gives 8 panels: the input
matrices W_i, W_f, W_c, W_o (`[units, in]`) and the recurrent ones (`[units, units]`), gates in
the Keras order i, f, c, o; a Dense layer gives one (`[out, in]`). Each panel's title carries its
sparsity (fraction of zeros), the figure title the structure, the strategy and the overall
sparsity of `tf_tinyse.sparsity.measure`.

The pattern is read from the weights as the forward pass uses them (`model.forward_weights`), a
weight being pruned when it is 0 there, so online (learned thresholds), offline (fixed masks),
tfmot (stripped) and dense model dirs all plot alike; for a quantization-aware model a weight
that rounds to 0 on the int8 grid counts as zero too, as in `measure`'s `overall`.
"""
import os

from absl import flags
import matplotlib

matplotlib.use("Agg")  # before anything draws: no display needed, the figure goes to a file
from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from tf_tinyse import cli  # pylint: disable=g-import-not-at-top
from tf_tinyse import fileio  # pylint: disable=g-import-not-at-top
from tf_tinyse import model as model_lib  # pylint: disable=g-import-not-at-top
from tf_tinyse import sparsity  # pylint: disable=g-import-not-at-top
from tf_tinyse.errors import UserError  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

# tf_tinyse.export and tf_tinyse.enhance define --output as well; allow_override lets the
# modules live in one process (tests, the pipeline) with the same flag name.
flags.DEFINE_string("output", None, "Output file: for plot_masks, the figure to write (.png, "
                    ".pdf or .svg).", allow_override=True)

FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
GATES = ("i", "f", "c", "o")  # the Keras LSTM's gate order along the 4·units axis
COLUMNS = 4  # panels per row: the four gates of one LSTM matrix side by side
DPI = 100
CAPTION = ("white = kept weight, black = pruned (zero). Each panel is one matrix in the "
           "exported [out, in] layout: rows = outputs, columns = inputs (the MAC direction),\n"
           "so a 1×8 block is a horizontal strip of 8 weights along a row. LSTM: input (W) and "
           "recurrent (U) matrices of the gates i, f, c, o.")


def _is_lstm(layer):
  return hasattr(layer, "cell")


def _has_kernel(layer):
  return hasattr(layer, "kernel") or hasattr(getattr(layer, "cell", None), "kernel")


def weight_matrices(model):
  """[(layer name, label, matrix [out, in])] of every LSTM and Dense matrix, in model order.

  An LSTM gives 8: `W_g input` (kernel [in, 4u] → gate g's [u, in]) for g = i, f, c, o, then
  `U_g recurrent` ([u, 4u] → [u, u]); a Dense layer one, `kernel` ([in, out] → [out, in]). The
  matrices are the forward weights: zero where pruned.
  """
  matrices = []
  for layer in model.layers:
    if not _has_kernel(layer):
      continue  # QEQ, the input layer
    weights = [np.asarray(w) for w in model_lib.forward_weights(layer)]
    if not _is_lstm(layer):
      matrices.append((layer.name, "kernel", weights[0].T))
      continue
    kernel, recurrent = weights[0], weights[1]
    units = recurrent.shape[0]
    for prefix, kind, matrix in (("W", "input", kernel), ("U", "recurrent", recurrent)):
      for g, gate in enumerate(GATES):
        matrices.append((layer.name, f"{prefix}_{gate} {kind}",
                         matrix[:, g * units:(g + 1) * units].T))
  return matrices


def sparsity_text(fraction):
  """How a panel title writes a matrix's sparsity (fraction of zeros)."""
  return f"{100.0 * fraction:.1f} % zero"


def _structure_text(config):
  if config.sparsity_structure is None:
    return "dense model (not pruned)"
  if config.sparsity_structure == "block":
    return f"block 1×{config.block_size} pruning, {config.pruning}"
  return f"{config.sparsity_structure} pruning, {config.pruning}"


def figure_title(config, report, name=None):
  """The figure's title: model, structure, strategy and overall sparsity."""
  kept = report["nonzero_weights"]
  total = report["kernel_weights"]
  prefix = f"{name}: " if name else ""
  return (f"{prefix}{_structure_text(config)} — overall sparsity {100.0 * report['overall']:.1f} "
          f"% ({kept:,} of {total:,} kernel weights kept)")


def _layout(model):
  """[(row, column)] of each matrix of `weight_matrices`: an LSTM's input and recurrent
  matrices on two rows of four gates, the Dense layers packed four to a row after them."""
  cells, row, column = [], 0, 0
  for layer in model.layers:
    if not _has_kernel(layer):
      continue
    if _is_lstm(layer):
      if column:
        row, column = row + 1, 0
      cells += [(row + r, c) for r in range(2) for c in range(COLUMNS)]
      row += 2
      continue
    cells.append((row, column))
    column += 1
    if column == COLUMNS:
      row, column = row + 1, 0
  rows = row + (1 if column else 0)
  return cells, rows


def build_figure(config, model, name=None):
  """The matplotlib Figure (Agg, not pyplot's) of `model`'s kept/pruned patterns: one axes per
  matrix of `weight_matrices`, in that order, with the sparsity in each title."""
  matrices = weight_matrices(model)
  cells, rows = _layout(model)
  report = sparsity.measure(model)
  # One scale for every panel (pixels per weight, axes placed in inches), so that sizes compare
  # across panels and every weight is a square: the largest matrix spans about 512 pixels, at
  # least 2 a weight so that single weights show.
  pixels = min(16, max(2, 512 // max(max(m.shape) for _, _, m in matrices)))
  inches = pixels / DPI  # per weight
  title_h, label_h, label_w = 0.55, 0.35, 0.45  # room for a panel's title and axis labels
  top, bottom, margin = 0.8, 0.7, 0.2  # the figure title; the caption; left and right
  column_w = label_w + max(2.6, max(m.shape[1] for _, _, m in matrices) * inches) + 0.3
  row_h = [title_h + label_h + max(m.shape[0] for (_, _, m), (r, _) in zip(matrices, cells)
                                   if r == row) * inches for row in range(rows)]
  width = 2 * margin + COLUMNS * column_w
  height = top + sum(row_h) + bottom
  fig = mpl_figure.Figure(figsize=(width, height), dpi=DPI, facecolor="white")
  for (layer, label, matrix), (row, column) in zip(matrices, cells):
    out_size, in_size = matrix.shape
    left = margin + column * column_w + label_w
    upper = height - top - sum(row_h[:row]) - title_h  # inches from the bottom
    ax = fig.add_axes([left / width, (upper - out_size * inches) / height,
                       in_size * inches / width, out_size * inches / height])
    # 1 = kept (white), 0 = pruned (black); "nearest" keeps every weight a sharp square.
    ax.imshow(matrix != 0, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              aspect="auto")
    ax.set_title(f"{layer} {label} [{out_size}×{in_size}]\n"
                 f"{sparsity_text(float(np.mean(matrix == 0)))}", fontsize=9)
    ax.set_xlabel(f"inputs ({in_size})", fontsize=8, labelpad=2)
    ax.set_ylabel(f"outputs ({out_size})", fontsize=8, labelpad=2)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(figure_title(config, report, name), fontsize=13, y=1.0 - 0.25 / height,
               va="top")
  fig.text(0.5, 0.15 / height, CAPTION, ha="center", va="bottom", fontsize=9)
  return fig


def output_format(output):
  ext = os.path.splitext(output)[1].lower()
  if ext not in FORMATS:
    raise UserError(f"--output '{output}' must end in {', '.join(FORMATS)} (the figure's "
                    f"format), not '{ext or 'no extension'}'")
  return FORMATS[ext]


def plot_model_dir(model_dir, output):
  """Loads `model_dir`'s trained model and writes its figure to `output` (atomically).

  Returns the number of matrices drawn. Raises UserError for a bad output extension or
  model_dir.
  """
  fmt = output_format(output)  # before the model loads: a typo fails at once
  config, model = model_lib.load_trained(model_dir)
  name = os.path.basename(os.path.normpath(model_dir))
  fig = build_figure(config, model, name=name)
  with fileio.atomic_output(output) as tmp:
    fig.savefig(tmp, format=fmt, dpi=DPI, facecolor="white")
  return len(fig.axes)


def main(argv):
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}: all options are --flags")
  if not FLAGS.model_dir:
    raise UserError("--model_dir is required: the folder of a training run")
  if not FLAGS.output:
    raise UserError("--output is required: the figure to write, e.g. --output=masks.png")
  panels = plot_model_dir(FLAGS.model_dir, FLAGS.output)
  print(f"wrote {FLAGS.output} ({panels} matrices)")


if __name__ == "__main__":
  cli.run(main)
