"""Tests of tf_tinyse.fileio: files appear whole, with the mode of a new file under the umask."""
import json
import os
import stat

import pytest

from tf_tinyse import fileio


@pytest.fixture
def umask(request):
  """Sets the process umask to the test's parameter; restores the previous one afterwards."""
  previous = os.umask(request.param)
  yield request.param
  os.umask(previous)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def _write_into_temp(path):
  with fileio.atomic_output(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(b"data")


def _replace_temp(path):
  # Like h5py or soundfile when they make their own file at the temporary path.
  with fileio.atomic_output(path) as tmp:
    os.remove(tmp)
    with open(tmp, "xb") as f:
      f.write(b"data")


WRITERS = {
    "write_bytes_atomic": lambda path: fileio.write_bytes_atomic(path, b"data"),
    "write_text_atomic": lambda path: fileio.write_text_atomic(path, "data"),
    "write_json_atomic": lambda path: fileio.write_json_atomic(path, {"a": 1}),
    "atomic_output": _write_into_temp,
    "atomic_output_replaced_temp": _replace_temp,
}


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         indirect=["umask"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_written_files_get_the_mode_of_a_new_file_under_the_umask(tmp_path, umask, expected,
                                                                  writer):
  path = tmp_path / "sub" / "out.bin"
  WRITERS[writer](path)
  assert _mode(path) == expected
  assert _mode(tmp_path / "sub") == 0o777 & ~umask  # a folder made for it is normal too
  assert os.listdir(tmp_path / "sub") == ["out.bin"]  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_replacing_a_private_file_gives_the_new_file_mode(tmp_path, umask):
  path = tmp_path / "report.json"
  path.write_text("{}")
  os.chmod(path, 0o600)
  fileio.write_json_atomic(path, {"a": 1})
  assert _mode(path) == 0o644 and json.loads(path.read_text()) == {"a": 1}


@pytest.mark.parametrize("umask", [0o027], indirect=True)
def test_current_umask_reads_the_umask_and_leaves_it_unchanged(umask):
  assert fileio.current_umask() == 0o027
  assert fileio.new_file_mode() == 0o640
  assert os.umask(0o027) == 0o027  # still set


@pytest.mark.parametrize("umask", [0o027], indirect=True)
def test_current_umask_without_proc_sets_and_restores_it(umask, monkeypatch):
  def no_proc(*args, **kwargs):
    raise OSError("no /proc here")

  monkeypatch.setattr(fileio, "open", no_proc, raising=False)
  assert fileio.current_umask() == 0o027
  assert os.umask(0o027) == 0o027  # restored


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
  path = tmp_path / "out.bin"
  path.write_bytes(b"old")
  with pytest.raises(RuntimeError):
    with fileio.atomic_output(path) as tmp:
      with open(tmp, "wb") as f:
        f.write(b"half")
      raise RuntimeError("writer failed")
  assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
