"""The packages whose numerics the tests check are pinned, and the pins are what is installed.

The export gates (LSB agreement), TFLM's kernel numerics and the arena parsing were measured
with one tflite-micro nightly and one Vela release; an unpinned nightly would change them
under a user without any change here.
"""
import importlib.metadata
import os
import re

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMERICS = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tflite-micro",
            "ethos-u-vela", "pesq", "pystoi", "pyloudnorm", "fast-bss-eval",
            "pyroomacoustics")


def _requirements():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  pins = {}
  for requirement in project["dependencies"]:
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement.strip())
    pins[m.group(1).lower()] = m.group(2)
  return pins


@pytest.mark.parametrize("package", NUMERICS)
def test_numerics_packages_are_pinned_to_the_installed_version(package):
  spec = _requirements().get(package)
  assert spec is not None, f"{package} is not a dependency"
  assert spec.startswith("=="), f"{package} is not pinned: '{spec}'"
  assert importlib.metadata.version(package) == spec[2:]
