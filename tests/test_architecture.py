"""What docs/ARCHITECTURE.md says about the code holds: where the absl FLAGS are read."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CLI modules: their mains (and the pipeline's stages) read the flags they define.
CLI_MODULES = {"train", "evaluate", "enhance", "export", "pipeline", "prune_offline",
               "plot_masks", "compare", "reference_corpus"}
# Functions outside the CLIs that may read flags: config constructors and the console's
# verbosity (read before flags are parsed, from argv, and after).
ALLOWED_FUNCTIONS = {"from_flags", "check_sparsity_flags", "_flag_verbose"}


def _flag_reads(path):
  """(function, line) of every `FLAGS.<name>` read in `path`."""
  tree = ast.parse(open(path).read(), path)
  reads = []

  def visit(node, function):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      function = node.name
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id == "FLAGS"):
      reads.append((function, node.lineno))
    for child in ast.iter_child_nodes(node):
      visit(child, function)

  visit(tree, None)
  return reads


def test_only_clis_config_constructors_and_the_console_read_flags():
  offenders = []
  for package in ("tf_tinyse", "keras_layers", "tflm_export"):
    for path in sorted(glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True)):
      module = os.path.splitext(os.path.relpath(path, os.path.join(ROOT, package)))[0]
      if package == "tf_tinyse" and module in CLI_MODULES:
        continue
      offenders += [f"{package}/{module}.py:{line} in {function}"
                    for function, line in _flag_reads(path)
                    if function not in ALLOWED_FUNCTIONS]
  assert not offenders, offenders


def test_the_documented_cli_modules_exist_and_are_named_in_the_architecture():
  text = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read()
  for module in CLI_MODULES:
    assert os.path.isfile(os.path.join(ROOT, "tf_tinyse", module + ".py")), module
    assert f"`{module}`" in text, module
