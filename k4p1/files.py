"""Atomic file writes: a file or folder appears whole or not at all.

Everything k4p1 writes (checkpoints aside, which TensorFlow manages) goes to a temporary path
beside its destination and is renamed into place, so a killed run never leaves a half-written
patch file, metrics file or export behind.

Example:
  atomic_write_text("runs/metrics.json", json.dumps(metrics))
  with atomic_directory("runs/saved_model") as tmp:
    write_everything_into(tmp)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile


def atomic_write_bytes(path: str, data: bytes):
  """Writes `data` to `path` through a temporary file in the same folder."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_text(path: str, text: str):
  atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str, obj):
  atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str):
  """Yields a temporary folder beside `path`; on success it replaces `path` (old copy removed)."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
  try:
    yield tmp
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=".old-", dir=parent)
      os.replace(path, os.path.join(old, "x"))
      os.replace(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
