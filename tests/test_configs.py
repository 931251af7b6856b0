"""The shipped flagfiles in configs/: each one parses with the flags of the main job.

A typo in a flagfile (an unknown or renamed flag, a bad value) would otherwise surface only
when a user runs it. All configs are parsed in one child process (flags are process-global
and importing TensorFlow costs seconds).
"""
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")))

_PARSE_ALL = """
import json, sys
from absl import flags
from tf_tinyse import data, model, pipeline
FLAGS = flags.FLAGS
RECIPE_FLAGS = json.loads(sys.argv[1])
out = {}
for path in sys.argv[2:]:
  FLAGS.unparse_flags()
  FLAGS(["pipeline", "--flagfile=" + path])
  config = model.ModelConfig.from_flags()
  data_config = data.DataConfig.from_flags()
  out[path] = {"parameters": model.count_parameters(model.build_mask_model(config)),
               "lstm_units": list(config.lstm_units), "bands": config.feature.num_bands,
               "quantize": config.quantize, "batch_size": data_config.batch_size,
               "snr_db": [data_config.snr_db_min, data_config.snr_db_max],
               "steps": FLAGS.steps, "structure": config.sparsity_structure,
               "block_size": config.block_size, "pruning": config.pruning,
               "target": FLAGS.target_sparsity,
               "recipe": {name: FLAGS[name].value for name in RECIPE_FLAGS},
               "kernel_weights": sum(int(w.shape.num_elements())
                                     for w in model.build_mask_model(config).weights
                                     if w.name.split("/")[-1].startswith(("kernel:",
                                                                          "recurrent_kernel:")))}
print(json.dumps(out))
"""


# What this project's training recipe changed from the paper's (issue "Generalize"): the loss,
# the schedule's end, weight decay, the SNR distribution, the deployment mask floor and low cut,
# and augmentations.
RECIPE_FLAGS = ["complex_loss_weight", "si_sdr_loss_weight", "stoi_loss_weight", "weight_decay",
                "final_learning_rate_fraction", "learning_rate", "snr_distribution",
                "mask_floor", "augment_tonal_noise", "augment_clicks", "augment_spectral_shaping",
                "augment_speed", "augment_reverb", "augment_noise_mix", "augment_babble",
                "augment_rumble", "low_cut_hz", "level_distribution", "segment_seconds",
                "batch_size"]


@pytest.fixture(scope="module")
def parsed():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
  result = subprocess.run([sys.executable, "-c", _PARSE_ALL, json.dumps(RECIPE_FLAGS), *CONFIGS],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return {os.path.basename(k): v for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


def test_every_config_parses(parsed):
  assert set(parsed) == {os.path.basename(p) for p in CONFIGS}
  assert {"demo.cfg", "paper.cfg", "paper_int8.cfg"} <= set(parsed)
  for values in parsed.values():
    assert values["parameters"] > 0 and values["steps"] > 0
    assert values["snr_db"] == [-6.0, 9.0]  # the method's training SNR range


def test_paper_config_is_the_papers_model(parsed):
  paper = parsed["paper.cfg"]
  assert paper["lstm_units"] == [256, 256] and paper["bands"] == 128
  assert paper["parameters"] == pytest.approx(0.97e6, rel=0.01)
  assert not paper["quantize"] and parsed["paper_int8.cfg"]["quantize"]
  assert parsed["paper_int8.cfg"]["parameters"] == paper["parameters"]


def test_demo_config_is_smaller_than_the_paper(parsed):
  assert parsed["demo.cfg"]["parameters"] < parsed["paper.cfg"]["parameters"]


# Table 1 of the paper: parameters (M) of the online-pruned INT8 models.
TABLE_1 = {("weight", 1): 0.50, ("weight", 2): 0.29, ("weight", 3): 0.09,
           ("block", 1): 0.58, ("block", 2): 0.25, ("block", 3): 0.09}


@pytest.mark.parametrize("structure, row", sorted(TABLE_1))
def test_table_1_configs_prune_the_paper_model_to_its_size(parsed, structure, row):
  values = parsed[f"paper_online_{structure}_{row}.cfg"]
  assert values["structure"] == structure and values["pruning"] == "online"
  assert values["quantize"] and values["lstm_units"] == [256, 256]
  assert values["block_size"] == 8
  other = values["parameters"] - values["kernel_weights"]  # biases and QEQ, never pruned
  kept = values["kernel_weights"] * (1 - values["target"]) + other
  assert kept / 1e6 == pytest.approx(TABLE_1[structure, row], abs=0.005)


def test_paper_recipe_config_is_the_papers_model_trained_with_the_demo_recipe(parsed):
  recipe = parsed["paper_recipe.cfg"]
  for key in ("lstm_units", "bands", "parameters", "snr_db"):
    assert recipe[key] == parsed["paper.cfg"][key]
  assert recipe["recipe"] == parsed["demo.cfg"]["recipe"]
  assert recipe["recipe"] != parsed["paper.cfg"]["recipe"]  # paper.cfg keeps the paper's
  assert parsed["paper.cfg"]["recipe"]["complex_loss_weight"] == 0.9
