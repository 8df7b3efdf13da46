"""Task models: preprocessing -> patched backbone -> pooling -> the task's classifier.

All task models built from one `Backbone` share its variables by identity; each owns only its
patch layers and classifier (or, for 'full', a private copy of everything).

Example:
  backbone = build_backbone(BackboneSpec("mobilenet_v2", alpha=0.35, input_size=32, weights="none"))
  models = TaskModels(backbone)
  a = models.add(task_spec_a, num_classes=5)
  b = models.add(task_spec_b, num_classes=5)
  models.activate("b")        # freeze the shared base, make b's patch trainable
  b.model.trainable_variables  # b's patch + classifier only
"""

from __future__ import annotations

import dataclasses

import keras

from k4p1.backbones import Backbone, Preprocess, architecture_fingerprint, weights_fingerprint
from k4p1.config import TaskSpec
from k4p1.patching import PatchedModel, patch_model


def _unique(variables):
  seen, out = set(), []
  for v in variables:
    if id(v) not in seen:
      seen.add(id(v))
      out.append(v)
  return out


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)


def recompute_batch_statistics(model: keras.Model, layers: list, batches) -> int:
  """Sets each BN layer's moving statistics to the exact average over `batches` ("precise BN").

  keras.applications build BN with momentum 0.999, so after a short run the moving statistics
  are still mostly their initial values and inference-mode accuracy collapses. Averaging the
  batch statistics of the trained network over N batches fixes that. Other BN layers (frozen
  ones run in inference mode) are untouched.

  Returns:
    the number of batches used.
  """
  if not layers:
    return 0
  momenta = [layer.momentum for layer in layers]
  k = 0
  try:
    for images, _ in batches:
      for layer in layers:
        layer.momentum = k / (k + 1.0)   # cumulative average; k=0 takes the first batch whole
      model(images, training=True)
      k += 1
  finally:
    for layer, m in zip(layers, momenta):
      layer.momentum = m
  return k


@dataclasses.dataclass
class TaskModel:
  """One task's Keras model and the bookkeeping around it."""
  spec: TaskSpec
  num_classes: int
  model: keras.Model       # uint8/float images in [0, 255] -> logits
  patched: PatchedModel
  head: keras.layers.Dense

  @property
  def name(self) -> str:
    return self.spec.name


class TaskModels:
  """The shared backbone and every task model built on it.

  Args:
    backbone: the shared feature extractor.
  """

  def __init__(self, backbone: Backbone):
    self.backbone = backbone
    self.tasks: dict[str, TaskModel] = {}

  @property
  def base(self) -> keras.Model:
    return self.backbone.model

  def shared_variables(self) -> list:
    return _unique(self.base.variables)

  def add(self, spec: TaskSpec, num_classes: int, seed: int = 0) -> TaskModel:
    """Builds `spec`'s model on the shared backbone. The new model equals the base's output."""
    if spec.name in self.tasks:
      raise ValueError(f"Task {spec.name!r} already exists.")
    if num_classes < 2:
      raise ValueError(f"Task {spec.name!r} needs at least 2 classes. Received: {num_classes}")
    patched = patch_model(self.base, spec.name, spec.patch)
    size = self.backbone.input_size
    images = keras.Input((size, size, 3), name="images")
    x = Preprocess(self.backbone.preprocessing, name="preprocess")(images)
    x = patched.model(x)
    if len(x.shape) == 4:
      x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    head = keras.layers.Dense(
        num_classes, name=f"logits_{spec.name}",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    logits = head(x)
    model = keras.Model(images, logits, name=f"k4p1_{spec.name}")
    task = TaskModel(spec, num_classes, model, patched, head)
    self.tasks[spec.name] = task
    return task

  def activate(self, name: str) -> TaskModel:
    """Sets `trainable` flags for training task `name`; returns it.

    The shared base is trainable only if the task has train_base; the task's patch layers are
    trainable; its classifier is trainable only with 'last_layer'. A frozen base BN runs in
    inference mode (moving statistics), so training one task never moves the base's statistics.
    """
    task = self.tasks[name]
    for layer in task.patched.model.layers:   # patches and private copies first: their setter
      layer.trainable = True                  # recurses into wrapped (shared) layers ...
    for layer in self.base.layers:            # ... which the base flags then override.
      layer.trainable = task.spec.patch.train_base
    task.head.trainable = task.spec.patch.has("last_layer")
    return task

  def batch_statistics_layers(self, name: str) -> list:
    """The BN layers that task `name` trains with batch statistics (call after activate)."""
    from k4p1.patch_layers import ScaleBiasPatch
    out = []
    for layer in _all_layers(self.tasks[name].model):
      if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
        if not (isinstance(layer, ScaleBiasPatch) and layer.statistics == "frozen"):
          out.append(layer)
    return out

  def task_variables(self, name: str) -> list:
    """Variables that belong to task `name` only (patch, statistics, classifier)."""
    shared = {id(v) for v in self.shared_variables()}
    return [v for v in _unique(self.tasks[name].model.variables) if id(v) not in shared]

  def variable_sites(self, name: str) -> dict:
    """{id(variable): site} for task `name`'s own variables.

    A site names a variable by structure, not by layer name: `base.<i>/<var>` for a patch of
    the base's i-th layer, `copy.<i>/<var>` for a private copy of it, `head/<var>` for the
    classifier. Keras numbers unnamed layers per process, so names alone are not stable.
    """
    task = self.tasks[name]
    index = {id(layer): i for i, layer in enumerate(self.base.layers)}
    own = {id(v) for v in self.task_variables(name)}
    sites = {}

    def claim(prefix, layer):
      for v in layer.weights:
        if id(v) in own and id(v) not in sites:
          sites[id(v)] = f"{prefix}/{v.name}"

    for v in task.head.weights:
      sites[id(v)] = f"head/{v.name}"
    for patch_layer, base_layer in task.patched.patch_layers:
      claim(f"base.{index[id(base_layer)]}", patch_layer)
    if task.patched.private_copy:
      for i, layer in enumerate(task.patched.model.layers):
        claim(f"copy.{i}", layer)
    missing = own - set(sites)
    if missing:
      raise ValueError(f"Task {name!r}: {len(missing)} task variables have no known site.")
    return sites

  def identity(self) -> dict:
    """What a patch file records about the base, to refuse loading onto another base."""
    spec = self.backbone.spec
    return {
        "backbone": spec.name,
        "alpha": spec.alpha,
        "input_size": self.backbone.input_size,
        "architecture": architecture_fingerprint(self.base),
        "weights": weights_fingerprint(self.shared_variables()),
    }
