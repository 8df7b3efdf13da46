"""What a run leaves in its workdir besides checkpoints: patch files, the shared base, the
SavedModel with the signatures the methods add, and how its signatures are listed.

Example:
  save_patches(models, "/tmp/run")            # patches/<task>.k4p1.npz
  export(spec, models, "/tmp/run")            # saved_model/
"""

from __future__ import annotations

import os

from k4p1.errors import ConfigError
from k4p1.plugins import METHODS


def patch_sizes(models) -> dict:
  """Bytes each task's patch file has (computed in memory, nothing written)."""
  from k4p1 import export as export_lib
  return {n: len(export_lib.patch_bytes(models, n)) for n in models.tasks}


def save_patches(models, workdir: str) -> dict:
  """Writes patches/<task>.k4p1.npz for every task; returns their sizes."""
  from k4p1 import export as export_lib
  return {name: export_lib.save_patch(models, name, os.path.join(workdir, "patches",
                                                                 f"{name}.k4p1.npz"))
          for name in models.tasks}


def save_base(spec, models, workdir: str):
  """Writes base.weights.h5 when a task (or a method, e.g. joint training) trained the shared
  base (deploy.py rebuilds from it)."""
  if not any(t.patch.train_base for t in spec.tasks) and not any(
      m.trains_shared(spec) for m in METHODS.values() if m.trains_shared is not None):
    return None
  path = os.path.join(workdir, "base.weights.h5")
  tmp = os.path.join(workdir, ".tmp-base.weights.h5")
  models.base.save_weights(tmp)
  os.replace(tmp, path)
  if models.shared_head is not None:  # stored once, like the base (patch files hold the rest)
    from k4p1.export import patch_files
    patch_files.save_shared_head(models, os.path.join(workdir, patch_files.SHARED_HEAD_FILE))
  return path


def method_signatures(spec, workdir: str) -> dict:
  """{signature kind: items} the methods add to the run's SavedModel (Method.signatures)."""
  kinds = {}
  for method in METHODS.values():
    if method.signatures is not None:
      kinds.update(method.signatures(spec, workdir))
  return kinds


def signature_items(kind: str, path: str):
  """The items of signature kind `kind` a method reads from its file `path` (deploy.py's
  --signature_files; Method.read_signature_file).

  Raises:
    ConfigError: no method reads files of that kind.
  """
  readers = {m.name: m for m in METHODS.values() if m.read_signature_file is not None}
  for method in readers.values():
    items = method.read_signature_file(kind, path)
    if items is not None:
      return items
  raise ConfigError(f"No method makes `{kind}` signatures from a file (methods that do: "
                    f"{', '.join(readers) or 'none'}). Received: {kind}={path}")


def export(spec, models, workdir: str) -> str:
  """The multi-task SavedModel of `spec.export` under workdir/saved_model, with the `mixed`
  signature and those the methods add (e.g. a cascade's, from workdir/cascade.json)."""
  from k4p1 import export as export_lib
  path = os.path.join(workdir, "saved_model")
  export_lib.export_saved_model(models, list(spec.export.tasks), path,
                                kinds={"mixed": list(spec.export.mixed_tasks),
                                       **method_signatures(spec, workdir)})
  return path


def signature_names(spec) -> list[str]:
  """The SavedModel's signatures, as `export` writes them (for messages)."""
  tasks = list(spec.export.tasks)
  names = [f"serving_default (= {tasks[0]})"] + tasks + \
      (["mixed (" + ", ".join(spec.export.mixed_tasks) + ")"] if spec.export.mixed_tasks else [])
  for method in METHODS.values():
    if method.signature_names is not None:
      names += method.signature_names(spec)
  return names
