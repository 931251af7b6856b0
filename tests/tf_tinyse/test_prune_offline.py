"""Offline pruning: the grid and the candidates, the L1 percentile masks, unit pruning's output
layer, resuming a killed search, the pruned model_dir and fine-tuning with frozen masks."""
import csv
import itertools
import json
import os
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf

from keras_layers import pruning_groups
from tf_tinyse import data
from tf_tinyse import demo_data
from tf_tinyse import enhancer
from tf_tinyse import model as model_lib
from tf_tinyse import prune_offline
from tf_tinyse import sparsity
from tf_tinyse import train
from tf_tinyse.errors import UserError

TINY = model_lib.ModelConfig(lstm_units=(16, 16), dense_units=(16,))
TINY_DATA = data.DataConfig(batch_size=4, segment_seconds=0.4)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")


# ----------------------------------------------------------------------------------------
# Pure functions: no model


@pytest.mark.parametrize("target, levels", [
    (0.8, (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 950)),
    (0.9, (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 950)),
    (0.5, (0, 100, 200, 300, 400, 500, 600, 700)),
    (0.3, (0, 100, 200, 300, 400, 500)),
    (0.25, (0, 100, 200, 300, 400, 450)),
])
def test_levels_step_10_percent_up_to_the_cap(target, levels):
  assert prune_offline.sparsity_levels(target) == levels


def _weighted(sizes):
  """zeros_of for layers that remove `level` per-mille of their weights."""
  return lambda combo: sum(prune_offline.removed_count(n, s) for n, s in zip(sizes, combo))


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_candidates_are_the_minimal_combinations_that_meet_the_target(target):
  sizes = (1000, 400, 100, 50)
  total = sum(sizes)
  levels = prune_offline.sparsity_levels(target)
  zeros_of = _weighted(sizes)
  candidates, feasible = prune_offline.minimal_combinations([levels] * 4, zeros_of, total,
                                                            target)
  every = [c for c in itertools.product(levels, repeat=4) if zeros_of(c) >= target * total]
  assert feasible == len(every) and 0 < len(candidates) < feasible
  assert candidates == sorted(candidates)
  cap = min(round(target * 1000) + 200, 950)
  for combo in candidates:
    assert zeros_of(combo) / total >= target
    assert all(level <= cap and (level % 100 == 0 or level == cap) for level in combo)
    for i, level in enumerate(combo):  # lowering any one layer a step misses the target
      if level:
        lower = combo[:i] + (levels[levels.index(level) - 1],) + combo[i + 1:]
        assert zeros_of(lower) / total < target
  # Every combination that meets the target prunes at least as much as some candidate.
  for combo in every:
    assert any(all(a >= b for a, b in zip(combo, c)) for c in candidates)


def test_unreachable_target_has_no_candidates():
  candidates, feasible = prune_offline.minimal_combinations(
      [(0, 100, 200)] * 2, _weighted((10, 10)), 20, 0.5)
  assert candidates == [] and feasible == 0


def test_lowest_groups_mask_removes_exactly_the_lowest_l1_blocks():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(32, 12)).astype(np.float32)  # 4 blocks of 8 per output column
  scores = pruning_groups.dense_scores(tf.constant(kernel), "block", 8, norm="l1").numpy()
  l1 = np.abs(kernel).reshape(4, 8, 12).sum(axis=1)  # the blocks' L1 norms
  for level in (0, 100, 300, 700, 950):
    mask = prune_offline.lowest_groups_mask(scores, level)
    removed = round(level / 1000 * l1.size)
    assert int(np.sum(mask == 0)) == removed
    if removed:
      assert l1[mask == 0].max() < l1[mask == 1].min()


def test_percentile_masks_of_an_lstm_remove_the_lowest_l1_units():
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(6, 20)).astype(np.float32)
  recurrent = rng.normal(size=(5, 20)).astype(np.float32)
  recurrent[:, [2, 7, 12, 17]] *= 0.01  # unit 2's four gate columns are the weakest
  plan = prune_offline.PrunedLayer(
      name="lstm", is_lstm=True, searched=True, upstream=-1, kernel_shape=(6, 20),
      recurrent_shape=(5, 20), score_shapes=((5,),), weights=0,
      order=np.argsort(pruning_groups.lstm_scores(tf.constant(kernel), tf.constant(recurrent),
                                                  "unit", norm="l1").numpy(), kind="stable"))
  (k, r, b), units = prune_offline.layer_masks(plan, "unit", 8, 200, np.array([1, 0, 1, 1, 1, 1],
                                                                             np.float32))
  assert units[2] == 0 and units.sum() == 4  # round(0.2 · 5) = 1 unit: the weakest
  assert not k[:, [2, 7, 12, 17]].any() and not r[:, [2, 7, 12, 17]].any()
  assert not r[2].any() and not b[[2, 7, 12, 17]].any()  # its recurrent row and biases
  assert not k[1].any()  # the row of the removed upstream unit


# ----------------------------------------------------------------------------------------
# A tiny trained model


@pytest.fixture(scope="module")
def corpus():
  return data.discover_corpus(demo_data.path())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
  model_dir = str(tmp_path_factory.mktemp("trained"))
  train.train(TINY, TINY_DATA, corpus, model_dir, 8, validate_every=8, max_validation_files=1,
              progress=False)
  return model_dir


@pytest.fixture(scope="module")
def examples(corpus):
  examples = data.make_evaluation_set(corpus, "valid", seed=0, max_files=1)
  return examples, prune_offline.defined_metrics(examples)


def _search_setup(trained, examples, structure, target):
  evaluator = prune_offline.Evaluator(trained, structure, 8, *examples)
  levels = prune_offline.sparsity_levels(target)
  total = sum(p.weights for p in evaluator.plans)
  zeros_of = prune_offline.zero_counter(evaluator.plans, structure, 8, levels)
  candidates, _ = prune_offline.minimal_combinations(
      [levels] * len(evaluator.searched_names), zeros_of, total, target)
  return evaluator, candidates, lambda c: zeros_of(c) / total


def test_unit_pruning_leaves_the_output_units_and_counts_rows(trained, examples):
  evaluator, candidates, overall_of = _search_setup(trained, examples, "unit", 0.8)
  assert evaluator.searched_names == ["lstm_0", "lstm_1", "dense_0"]
  for combo in (candidates[0], candidates[-1], (950, 950, 950)):
    evaluator.apply(combo)
    masks = {layer.name: [m.numpy() for m in layer.masks()]
             for layer in sparsity.sparse_layers(evaluator.model)}
    kernel, bias = masks["mask"]
    dense_units = masks["dense_0"][1]  # dense_0's bias mask is its unit mask
    assert np.all(bias == 1) and np.all(kernel.any(axis=0))  # all 128 outputs stay
    np.testing.assert_array_equal(kernel, np.repeat(dense_units[:, None], 128, axis=1))
    # The overall sparsity the search counts is what sparsity.measure reports.
    assert sparsity.measure(evaluator.model)["pruned"] == pytest.approx(overall_of(combo))


def test_a_killed_search_resumes_without_scoring_twice(trained, examples, tmp_path):
  evaluator, candidates, overall_of = _search_setup(trained, examples, "unit", 0.8)
  candidates = candidates[:4]
  spec = (trained, "unit", 8, *examples)
  names = evaluator.searched_names
  scored = []
  score = evaluator.score

  def dies_on_the_third(combo):
    if len(scored) == 2:
      raise KeyboardInterrupt  # as a kill between candidates
    scored.append(combo)
    return score(combo)

  killed = tmp_path / "killed.csv"
  evaluator.score = dies_on_the_third
  with pytest.raises(KeyboardInterrupt):
    prune_offline.run_search(evaluator, spec, candidates, overall_of, str(killed),
                             progress=False)
  assert len(prune_offline.read_search_csv(str(killed), names)) == 2
  scored.clear()
  evaluator.score = lambda combo: scored.append(combo) or score(combo)
  rows, now = prune_offline.run_search(evaluator, spec, candidates, overall_of, str(killed),
                                       progress=False)
  assert now == 2 and scored == candidates[2:]  # only the two that were missing
  once = tmp_path / "once.csv"
  prune_offline.run_search(evaluator, spec, candidates, overall_of, str(once), progress=False)
  with open(killed) as f:
    killed_rows = list(csv.DictReader(f))
  assert [r["candidate"] for r in killed_rows] == ["0", "1", "2", "3"]
  assert killed.read_text() == once.read_text()
  assert prune_offline.choose(rows) == prune_offline.choose(
      prune_offline.read_search_csv(str(once), names))


def test_two_worker_processes_score_as_one(trained, examples, tmp_path, monkeypatch):
  evaluator, candidates, overall_of = _search_setup(trained, examples, "weight", 0.9)
  candidates = candidates[:4]  # the first scored here, the other three in the pool
  spec = (trained, "weight", 8, *examples)
  monkeypatch.setattr(prune_offline, "POOL_BREAK_EVEN_SECONDS", 0.0)
  prune_offline.run_search(evaluator, spec, candidates, overall_of, str(tmp_path / "pool.csv"),
                           workers=2, progress=False)
  prune_offline.run_search(evaluator, spec, candidates, overall_of, str(tmp_path / "one.csv"),
                           workers=1, progress=False)
  pool = prune_offline.read_search_csv(str(tmp_path / "pool.csv"), evaluator.searched_names)
  one = prune_offline.read_search_csv(str(tmp_path / "one.csv"), evaluator.searched_names)
  assert pool.keys() == one.keys() == set(candidates)
  for combo in candidates:
    for key in ("si_sdr", "pesq", "stoi", "q"):
      assert float(pool[combo][key]) == pytest.approx(float(one[combo][key]), abs=1e-4)


@pytest.fixture(scope="module")
def pruned(trained, corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("pruned") / "weight90")
  result = prune_offline.prune(trained, out, "weight", 8, 0.9, corpus, TINY_DATA,
                               max_validation_files=1, workers=1, progress=False)
  return out, result


def test_the_chosen_model_dir_loads_and_meets_the_target(pruned):
  out, result = pruned
  config, model = model_lib.load_trained(out)
  assert (config.pruning, config.sparsity_structure) == ("offline", "weight")
  assert sparsity.measure(model)["overall"] >= 0.9
  with open(os.path.join(out, "sparsity.json")) as f:
    assert json.load(f)["strategy"] == "offline"
  with open(os.path.join(out, train.BEST_INFO)) as f:
    info = json.load(f)
  with open(os.path.join(out, prune_offline.SEARCH_CSV)) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == result["candidates"] == info["candidates_scored"]
  best = max(rows, key=lambda r: float(r["q"]))
  assert info["q"] == pytest.approx(float(best["q"]))
  assert info["layer_sparsity"] == {n: float(best[f"s_{n}"])
                                    for n in ("lstm_0", "lstm_1", "dense_0", "mask")}
  enhanced = enhancer.Enhancer.from_model_dir(out)(np.zeros(8000, np.float32) + 0.01)
  assert enhanced.shape == (8000,) and np.isfinite(enhanced).all()


def test_finetuning_keeps_the_masks(pruned, corpus, tmp_path):
  out, _ = pruned
  tuned_dir = str(tmp_path / "weight90_finetuned")
  report = prune_offline.finetune(out, tuned_dir, 3, corpus, TINY_DATA, progress=False,
                                  validate_every=3, max_validation_files=1)
  _, before = model_lib.load_trained(out)
  config, after = model_lib.load_trained(tuned_dir)
  assert config.pruning == "offline" and report["masks_unchanged"]
  for name, mask in prune_offline.mask_values(before).items():
    np.testing.assert_array_equal(mask, prune_offline.mask_values(after)[name], err_msg=name)
  kernel = lambda m: m.get_layer("lstm_1").cell.kernel.numpy()  # noqa: E731
  assert not np.array_equal(kernel(before), kernel(after))  # it did train
  assert sparsity.measure(after)["overall"] >= 0.9
  assert os.path.isfile(os.path.join(tuned_dir, "sparsity.json"))
  assert os.path.isfile(os.path.join(tuned_dir, prune_offline.FINETUNE_REPORT))


def test_bad_input_gives_user_errors(trained, pruned, tmp_path):
  out, _ = pruned
  base = {"model_dir": trained, "output_dir": str(tmp_path / "o"), "data_dir": demo_data.path(),
          "sparsity_structure": "weight"}
  cases = [
      (dict(base, model_dir=None), "--model_dir is required"),
      (dict(base, output_dir=None), "--output_dir is required"),
      (dict(base, sparsity_structure=None), "--sparsity_structure is required"),
      (dict(base, model_dir=str(tmp_path)), "holds no config.json"),
      (dict(base, model_dir=out), "holds a pruned model"),
      (dict(base, output_dir=trained), "is --model_dir"),
  ]
  marked = not flags.FLAGS.is_parsed()
  if marked:
    flags.FLAGS.mark_as_parsed()  # main reads the flags; unparsed FLAGS refuse that
  try:
    for values, message in cases:
      with flagsaver.flagsaver(**values):
        with pytest.raises(UserError, match=message):
          prune_offline.main(["prune_offline"])
  finally:
    if marked:
      flags.FLAGS.unparse_flags()
  with pytest.raises(UserError, match="has no layer but the output layer"):
    model_dir = tmp_path / "no_hidden"
    model_lib.save_config(str(model_dir), model_lib.ModelConfig(lstm_units=(), dense_units=()))
    prune_offline.check_source(str(model_dir), "unit", str(tmp_path / "o"))


def test_another_search_in_the_same_output_dir_is_refused(trained, corpus, pruned):
  out, _ = pruned
  with pytest.raises(UserError, match="a search with other settings"):
    prune_offline.prune(trained, out, "weight", 8, 0.8, corpus, TINY_DATA,
                        max_validation_files=1, progress=False)


def test_cli_one_line_error_and_no_flag_clashes(tmp_path):
  command = [sys.executable, "-m", "tf_tinyse.prune_offline", f"--model_dir={tmp_path}",
             f"--output_dir={tmp_path / 'o'}", f"--data_dir={demo_data.path()}",
             "--sparsity_structure=unit"]
  imports = ("import tf_tinyse.pipeline, tf_tinyse.enhance, tf_tinyse.export, tf_tinyse.train, "
             "tf_tinyse.prune_offline, tf_tinyse.evaluate")
  reverse = ("import tf_tinyse.prune_offline, tf_tinyse.train, tf_tinyse.pipeline, "
             "tf_tinyse.enhance, tf_tinyse.export, tf_tinyse.evaluate")
  runs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
          for c in (command, [sys.executable, "-c", imports], [sys.executable, "-c", reverse])]
  results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in runs]
  rc, _, err = results[0]
  assert rc == 2 and err.strip().splitlines()[-1].startswith("error: model_dir")
  assert "Traceback" not in err
  for rc, _, err in results[1:]:
    assert rc == 0, err
