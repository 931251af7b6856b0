"""The main job's training stages: rerun with more --steps, the quantization-aware fine-tuning
starts again from the new float model instead of keeping the one fine-tuned from the old."""
import json
import os
import subprocess
import sys
import textwrap

from tf_tinyse import demo_data
from tf_tinyse import model as model_lib

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
TINY_FLAGS = ["--lstm_units=8,8", "--dense_units=8", "--batch_size=4", "--segment_seconds=0.4",
              "--max_validation_files=2", "--validate_every=2", "--checkpoint_every=2",
              "--log_every=2", "--qat_steps=2", "--dropout=0.2"]

# The stages of `pipeline.main` that train (float, then QAT from it), run `runs` times in one
# process with the parsed flags; prints each run's report entries.
_STAGES_SCRIPT = textwrap.dedent("""
    import json, sys
    from absl import flags
    from tf_tinyse import data, pipeline, train
    from tf_tinyse import model as model_lib
    FLAGS = flags.FLAGS
    runs = int(sys.argv[1])
    FLAGS(["pipeline"] + sys.argv[2:])
    reports = []
    for _ in range(runs):
      ctx = pipeline.Context(FLAGS.output_dir, FLAGS.data_dir, model_lib.ModelConfig.from_flags(),
                             data.DataConfig.from_flags(), 0, 1)
      report = {}
      pipeline.stage_train(ctx, report)
      pipeline.stage_quantization_aware_training(ctx, report)
      report["float_now"] = train.init_record(ctx.model_dir,
                                              model_lib.load_trained(ctx.model_dir)[1])
      reports.append(report)
    print("REPORTS " + json.dumps(reports))
""")


def _run_stages(output_dir, steps, runs=1):
  proc = subprocess.run(
      [sys.executable, "-c", _STAGES_SCRIPT, str(runs), f"--output_dir={output_dir}",
       f"--data_dir={demo_data.path()}", f"--steps={steps}", *TINY_FLAGS],
      capture_output=True, text=True, env=ENV, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.split("REPORTS ", 1)[1]), proc.stderr


def test_raising_steps_restarts_the_quantization_aware_training_from_the_new_float_model(
    tmp_path):
  output_dir = tmp_path / "run"
  (first,), _ = _run_stages(output_dir, steps=2)
  assert first["qat"]["init_from"] == first["float_now"]
  assert first["qat"]["init_from"]["best_step"] == 2 and first["qat"]["restarted"] is None
  # The float model trained with dropout; the QAT fine-tune on the export grid, without.
  assert model_lib.load_config(output_dir / "model").dropout == 0.2
  assert model_lib.load_config(output_dir / "model_int8").dropout == 0.0

  again, stderr = _run_stages(output_dir, steps=6, runs=2)
  raised, same = again
  # Precondition (measured): the float model's best weights moved on from step 2.
  assert raised["train"]["resumed_from_step"] == 2
  assert raised["float_now"] != first["float_now"] and raised["float_now"]["best_step"] > 2
  # The stale QAT run was moved aside and fine-tuning started over from the new float weights.
  assert raised["qat"]["resumed_from_step"] == 0 and raised["qat"]["steps"] == 2
  assert raised["qat"]["init_from"] == raised["float_now"]
  stale = str(output_dir / "model_int8") + ".stale"
  assert raised["qat"]["restarted"]["stale_model_dir"] == stale
  with open(os.path.join(stale, "init_from.json")) as f:
    assert json.load(f) == first["qat"]["init_from"]
  with open(output_dir / "model_int8" / "init_from.json") as f:
    assert json.load(f) == raised["float_now"]
  assert "moved the stale run to" in stderr
  # Run once more unchanged: nothing is redone.
  assert same["qat"]["restarted"] is None and same["qat"]["resumed_from_step"] == 2
  assert same["qat"]["init_from"] == raised["float_now"]


def test_a_stages_cpu_time_counts_the_child_processes_it_waited_for():
  from tf_tinyse import pipeline  # pylint: disable=g-import-not-at-top
  before = pipeline._cpu_seconds()  # pylint: disable=protected-access
  subprocess.run([sys.executable, "-c", "import time\nstart = time.process_time()\n"
                  "while time.process_time() - start < 0.5: pass"], check=True, env=ENV)
  assert pipeline._cpu_seconds() - before >= 0.5  # pylint: disable=protected-access
