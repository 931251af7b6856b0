"""Export of pruned model dirs: the sparse file beside the dense one, the shrunk unit-pruned
model, and the card's `sparsity` section (bytes, MACs, Vela and TFLM speed against a dense int8
reference, built from the unmasked weights or given with --reference_tflite)."""
import dataclasses
import json
import os

import pytest

from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import export
from tf_tinyse import model as model_lib
from tf_tinyse import sparsity
from tf_tinyse import train
from tflm_export import model_card
from tflm_export import sparse_tflite
from tflm_export import tflite_graph

TINY_QAT = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(16,), quantize=True)
TINY_DATA = data.DataConfig(batch_size=4, segment_seconds=0.4)
SCHEDULE = sparsity.Schedule(target=0.5, begin_step=0, end_step=4)
FAST = dict(representative_files=1, validation_files=1, accelerator="ethos-u55-64",
            timing_frames=20, timing_repeats=3)


@pytest.fixture(scope="module")
def corpus():
  return data.discover_corpus(demo_data.path())


def _set_thresholds(model, fraction):
  """Bisects each sparse layer's learned threshold until its masks remove `fraction`."""
  for layer in sparsity.sparse_layers(model):
    threshold = getattr(layer, "pruning_threshold", None)
    if threshold is None:  # The unit-pruned model's output layer.
      continue
    low, high = 0.0, 2.0
    for _ in range(24):
      mid = (low + high) / 2
      threshold.assign(mid)
      pruned = sparsity.measure(model)["layers"][layer.name]["pruned"]
      low, high = (mid, high) if pruned < fraction else (low, mid)
    threshold.assign(high)


def _pruned_dir(tmp_path_factory, corpus, structure):
  """A QAT model of `structure` trained a few steps, its thresholds then set to prune about
  half of every sparse layer (a few steps do not reach the target), saved as best/."""
  config = dataclasses.replace(TINY_QAT, sparsity_structure=structure)
  model_dir = str(tmp_path_factory.mktemp(f"{structure}_model"))
  train.train(config, TINY_DATA, corpus, model_dir, steps=4, checkpoint_every=4,
              validate_every=4, max_validation_files=1, log_every=4, progress=False,
              learning_rate=5e-3, sparsity_schedule=SCHEDULE)
  _, model = model_lib.load_trained(model_dir)
  _set_thresholds(model, 0.5)
  os.makedirs(os.path.join(model_dir, "best"), exist_ok=True)
  model.save_weights(os.path.join(model_dir, model_lib.BEST_WEIGHTS))
  sparsity.write_report(model_dir, model, config, SCHEDULE, step=4)
  return model_dir


@pytest.fixture(scope="module")
def block_dir(tmp_path_factory, corpus):
  return _pruned_dir(tmp_path_factory, corpus, "block")


@pytest.fixture(scope="module")
def unit_dir(tmp_path_factory, corpus):
  return _pruned_dir(tmp_path_factory, corpus, "unit")


@pytest.fixture(scope="module")
def block_export(tmp_path_factory, block_dir, corpus):
  output = str(tmp_path_factory.mktemp("block_export") / "model.tflite")
  return output, export.export_model_dir(block_dir, output, corpus, TINY_DATA, **FAST)


@pytest.fixture(scope="module")
def unit_export(tmp_path_factory, unit_dir, corpus):
  output = str(tmp_path_factory.mktemp("unit_export") / "model.tflite")
  return output, export.export_model_dir(unit_dir, output, corpus, TINY_DATA, **FAST)


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def _check_speedups(s):
  """Each speedup is the ratio of the reference's and the model's reported numbers."""
  speed, ref = s["speed"], s["speed"]["reference"]
  up, m = speed["speedup_over_reference"], speed["macs_per_frame"]
  base = ref["macs_per_frame"]["dense"]
  for kind in ("dense", "block", "unit"):
    assert up[f"macs_{kind}"] == pytest.approx(base / m[kind])
  for key in ("cycles_npu", "cycles_total"):
    assert up[f"vela_{key}"] == pytest.approx(ref["vela"][key] / speed["vela"][key])
  assert up["vela_inference_time"] == pytest.approx(
      ref["vela"]["inference_ms_per_frame"] / speed["vela"]["inference_ms_per_frame"])
  assert up["tflm_host"] == pytest.approx(
      ref["tflm_host_ms_per_frame"] / speed["tflm_host_ms_per_frame"])
  assert speed["tflm_timing"]["interleaved_with_reference"]


def test_block_pruned_export_writes_a_sparse_file_that_decodes_to_the_dense_one(block_export):
  output, card = block_export
  folder = os.path.dirname(output)
  with open(os.path.join(folder, export.CARD_FILE)) as f:
    assert json.load(f)["sparsity"] == card["sparsity"]
  s = card["sparsity"]
  sparse = s["bytes"]["sparse_tflite"]
  assert sparse["path"] == "model_sparse.tflite" and sparse["block_size"] == 8
  sparse_bytes = _read(os.path.join(folder, sparse["path"]))
  assert sparse_tflite.decode(sparse_bytes) == _read(output)
  # The bytes add up: the encoded tensors' values, indices and metadata plus the rest.
  assert sparse["encoded_tensors"] > 0
  assert sparse["file_bytes"] == len(sparse_bytes) == (
      sparse["values_bytes"] + sparse["index_bytes"] + sparse["metadata_bytes"]
      + sparse["other_bytes"])
  assert sparse["index_bytes"] == sparse["segments_bytes"] + sparse["indices_bytes"]
  assert sparse["file_bytes"] < s["bytes"]["tflite"] == os.path.getsize(output)
  # What encoding saved is what the matrices lost, up to the flatbuffer's alignment padding
  # and vtable sharing (measured 33 bytes a tensor).
  saved = s["bytes"]["tflite"] - sparse["file_bytes"]
  lost = sparse["dense_weight_bytes"] - sparse["values_bytes"] - sparse["index_bytes"] \
      - sparse["metadata_bytes"]
  assert abs(saved - lost) <= 64 * sparse["encoded_tensors"]
  assert s["bytes"]["vela_flash"] == card["vela"]["flash_bytes"]
  assert s["bytes"]["paper_estimate"] == s["nonzero_kernel_weights"]
  assert set(s["runtimes"]) == {"model.tflite", "model_sparse.tflite"}


def test_block_pruned_card_reports_sparsity_and_speed_over_the_unmasked_model(block_export,
                                                                              block_dir):
  _, card = block_export
  s = card["sparsity"]
  with open(os.path.join(block_dir, sparsity.SPARSITY_FILE)) as f:
    report = json.load(f)
  assert (s["structure"], s["strategy"], s["block_size"]) == ("block", "online", 8)
  assert s["target"] == 0.5
  assert s["achieved"] == pytest.approx(report["overall"]) and 0.3 < s["achieved"] < 0.7
  assert set(s["layers"]) == set(report["layers"])
  assert s["nonzero_parameters"] == card["nonzero_parameters"]
  m = s["speed"]["macs_per_frame"]
  assert m["nonzero"] <= m["block"] < m["dense"]
  ref = s["speed"]["reference"]
  assert ref["description"] == model_card.UNMASKED_REFERENCE and ref["path"] is None
  # The unmasked model is the dense model of the same size: every MAC is a weight.
  assert ref["macs_per_frame"]["dense"] == m["dense"]
  assert ref["macs_per_frame"]["nonzero"] > m["nonzero"]
  _check_speedups(s)
  text = export.format_card(card)
  assert "sparsity: block pruning (online)" in text and "model_sparse.tflite" in text


def test_unit_pruned_export_is_shrunk_and_matches_keras(unit_export, unit_dir):
  output, card = unit_export
  config = model_lib.load_config(unit_dir)
  # The export's TFLM vs Keras QAT check passed (the export would have raised otherwise).
  assert card["validation"]["mask_p99_abs_error_lsb"] <= card["validation"]["tolerance_lsb"]
  graph = tflite_graph.read_graph(_read(output))
  lstm_units = []
  for op in graph.operators:
    if op.name == "UNIDIRECTIONAL_SEQUENCE_LSTM":
      lstm_units.append(op.inputs[5].shape[0])  # recurrent-to-input weights [units, units]
  assert len(lstm_units) == 2
  assert sum(lstm_units) < sum(config.lstm_units)
  s = card["sparsity"]
  assert s["structure"] == "unit" and s["bytes"]["sparse_tflite"] is None
  assert not os.path.exists(export.sparse_path(output))
  m, ref = s["speed"]["macs_per_frame"], s["speed"]["reference"]
  assert m["unit"] == m["dense"] < ref["macs_per_frame"]["dense"]
  assert s["speed"]["speedup_over_reference"]["macs_unit"] > 1
  _check_speedups(s)


def test_export_with_a_reference_tflite(unit_export, block_dir, corpus, tmp_path):
  """The dense reference given as a file (here the unit-pruned model's, not the same
  architecture, is refused; a dense export of the block model's size is taken)."""
  dense_dir = str(tmp_path / "dense")
  config = model_lib.load_config(block_dir)
  _, pruned = model_lib.load_trained(block_dir)
  dense = model_lib.build_mask_model(config.dense())
  model_lib.copy_weights(pruned, dense)
  model_lib.save_config(dense_dir, config.dense())
  os.makedirs(os.path.join(dense_dir, "best"))
  dense.save_weights(os.path.join(dense_dir, model_lib.BEST_WEIGHTS))
  reference = str(tmp_path / "dense_export" / "model.tflite")
  dense_card = export.export_model_dir(dense_dir, reference, corpus, TINY_DATA, **FAST)
  assert dense_card["sparsity"] is None
  output = tmp_path / "export" / "model.tflite"
  card = export.export_model_dir(block_dir, output, corpus, TINY_DATA,
                                 reference_tflite=reference, **FAST)
  ref = card["sparsity"]["speed"]["reference"]
  assert ref["description"] == "--reference_tflite"
  assert ref["path"] == os.path.join("..", "dense_export", "model.tflite")
  assert ref["tflite_bytes"] == os.path.getsize(reference)
  assert ref["vela"]["cycles_total"] == dense_card["vela"]["cycles_total"]
  _check_speedups(card["sparsity"])
  with pytest.raises(export.UserError, match="same architecture"):
    export.export_model_dir(block_dir, tmp_path / "other" / "model.tflite", corpus, TINY_DATA,
                            reference_tflite=unit_export[0], **FAST)
  assert not os.path.exists(tmp_path / "other")


def test_tfmot_model_has_no_mask_to_lift():
  """Its zeros are in the weights: no built reference, the card's speedups need a file."""
  from tflm_export import export_model  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(TINY_QAT, sparsity_structure="weight", pruning="tfmot")
  assert export_model.unmasked_model(model_lib.build_mask_model(config), config) is None
  online = dataclasses.replace(config, pruning="online")
  model, dense_config = export_model.unmasked_model(model_lib.build_mask_model(online), online)
  assert dense_config.sparsity_structure is None
  assert not sparsity.sparse_layers(model)


def test_every_sparsity_field_the_readme_names_is_in_a_real_card(block_export):
  from tests.tf_tinyse import readme_card_fields  # pylint: disable=g-import-not-at-top
  _, card = block_export
  assert readme_card_fields.missing_from(card, {"sparsity"}) == []
