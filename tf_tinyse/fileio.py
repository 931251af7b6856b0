"""Atomic output: every file the toolkit writes appears whole or not at all.

Files get the mode of any new file under the process umask (0666 & ~umask, e.g.
0644 with umask 022), not the private 0600 of `tempfile.mkstemp`, so that a
colleague, a container or a web server can read models, exports and reports.
"""
import contextlib
import json
import os
import tempfile
import threading

_UMASK_LOCK = threading.Lock()


def current_umask():
  """The process umask, read without changing it where the system allows.

  `os.umask` can only be read by setting it, and it is process-wide: between
  the set and the restore, a file or folder made by another thread would get
  the temporary mask. Linux reports the umask in /proc/self/status, which
  changes nothing. Elsewhere it is set and restored under a lock (serializing
  our own callers), with the most private mask (077) in the window, so that an
  unlucky file of another thread ends up too private rather than too open. It is
  read on each call, not cached at import, so that a later `os.umask` (by the
  application, or a test) is honoured.
  """
  with contextlib.suppress(OSError, ValueError):
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  with _UMASK_LOCK:
    umask = os.umask(0o077)
    os.umask(umask)
  return umask


def new_file_mode():
  """The mode `open(path, "w")` gives a new file: 0666 & ~umask."""
  return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_output(path):
  """Yields a temporary path beside `path`; renames it onto `path` on success.

  The temporary file lives in the same folder so that the final `os.replace`
  is atomic. On any exception the temporary file is removed and `path` is left
  as it was. The file gets `new_file_mode()`, whether the caller wrote into the
  temporary file or a library (h5py, soundfile) replaced it with its own.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  fd, tmp_path = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
  os.close(fd)
  try:
    yield tmp_path
    # mkstemp made the file 0600, and a library that truncates it keeps that mode.
    os.chmod(tmp_path, new_file_mode())
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


def link_files(paths, folder):
  """Symbolic links `folder/<basename>` to each of `paths` (absolute), replacing any link or
  file of that name: a corpus folder made of existing recordings without copying them."""
  os.makedirs(folder, exist_ok=True)
  for path in paths:
    link = os.path.join(folder, os.path.basename(path))
    if os.path.lexists(link):
      os.remove(link)
    os.symlink(os.path.abspath(path), link)
