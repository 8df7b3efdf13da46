"""Starting a run from another run's state (`train.init_from`) and writing such states.

A *snapshot* is a checkpoint of the whole training state taken between phases, plus the
settings of the run that wrote it (`settings.json`). Another run may start from it when its
settings are the same except what the snapshot lists as free (e.g. SWR's target cost `c`, so
that one stage 1 serves many costs); anything else differing is refused, naming the fields.
A checkpoint without settings (a plain prefix, a folder, a workdir) is accepted when its
variables fit.

Example:
  write_snapshot(trainer, "/tmp/run/stage1", {"swr": ["c"]})
  # another run, with train.init_from="/tmp/run/stage1":
  trainer.restore()    # -> restore_from(trainer, find_checkpoint("/tmp/run/stage1"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import tensorflow as tf

from k4p1.errors import ConfigError
from k4p1.files import atomic_write_text

SNAPSHOT_SETTINGS = "settings.json"
# Fields a run started from a snapshot may change: how it logs, checkpoints, exports, runs.
_FREE_SECTIONS = ("runtime", "export", "cascade", "report", "plugins")
_FREE_TRAIN = ("init_from", "progress", "log_every", "checkpoint_every", "keep_checkpoints")


def find_checkpoint(path: str) -> str:
  """train.init_from's checkpoint prefix: `path` itself, or a folder's latest checkpoint (a
  workdir's checkpoints/ too; a snapshot stopped while being replaced, its previous copy).

  Raises:
    ConfigError: none there.
  """
  for folder in (path, os.path.join(path, "checkpoints"), f"{path}.old"):
    if os.path.isdir(folder):
      latest = tf.train.latest_checkpoint(folder)
      if latest:
        return latest
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise ConfigError(f"train.init_from={path!r}: no checkpoint there. Give a checkpoint prefix "
                    f"(.../ckpt-12), a folder holding checkpoints, or a workdir.")


def run_settings(spec, free_options: dict) -> dict:
  """The spec as JSON, less what a run from a snapshot may change (`_FREE_*`, and each patch
  kind's `free_options`, e.g. {'swr': ['c']})."""
  def plain(x):
    if isinstance(x, (frozenset, set)):
      return sorted(x)
    raise TypeError(type(x).__name__)

  d = json.loads(json.dumps(dataclasses.asdict(spec), default=plain))
  for section in _FREE_SECTIONS:
    d.pop(section, None)
  for key in _FREE_TRAIN:
    d["train"].pop(key, None)
  for task in d["tasks"]:
    task["patch"]["options"] = [
        [kind, [kv for kv in values if kv[0] not in free_options.get(kind, ())]]
        for kind, values in task["patch"]["options"]]
  return d


def differences(a, b, where=""):
  """['tasks.0.dataset.fold: 1 != 0', ...] between two JSON values."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b), key=str)
            for d in differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))]
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}.{i}")]
  return [] if a == b else [f"{where}: {_short(a)} != {_short(b)}"]


def _short(value, width: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= width else text[:width - 3] + "..."


def restore_from(trainer, path: str) -> bool:
  """Starts `trainer` from train.init_from's checkpoint `path`: a state between phases of a
  run with the same settings (but those its snapshot lists as free).

  Raises:
    ConfigError: other settings, variables that do not fit, a state midway through a phase,
      or every phase already trained.
  """
  where = f"train.init_from={trainer.spec.train.init_from!r}"
  settings_file = os.path.join(os.path.dirname(path), SNAPSHOT_SETTINGS)
  if os.path.exists(settings_file):
    with open(settings_file) as f:
      stored = json.load(f)
    diff = differences(stored["settings"], run_settings(trainer.spec, stored["free_options"]))
    if diff:
      free = ", ".join(f"{k}({', '.join(v)})" for k, v in stored["free_options"].items())
      raise ConfigError(
          f"{where} was trained with other settings: {'; '.join(diff[:6])}"
          f"{' ...' if len(diff) > 6 else ''}. A run may start from it only with the same "
          f"settings" + (f", but for {free}" if free else "") + ".")
  try:
    trainer.checkpoint.restore(path).assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ConfigError(
        f"{where}: its checkpoint does not fit this run's model ({first[:300]}). It must "
        f"come from a run with the same backbone, tasks, patches and phases (e.g. the "
        f"same method at another setting its snapshot lists as free).") from e
  counts = {p.name: (int(trainer.steps[p.name].numpy()), p.steps) for p in trainer.phases}
  midway = [f"{n} {k}/{total}" for n, (k, total) in counts.items() if k and k != total]
  hint = ("Start from a snapshot taken between phases (one a method writes as a stage ends, "
          "e.g. WORKDIR/<stage>/<task>)")
  if midway:
    raise ConfigError(f"{where}: a state in the middle of phases ({', '.join(midway)}), "
                      f"not between them. {hint}, or resume that run's own workdir.")
  if all(k for k, _ in counts.values()):
    raise ConfigError(f"{where}: every phase is already trained there; nothing is left to "
                      f"train. {hint}.")
  done = [f"{n} ({k}/{total})" for n, (k, total) in counts.items() if k]
  print(f"Starting from {path}" + (f": phases done {', '.join(done)}" if done else ""),
        flush=True)
  return True


def write_snapshot(trainer, path: str, free_options: dict):
  """Writes the whole training state (a checkpoint) and the run's settings to the folder
  `path`, for `train.init_from=path` in another run with the same settings except
  `free_options` ({kind: [option, ...]}). Replaces an earlier snapshot: written beside it,
  then swapped in by renames (a stop midway leaves the old one readable as `path`.old).
  Workers other than the chief write a throw-away copy (every worker takes part in a save)."""
  if not trainer.is_chief:
    tmp = os.path.join(trainer.workdir, "tmp_worker_checkpoints",
                       str(trainer.strategy.cluster_resolver.task_id), "snapshot")
    trainer.checkpoint.write(tmp)
    return
  tmp, old = f"{path}.tmp", f"{path}.old"
  shutil.rmtree(tmp, ignore_errors=True)
  tf.train.CheckpointManager(trainer.checkpoint, tmp, max_to_keep=1).save(
      checkpoint_number=trainer.checkpoint_number())
  atomic_write_text(os.path.join(tmp, SNAPSHOT_SETTINGS), json.dumps(
      {"settings": run_settings(trainer.spec, free_options),
       "free_options": {k: list(v) for k, v in free_options.items()}}, indent=1))
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(path):
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)
