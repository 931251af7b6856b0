"""Atomic output: every file the toolkit writes appears whole or not at all."""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_output(path):
  """Yields a temporary path beside `path`; renames it onto `path` on success.

  The temporary file lives in the same folder so that the final `os.replace`
  is atomic. On any exception the temporary file is removed and `path` is left
  as it was.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  fd, tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
  os.close(fd)
  try:
    yield tmp_path
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp_path)
    raise


def write_bytes_atomic(path, data):
  with atomic_output(path) as tmp:
    with open(tmp, "wb") as f:
      f.write(data)


def write_text_atomic(path, text):
  write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj):
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
