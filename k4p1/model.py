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

from k4p1 import patches
from k4p1.backbones import Backbone, architecture_fingerprint, weights_fingerprint
from k4p1.frontends import InputSpec
from k4p1.config import TaskSpec
from k4p1.patches import PatchedModel, patch_model


def _unique(variables):
  seen, out = set(), []
  for v in variables:
    if id(v) not in seen:
      seen.add(id(v))
      out.append(v)
  return out


def recompute_batch_statistics(model, layers: list, batches) -> int:
  """Sets each BN layer's moving statistics to the exact average over `batches` ("precise BN").

  keras.applications build BN with momentum 0.999, so after a short run the moving statistics
  are still mostly their initial values and inference-mode accuracy collapses. Averaging the
  batch statistics of the trained network over N batches fixes that. Other BN layers (frozen
  ones run in inference mode) are untouched.

  Args:
    model: the keras.Model the batches run through; or a dict {key: model} when `batches`
      yields (key, images) pairs (BN layers several task models share: statistics averaged
      over every task's batches).

  Returns:
    the number of batches used.

  Training-time input augmentation inside the model (an audio frontend's SpecAugment: layers
  with an `augmenting` flag) is off meanwhile: statistics describe un-augmented inputs, as the
  model sees them in inference.
  """
  if not layers:
    return 0
  momenta = [layer.momentum for layer in layers]
  models = list(model.values()) if isinstance(model, dict) else [model]
  augmenters = [l for m in models for l in getattr(m, "layers", []) if hasattr(l, "augmenting")]
  k = 0
  try:
    for layer in augmenters:
      layer.augmenting = False
    for layer in layers:  # layers that keep their statistics in training normalise by batch now
      if hasattr(layer, "recomputing"):
        layer.recomputing = True
    for first, second in batches:
      for layer in layers:
        layer.momentum = k / (k + 1.0)   # cumulative average; k=0 takes the first batch whole
      if isinstance(model, dict):
        model[first](second, training=True)
      else:
        model(first, training=True)
      k += 1
  finally:
    for layer in augmenters:
      layer.augmenting = True
    for layer, m in zip(layers, momenta):
      layer.momentum = m
      if hasattr(layer, "recomputing"):
        layer.recomputing = False
  return k


def assemble_task_model(input_spec: InputSpec, frontend, backbone: keras.Model,
                        head: keras.layers.Layer, name: str) -> keras.Model:
  """frontend -> backbone -> global average pooling (of a feature map) -> head.

  The one place a task model is put together: training (TaskModels.add) and deployment
  (k4p1.export.fold.fold_task, with plain layers) both call it.

  Args:
    input_spec: what the model takes.
    frontend: a layer, or a list of layers applied in order (may be empty).
    backbone: the (patched or folded) feature extractor.
    head: the classifier.
    name: the model's name.
  """
  inputs = input_spec.keras_input()
  x = inputs
  for layer in frontend if isinstance(frontend, (list, tuple)) else [frontend]:
    x = layer(x)
  x = backbone(x)
  if len(x.shape) == 4:
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model(inputs, head(x), name=name)


@dataclasses.dataclass
class TaskModel:
  """One task's Keras model and the bookkeeping around it."""
  spec: TaskSpec
  num_classes: int
  model: keras.Model       # float images in [0, 255] -> logits
  patched: PatchedModel
  head: keras.layers.Dense
  frontend: keras.layers.Layer
  class_names: tuple = ()  # in label order; () when unknown (e.g. --mode=params)
  input_spec: InputSpec = InputSpec()  # what it takes (its own resolution)
  auxiliary: dict = dataclasses.field(default_factory=dict)  # training-only (SWR's policy)

  @property
  def name(self) -> str:
    return self.spec.name


class TaskModels:
  """The shared backbone and every task model built on it.

  Tasks whose patch says `last_layer(shared=true)` share one classifier, which then counts as
  a shared weight like the base's (multi-resolution: every resolution one head). A task may run
  at its own resolution (`TaskSpec.input_size`) when the base takes any size
  (k4p1.backbones.for_sizes).

  Args:
    backbone: the shared feature extractor.
  """

  def __init__(self, backbone: Backbone):
    self.backbone = backbone
    self.tasks: dict[str, TaskModel] = {}
    self.shared_head: keras.layers.Dense | None = None
    self._kinds: dict[str, dict] = {}
    # TaskModels owns the trainable flags (they pick BN's mode per phase, see activate). What
    # is learnable is read once, here and in add(), while every flag is still True, so the
    # explicit variable lists below never depend on which task was activated last.
    backbone.model.trainable = True
    self._learnable_shared = [v for v in _unique(backbone.model.variables) if v.trainable]

  @property
  def base(self) -> keras.Model:
    return self.backbone.model

  def shared_variables(self) -> list:
    """The base's variables and the shared classifier's (when a task shares it)."""
    head = self.shared_head.weights if self.shared_head is not None else []
    return _unique(self.base.variables + head)

  def input_spec(self, spec: TaskSpec) -> InputSpec:
    """What `spec`'s model takes: the backbone's input at the task's own resolution."""
    own = self.backbone.input_spec
    if not spec.input_size or spec.input_size == own.size:
      return own
    if self.base.input_shape[1] is not None:
      raise ValueError(
          f"Task {spec.name!r} runs at {spec.input_size}px but the base takes only "
          f"{own.size}px inputs: build the backbone with k4p1.backbones.for_sizes(backbone, "
          f"sizes) before TaskModels.")
    return dataclasses.replace(own, shape=(spec.input_size, spec.input_size, *own.shape[2:]))

  def shared_learnable_variables(self) -> list:
    """The shared base's variables that gradient training changes (what joint training and
    train_base train), read once, independent of the trainable flags."""
    return list(self._learnable_shared)

  def add(self, spec: TaskSpec, num_classes: int, seed: int = 0,
          class_names=()) -> TaskModel:
    """Builds `spec`'s model on the shared backbone. The new model equals the base's output.

    Args:
      class_names: optional, one per class in label order (exported with the model).
    """
    if spec.name in self.tasks:
      raise ValueError(f"Task {spec.name!r} already exists.")
    if num_classes < 2:
      raise ValueError(f"Task {spec.name!r} needs at least 2 classes. Received: {num_classes}")
    if class_names and len(class_names) != num_classes:
      raise ValueError(f"Task {spec.name!r}: {len(class_names)} class names for {num_classes} "
                       f"classes.")
    input_spec = self.input_spec(spec)
    if spec.patch.shared_head:
      head = self.make_shared_head(num_classes, seed, spec.name)
    else:
      head = keras.layers.Dense(
          num_classes, name=f"logits_{spec.name}",
          kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    patched = patch_model(self.base, spec.name, spec.patch)
    frontend = self.backbone.frontend()
    model = assemble_task_model(input_spec, frontend, patched.model, head,
                                name=f"k4p1_{spec.name}")
    task = TaskModel(spec, num_classes, model, patched, head, frontend,
                     tuple(str(c) for c in class_names), input_spec)
    for k in patches.kinds_of(spec.patch):
      if k.auxiliary is not None:
        layers = [layer for layer, _, kind in patched.patch_layers if kind == k.name]
        task.auxiliary.update(k.auxiliary(layers, patches.options(spec.patch, k.name), seed))
    self.tasks[spec.name] = task
    self._kinds[spec.name] = self._read_variable_kinds(spec.name)
    return task

  def make_shared_head(self, num_classes: int, seed: int = 0,
                       task: str = "") -> keras.layers.Dense:
    """The one classifier of shared-head tasks: built on first use (a shared weight), then
    returned, checked to have `num_classes` outputs (for `task`, named in the error)."""
    head = self.shared_head
    if head is None:
      head = keras.layers.Dense(num_classes, name="logits_shared",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
      head.build((None, int(self.base.output_shape[-1])))
      self.shared_head = head
      self._learnable_shared += list(head.trainable_weights)
    elif head.units != num_classes:
      raise ValueError(f"Task {task!r} shares a classifier with {head.units} classes; it has "
                       f"{num_classes}. Tasks sharing a classifier need the same classes (or "
                       f"drop last_layer(shared=true)).")
    return head

  def head_is_shared(self, name: str) -> bool:
    return self.shared_head is not None and self.tasks[name].head is self.shared_head

  def remove(self, name: str):
    """Forgets task `name` (its layers stay wherever else they are referenced)."""
    del self.tasks[name]
    self._kinds.pop(name, None)

  def activate(self, name: str, variables=None) -> TaskModel:
    """Sets `trainable` flags for training task `name`; returns it. Once per phase.

    The flags matter because a Keras BatchNormalization normalises with batch statistics only
    when called with training=True AND trainable. By default the shared base is trainable only
    if the task has train_base; the task's patch layers are trainable; its classifier only with
    'last_layer'. A frozen base BN runs in inference mode (moving statistics), so training one
    task never moves the base's statistics.

    With `variables` (a phase that trains an explicit subset), exactly the layers owning one
    of them are trainable; every other layer of the task runs in inference mode.
    """
    task = self.tasks[name]
    if variables is not None:
      wanted = {id(v) for v in variables}
      task.model.trainable = False
      for layer in patches.all_layers(task.model):
        if not isinstance(layer, keras.Model) and any(id(v) in wanted for v in layer.weights):
          layer.trainable = True
      for layer in self.base.layers:  # a wrapper's setter recursed into its shared layer
        layer.trainable = any(id(v) in wanted for v in layer.weights)
      return task
    task.model.trainable = True               # undo a previous phase's subset
    for layer in task.patched.model.layers:   # patches and private copies first: their setter
      layer.trainable = True                  # recurses into wrapped (shared) layers ...
    for layer in self.base.layers:            # ... which the base flags then override.
      layer.trainable = task.spec.patch.train_base
    task.head.trainable = task.spec.patch.train_head
    kinds = self._kinds[name]                 # the setter also re-enabled what a patch keeps
    head = {id(v) for v in task.head.weights}  # fixed (bn_stats' gamma and beta)
    for v in self.task_variables(name):
      if v.trainable and not kinds[id(v)][1] and id(v) not in head:
        v.trainable = False
    return task

  def batch_statistics_layers(self, name: str) -> list:
    """The BN layers that task `name` trains with batch statistics (call after activate)."""
    out = []
    for layer in patches.all_layers(self.tasks[name].model):
      if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
        if getattr(layer, "uses_batch_statistics", True):
          out.append(layer)
    return out

  def recompute_first_layers(self, name: str) -> list:
    """Task `name`'s BN layers whose statistics are recomputed before training, then kept."""
    return [layer for layer in patches.all_layers(self.tasks[name].model)
            if getattr(layer, "recomputes_statistics_first", False)]

  def _kind_layers(self, name: str):
    """[(PatchKind, its options, [task layers])] of task `name`'s patch kinds."""
    task = self.tasks[name]
    return [(k, patches.options(task.spec.patch, k.name),
             [layer for layer, _, kind in task.patched.patch_layers if kind == k.name])
            for k in patches.kinds_of(task.spec.patch)]

  def penalty(self, name: str, step=None):
    """The loss terms task `name`'s patch kinds add (TAPS's L1 on its scores), summed; None
    when there are none. Call inside the gradient tape; `step` is the task's step counter."""
    terms = [k.penalty(layers, opts, step) for k, opts, layers in self._kind_layers(name)
             if k.penalty is not None]
    terms = [t for t in terms if t is not None]
    return keras.ops.sum(keras.ops.stack(terms)) if terms else None

  def rate_groups(self, name: str) -> dict:
    """{group: (variables, learning rate)}: task `name`'s variables that a patch kind trains at
    their own rate (TAPS's scores at `score_lr`)."""
    groups = {}
    for k, opts, layers in self._kind_layers(name):
      if k.rate is None:
        continue
      for layer in layers:
        found = k.rate(layer, opts)
        if found:
          group, variables, lr = found
          groups.setdefault(group, ([], lr))[0].extend(variables)
    return groups

  def omitted_variables(self, name: str) -> list:
    """Task `name`'s variables that change no output now and so need not be stored (the
    delta of a layer TAPS gated off); a patch file records them as zeros."""
    out = []
    for layer in self.tasks[name].patched.task_layers():
      out.extend(getattr(layer, "omitted_variables", list)())
    return out

  def variable_kinds(self, name: str) -> dict:
    """{id(variable): (component, learned)} for task `name`'s own variables.

    The component is the patch kind whose layer owns the variable, or 'last_layer' for the
    classifier; `learned` says whether training changes it by gradient (the patch layer
    declares it; read when the task was added). Changes no model state.
    """
    return self._kinds[name]

  def trainable_variables(self, name: str) -> list:
    """Exactly what training task `name` changes by gradient, explicitly.

    Its patch's learned variables, its classifier if it trains it (`last_layer`), and the
    shared base's learnable variables if it trains the base (`train_base`). Independent of the
    layers' trainable flags.
    """
    task = self.tasks[name]
    kinds = self._kinds[name]
    wanted = {id(v) for v in self.task_variables(name) if kinds[id(v)][1]}
    if task.spec.patch.train_base:
      wanted |= {id(v) for v in self._learnable_shared}
    if task.spec.patch.train_head and self.head_is_shared(name):
      wanted |= {id(v) for v in task.head.trainable_weights}
    # In the model's own variable order: optimizer slots are checkpointed by position, so
    # this keeps checkpoints written by earlier versions (model.trainable_variables) resumable.
    return [v for v in _unique(task.model.variables) if id(v) in wanted]

  def _read_variable_kinds(self, name: str) -> dict:
    task = self.tasks[name]
    out = {}
    for layer, _, kind_name in task.patched.patch_layers:
      learned, fixed = patches.kind(kind_name).variables(layer)
      for v in learned:
        out.setdefault(id(v), (kind_name, True))
      for v in fixed:
        out.setdefault(id(v), (kind_name, False))
    if not self.head_is_shared(name):
      for v in task.head.weights:
        out[id(v)] = ("last_layer", task.spec.patch.train_head)
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
      if id(v) in own:
        sites[id(v)] = f"head/{v.name}"
    for task_layer, base_layer, _ in task.patched.patch_layers:
      claim(f"base.{index[id(base_layer)]}", task_layer)
    missing = own - set(sites)
    if missing:
      raise ValueError(f"Task {name!r}: {len(missing)} task variables have no known site.")
    return sites

  def file_variables(self, name: str) -> dict:
    """{site: variable}: what task `name`'s patch file holds (its own variables; a shared
    classifier is stored once, with the base)."""
    sites = self.variable_sites(name)
    return {sites[id(v)]: v for v in self.task_variables(name)}

  def used_shared_variables(self) -> list:
    """The shared variables some task's model computes with (a base layer every task patches
    over, e.g. each base BN under per-task scale-and-bias, is stored but unused)."""
    used = set()
    for task in self.tasks.values():
      used |= {id(v) for v in task.model.variables}
    return [v for v in self.shared_variables() if id(v) in used]

  def shared_head_fingerprint(self) -> str:
    """A hash of the shared classifier's values ('' when no task shares one)."""
    return weights_fingerprint(self.shared_head.weights) if self.shared_head is not None else ""

  def identity(self) -> dict:
    """What a patch file records about the base, to refuse loading onto another base."""
    spec = self.backbone.spec
    return {
        "backbone": spec.name,
        "alpha": spec.alpha,
        "input_size": self.backbone.input_size,
        "architecture": architecture_fingerprint(self.base),
        "weights": weights_fingerprint(_unique(self.base.variables)),
    }
