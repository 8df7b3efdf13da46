"""Patch files: one task's parameters only, and tasks assembled from them onto a base.

A patch file is an .npz holding one flat float32 buffer and a JSON record that indexes it by
variable: its structural site (`base.12/gamma`: the base's 12th layer; see
TaskModels.variable_sites), its variable path (e.g. `block_1_depthwise_BN_flowers/gamma`, for
people), offset and shape; variables that change no output (the delta of a layer TAPS gated
off) are recorded by shape only and read back as zeros. The record also holds of the task (patch kinds, class count) and of the base it was trained on
(architecture and weights fingerprints), so loading onto another base or with another class
count fails with a clear error instead of silently giving wrong answers.

One base plus a few kilobytes per task: `assemble` rebuilds the base from its backbone spec (and
optionally a weights file of a base trained by k4p1) and adds every task from its patch file,
without retraining; each patch file is checked against the base before anything is assigned.

Example:
  save_patch(models, "flowers", "/tmp/flowers.k4p1.npz")
  load_patch(other_models, "flowers", "/tmp/flowers.k4p1.npz")
  models = assemble(BackboneSpec("mobilenet_v2", weights="imagenet"), ["flowers.k4p1.npz"])
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Iterable

import keras
import numpy as np

from k4p1 import patches
from k4p1.backbones import build_backbone, for_sizes
from k4p1.config import BackboneSpec, DatasetSpec, TaskSpec, parse_patch
from k4p1.errors import DeployError, PatchFileError
from k4p1.files import atomic_write_bytes
from k4p1.model import TaskModels

PATCH_FORMAT = "k4p1-patch-v2"   # v2: per-kind options; v1 files (kinds + statistics) still load
_READABLE_FORMATS = ("k4p1-patch-v1", PATCH_FORMAT)
_META_KEY = "__k4p1_meta__"


def patch_names(spec) -> list[str]:
  """Sorted patch kinds, plus 'last_layer' when the task trains its classifier."""
  return sorted(spec.kinds | ({"last_layer"} if spec.train_head else set()))


def patch_bytes(models: TaskModels, task: str) -> bytes:
  """The patch file's content for `task`, in memory."""
  t = models.tasks[task]
  index, chunks, offset = {}, [], 0
  omitted = {id(v) for v in models.omitted_variables(task)}
  zeros = {}
  for site, v in models.file_variables(task).items():
    if id(v) in omitted:  # changes no output (a gated-off TAPS delta): stored as a shape
      zeros[site] = {"path": v.path, "shape": list(v.shape)}
      continue
    value = np.asarray(keras.ops.convert_to_numpy(v), np.float32)
    index[site] = {"path": v.path, "offset": offset, "shape": list(value.shape)}
    chunks.append(value.ravel())
    offset += value.size
  meta = {
      "format": PATCH_FORMAT,
      "task": task,
      "num_classes": t.num_classes,
      "class_names": list(t.class_names),
      "input_size": t.input_spec.size,
      # A shared classifier is stored once, with the base (shared_head.npz); its fingerprint.
      **({"shared_head": models.shared_head_fingerprint()} if models.head_is_shared(task) else {}),
      "patch": patches.record(t.spec.patch),
      "base": models.identity(),
      # Where the task's data came from: int8 conversion calibrates on its training split.
      "dataset": {**dataclasses.asdict(t.spec.dataset), "classes": list(t.spec.dataset.classes)},
      "variables": index,
  }
  if zeros:
    meta["zeros"] = zeros
  buf = io.BytesIO()
  np.savez(buf, values=np.concatenate(chunks) if chunks else np.zeros(0, np.float32),
           **{_META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)})
  return buf.getvalue()


def save_patch(models: TaskModels, task: str, path: str) -> int:
  """Writes `task`'s patch file (atomically). Returns its size in bytes."""
  data = patch_bytes(models, task)
  atomic_write_bytes(path, data)
  return len(data)


def read_patch(path: str) -> tuple[dict, dict]:
  """Returns (meta, {variable path: array}) of a patch file."""
  if not os.path.exists(path):
    raise PatchFileError(f"Patch file not found: {path!r}")
  try:
    with np.load(path) as f:
      meta = json.loads(f[_META_KEY].tobytes().decode())
      values = f["values"]
    arrays = {key: values[entry["offset"]:entry["offset"] + int(np.prod(entry["shape"]))]
                   .reshape(entry["shape"]) for key, entry in meta.pop("variables").items()}
    arrays.update({key: np.zeros(entry["shape"], np.float32)
                   for key, entry in meta.pop("zeros", {}).items()})
  except Exception as e:
    raise PatchFileError(f"{path!r} is not a k4p1 patch file ({type(e).__name__}: {e}).") from e
  if meta.get("format") not in _READABLE_FORMATS:
    raise PatchFileError(f"{path!r} has format {meta.get('format')!r}; this k4p1 reads "
                         f"{_READABLE_FORMATS}.")
  if meta["format"] == "k4p1-patch-v1":  # kinds + statistics; private copies under copy.<i>
    kinds = meta["patch"]
    spec = parse_patch(",".join(kinds), meta.get("statistics", "batch"), meta["train_base"])
    meta["patch"] = patches.record(patches.check(spec))
    arrays = {("base." + k[len("copy."):] if k.startswith("copy.") else k): v
              for k, v in arrays.items()}
  return meta, arrays


def patch_spec_of(meta: dict):
  """The PatchSpec a patch file's record describes."""
  return patches.from_record(meta["patch"])


def load_patch(models: TaskModels, task: str, path: str, check_base_weights: bool = True):
  """Loads a patch file onto `models.tasks[task]`; checks everything before writing anything.

  Raises:
    PatchFileError: wrong base architecture or weights, wrong class count, or missing /
      unexpected / misshapen variables. Nothing is assigned in that case.
  """
  meta, arrays = read_patch(path)
  if task not in models.tasks:
    raise PatchFileError(f"No task {task!r} to load {path!r} onto. Tasks: {sorted(models.tasks)}")
  t = models.tasks[task]
  base = meta["base"]
  here = models.identity()
  if base["architecture"] != here["architecture"]:
    raise PatchFileError(
        f"{path!r} was trained on a different base architecture ({base['backbone']} alpha "
        f"{base['alpha']} at {base['input_size']}px, fingerprint {base['architecture']}); this base "
        f"is {here['backbone']} alpha {here['alpha']} at {here['input_size']}px "
        f"({here['architecture']}). Build the base the patch was trained on.")
  if check_base_weights and base["weights"] != here["weights"]:
    raise PatchFileError(
        f"{path!r} was trained on a base with other weights (fingerprint {base['weights']}, this "
        f"base has {here['weights']}). Load the base checkpoint it was trained on, or pass "
        f"check_base_weights=False if you really mean to apply it to these weights.")
  if meta["num_classes"] != t.num_classes:
    raise PatchFileError(f"{path!r} has a {meta['num_classes']}-class classifier; task {task!r} "
                         f"has {t.num_classes} classes.")
  if ("shared_head" in meta) != models.head_is_shared(task):
    raise PatchFileError(f"{path!r} {'uses' if 'shared_head' in meta else 'does not use'} a "
                         f"shared classifier; task {task!r} {'does' if models.head_is_shared(task) else 'does not'}.")
  if check_base_weights and meta.get("shared_head", "") != models.shared_head_fingerprint() \
      and "shared_head" in meta:
    raise PatchFileError(
        f"{path!r} was trained with another shared classifier (fingerprint "
        f"{meta['shared_head']}, this one has {models.shared_head_fingerprint()}). Load the "
        f"{SHARED_HEAD_FILE} written with it (deploy.py --shared_head=FILE).")
  variables = models.file_variables(task)
  missing = sorted(set(variables) - set(arrays))
  unexpected = sorted(set(arrays) - set(variables))
  if missing or unexpected:
    raise PatchFileError(
        f"{path!r} (patch {patches.label(patch_spec_of(meta))}) does not match task {task!r} "
        f"(patch {patches.label(t.spec.patch)}): missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
        f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}.")
  for key, v in variables.items():
    if tuple(v.shape) != arrays[key].shape:
      raise PatchFileError(f"{path!r}: {key} has shape {arrays[key].shape}, the model "
                           f"expects {tuple(v.shape)}.")
  for key, v in variables.items():
    v.assign(arrays[key])


SHARED_HEAD_FILE = "shared_head.npz"


def save_shared_head(models: TaskModels, path: str) -> int:
  """Writes the classifier shared-head tasks use (kernel, bias) atomically; returns bytes."""
  head = models.shared_head
  buf = io.BytesIO()
  np.savez(buf, kernel=keras.ops.convert_to_numpy(head.kernel),
           bias=keras.ops.convert_to_numpy(head.bias),
           fingerprint=np.array(models.shared_head_fingerprint()))
  atomic_write_bytes(path, buf.getvalue())
  return len(buf.getvalue())


def load_shared_head(models: TaskModels, path: str):
  """Builds (if needed) and loads the shared classifier from `save_shared_head`'s file."""
  if not os.path.exists(path):
    raise PatchFileError(f"Shared classifier file not found: {path!r}. train.py writes it as "
                         f"WORKDIR/{SHARED_HEAD_FILE} next to base.weights.h5.")
  with np.load(path) as f:
    kernel, bias = f["kernel"], f["bias"]
  head = models.make_shared_head(int(kernel.shape[-1]))
  if tuple(head.kernel.shape) != kernel.shape:
    raise PatchFileError(f"{path!r} holds a {kernel.shape} classifier; this base's features "
                         f"need {tuple(head.kernel.shape)}.")
  head.kernel.assign(kernel)
  head.bias.assign(bias)


def add_task_from_patch(models: TaskModels, path: str, name: str = "",
                        check_base_weights: bool = True):
  """Builds a task model from a patch file's record and loads the file onto it."""
  meta, _ = read_patch(path)
  name = name or meta["task"]
  patch = patch_spec_of(meta)
  recorded = meta.get("dataset")  # absent in files written before it was recorded
  dataset = (DatasetSpec(**{**recorded, "classes": tuple(recorded["classes"])}) if recorded
             else DatasetSpec(source="none"))
  spec = TaskSpec(name=name, dataset=dataset, patch=patch, input_size=meta.get("input_size", 0))
  models.add(spec, meta["num_classes"], class_names=meta.get("class_names") or ())
  try:
    load_patch(models, name, path, check_base_weights)
  except BaseException:
    models.remove(name)
    raise
  return models.tasks[name]


def assemble(backbone_spec: BackboneSpec, patch_paths: Iterable[str],
             base_weights: str = "", shared_head: str = "") -> TaskModels:
  """The base plus one task per patch file (named as recorded in the file).

  Args:
    backbone_spec: the backbone the patches were trained on (e.g. a config's `backbone`).
    patch_paths: .k4p1.npz files.
    base_weights: a `.weights.h5` of the backbone (what training writes as base.weights.h5 when
      it trained the base itself); '' keeps the weights `backbone_spec` gives.
    shared_head: the shared classifier's file (WORKDIR/shared_head.npz), needed when a patch
      file's task shares its classifier.

  Raises:
    PatchFileError: a patch file belongs to another base (architecture or weights), or two
      files hold the same task name.
  """
  patch_paths = list(patch_paths)
  metas = [read_patch(path)[0] for path in patch_paths]
  backbone = build_backbone(backbone_spec)
  models = TaskModels(for_sizes(backbone, [m.get("input_size", 0) for m in metas]))
  if base_weights:
    if not os.path.exists(base_weights):
      raise DeployError(f"Base weights file not found: {base_weights!r}.")
    models.base.load_weights(base_weights)
  if any("shared_head" in m for m in metas):
    if not shared_head:
      users = [m["task"] for m in metas if "shared_head" in m]
      raise DeployError(f"Tasks {users} share a classifier, stored once next to the base: pass "
                        f"its file (deploy.py --shared_head=FILE; train.py writes "
                        f"WORKDIR/{SHARED_HEAD_FILE}).")
    load_shared_head(models, shared_head)
  for path, meta in zip(patch_paths, metas):
    if meta["task"] in models.tasks:
      raise PatchFileError(f"{path!r} holds task {meta['task']!r}, which an earlier patch file "
                           f"already added. Rename one (add_task_from_patch(name=...)).")
    add_task_from_patch(models, path)
  return models
