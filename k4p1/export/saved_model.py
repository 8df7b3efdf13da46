"""The multi-task SavedModel: a signature per task, plus the mixed-task signature.

Each task signature takes `images`: uint8 [batch, height, width, 3] at any size (resized
inside), or for an audio backbone `waveforms`: float32 [batch, samples] at any length (16 kHz,
in [-1, 1]; zero-padded or cut to the model's clip length inside), and returns `probabilities` (float32 [batch, classes]) and `classes` (int64 [batch],
the arg max). The first task is also `serving_default`.

Signature kinds are registered (SIGNATURE_KINDS: `task` and `mixed` here; methods add theirs,
e.g. k4p1/methods/multires adds `cascade`); a new kind is a builder (models, items) ->
[Signature], and a signature may carry assets (files written into the SavedModel). A task at its own resolution (multi-resolution) takes
images of any size like every other: its signature resizes them to its size.

Example:
  export_saved_model(models, ["imagenet", "flowers"], "/tmp/export")
  signatures(models, {"task": ["flowers"], "mixed": ["cars", "flowers"]})
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import keras
import tensorflow as tf

from k4p1.export.patch_files import patch_names
from k4p1.files import atomic_directory
from k4p1.model import TaskModels
from k4p1.registry import Registry


def serving_function(models: TaskModels, task: str):
  """tf.function: uint8 images (any size) -> {'probabilities', 'classes'} for `task`."""
  model = models.tasks[task].model
  spec = models.tasks[task].input_spec

  @tf.function(input_signature=[spec.serving_spec()])
  def serve(images):
    x = spec.to_model_input(images)
    probabilities = tf.nn.softmax(model(x, training=False), axis=-1)
    return {"probabilities": probabilities,
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

  return serve


MIXED_SIGNATURE = "mixed"
TASK_INDEX = os.path.join("assets.extra", "k4p1_tasks.json")


def task_index(models: TaskModels, tasks: list[str], mixed_tasks: list[str]) -> dict:
  """What a client needs to call the export: signatures, class counts, mixed-task ids."""
  return {
      "signatures": {t: {"num_classes": models.tasks[t].num_classes,
                         "input_size": models.tasks[t].input_spec.size,
                         "class_names": list(models.tasks[t].class_names),
                         "patch": patch_names(models.tasks[t].spec.patch)} for t in tasks},
      "serving_default": tasks[0],
      "mixed": ({"signature": MIXED_SIGNATURE, "task_ids": {t: i for i, t in
                                                           enumerate(mixed_tasks)}}
                if mixed_tasks else None),
      "input_size": models.backbone.input_size,
      "input": {"name": models.backbone.input_spec.name,
                "modality": models.backbone.input_spec.modality,
                "sample_rate": models.backbone.input_spec.sample_rate},
  }


@dataclasses.dataclass
class Signature:
  """One named endpoint of the SavedModel.

  Attributes:
    name: the signature key.
    function: a tf.function with an input signature.
    track: Keras objects the archive must track (their variables).
    assets: {path inside the SavedModel: JSON-able value} written beside it (e.g.
      assets.extra/k4p1_cascade.json).
  """
  name: str
  function: Any
  track: list
  assets: dict = dataclasses.field(default_factory=dict)


SIGNATURE_KINDS = Registry("signature kind")


@SIGNATURE_KINDS.register("task")
def task_signatures(models: TaskModels, tasks: list[str]) -> list[Signature]:
  """A signature per task, named after it."""
  return [Signature(t, serving_function(models, t), [models.tasks[t].model]) for t in tasks]


@SIGNATURE_KINDS.register("mixed")
def mixed_signatures(models: TaskModels, tasks: list[str]) -> list[Signature]:
  """The `mixed` signature over `tasks` (a task id per example; ids are positions in it)."""
  from k4p1.export.mixed import mixed_serving_function
  return [_mixed_signature(mixed_serving_function(models, tasks))] if tasks else []


def _mixed_signature(serve) -> Signature:
  return Signature(MIXED_SIGNATURE, serve, list(serve.keras_objects))


def signatures(models: TaskModels, requests: dict) -> list[Signature]:
  """{signature kind: its tasks} -> the signatures, in request order (kinds are registered)."""
  out = []
  for kind, tasks in requests.items():
    out += SIGNATURE_KINDS.lookup(kind, "signature kind")(models, list(tasks))
  return out


def export_saved_model(models: TaskModels, tasks: list[str], path: str,
                       mixed=None, kinds: dict | None = None) -> str:
  """Writes one SavedModel with a signature per task (first task = serving_default).

  Args:
    models: the tasks.
    tasks: one signature each, in order; the first is also `serving_default`.
    path: the SavedModel folder (written to a temporary folder beside it, then renamed).
    mixed: optional k4p1.export.mixed.mixed_serving_function(models, tasks): exported as the `mixed`
      signature (images plus a task id per example, routed by task in the graph; task ids are positions
      in its task list).
    kinds: more signatures by registered kind, {kind: its items} (e.g. {"mixed": [...]},
      the same as passing `mixed`; {"cascade": [Stage, ...]}).

  Writes `assets.extra/k4p1_tasks.json` (TASK_INDEX) inside: class counts and mixed task ids;
  and every signature's assets (a cascade's `assets.extra/k4p1_cascade.json`: its stages).
  """
  if not tasks:
    raise ValueError("export_saved_model needs at least one task.")
  kinds = dict(kinds or {})
  if mixed is not None and kinds.get("mixed"):
    raise ValueError("Pass the mixed signature once: `mixed` or kinds['mixed'].")
  mixed_tasks = list(mixed.tasks) if mixed is not None else list(kinds.get("mixed", []))
  for t in list(tasks) + mixed_tasks:
    if t not in models.tasks:
      raise ValueError(f"Cannot export task {t!r}: not a task of this model. "
                       f"Tasks: {sorted(models.tasks)}")
  reserved = [MIXED_SIGNATURE] + [k for k in kinds if k != "task"]
  for name in reserved:
    if name in tasks:
      raise ValueError(f"A task named {name!r} would clash with the {name} "
                       f"signature; rename the task.")
  endpoints = signatures(models, {"task": list(tasks), **kinds})
  if mixed is not None:
    endpoints.append(_mixed_signature(mixed))
  archive = keras.export.ExportArchive()
  for endpoint in endpoints:
    for obj in endpoint.track:
      archive.track(obj)
  for endpoint in endpoints:
    archive.add_endpoint(endpoint.name, endpoint.function)
  with atomic_directory(path) as tmp:
    archive.write_out(tmp, verbose=False)
    os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
    with open(os.path.join(tmp, TASK_INDEX), "w") as f:
      json.dump(task_index(models, list(tasks), mixed_tasks), f, indent=2)
    for endpoint in endpoints:
      for name, value in endpoint.assets.items():
        os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
        with open(os.path.join(tmp, name), "w") as f:
          json.dump(value, f, indent=2)
  return path
