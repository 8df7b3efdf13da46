"""patch_model: a task's view of a shared base, made with keras.models.clone_model.

Each layer of the base is looked up in the task's patch kinds (a kind targets layer classes,
optionally with a further test on the graph); an unmatched layer is returned as is, so it is
*shared by identity* with the base and with every other task. Matched layers are replaced by
(or wrapped in) new, task-owned layers initialised from the base, so a freshly patched model
computes exactly what the base computes. Adding a task therefore never touches another task.

Example:
  patched = patch_model(base, "flowers", parse_patch("scale_bias,depthwise,last_layer"))
  patched.model(images)   # equals base(images) until the patch is trained
"""

from __future__ import annotations

import dataclasses

import keras

from k4p1.config import PatchSpec
from k4p1.patches import base as base_lib
from k4p1.patches.graph import PatchGraph


@dataclasses.dataclass
class PatchedModel:
  """A task's view of the base.

  Attributes:
    model: the patched functional model (shares every unpatched layer with the base).
    task: the task's name.
    patch: its PatchSpec.
    patch_layers: [(task layer, base layer, kind name)] in graph order; a wrapping kind after a
      replacing one lists both.
  """
  model: keras.Model
  task: str
  patch: PatchSpec
  patch_layers: list

  @property
  def private_copy(self) -> bool:
    return any(base_lib.kind(k).private_copy for k in self.patch.kinds)

  def task_layers(self) -> list:
    """The task's own layers (each once)."""
    seen, out = set(), []
    for layer, _, _ in self.patch_layers:
      if id(layer) not in seen:
        seen.add(id(layer))
        out.append(layer)
    return out


def patch_model(base: keras.Model, task: str, patch: PatchSpec) -> PatchedModel:
  """Clones `base` for `task`, adding the task's patch layers (see module docstring).

  Args:
    base: a functional keras.Model (the shared backbone).
    task: task name; patch layers are named f"{base_layer}_{task}".
    patch: which kinds of patch to add (checked against the registered kinds).

  Returns:
    PatchedModel whose model computes exactly what `base` computes until trained.

  Raises:
    ConfigError: an unknown kind or bad options.
    ValueError: `base` is not a functional model, or a patch kind matches no layer.
  """
  if not isinstance(base, keras.Model) or not hasattr(base, "get_config"):
    raise ValueError(f"patch_model needs a functional keras.Model. Received: {type(base).__name__}")
  base_lib.check(patch)
  kinds = base_lib.kinds_of(patch)
  options = {k.name: base_lib.options(patch, k.name) for k in kinds}
  needs_graph = any(k.applies is not None for k in kinds)
  graph = PatchGraph.of(base) if needs_graph else None
  triples = []

  def clone_function(layer):
    out = layer
    for k in kinds:
      if isinstance(layer, k.targets) and (k.applies is None or
                                           k.applies(layer, graph, options[k.name])):
        out = k.build(out, task, options[k.name])
        triples.append((out, layer, k.name))
    return out  # unmatched layers: the same object, shared with the base

  clone = keras.models.clone_model(base, clone_function=clone_function)
  for task_layer, base_layer, name in triples:
    base_lib.kind(name).initialise(task_layer, base_layer)
  missing = {k.name for k in kinds} - {name for _, _, name in triples}
  if missing:
    raise ValueError(
        f"Patch kind(s) {sorted(missing)} match no layer of {base.name}: it has no "
        + ", ".join(base_lib.kind(k).target_text for k in sorted(missing))
        + " layers. Remove them from the task's patch.")
  return PatchedModel(clone, task, patch, triples)


def patch_layers_of(model: keras.Model) -> list:
  """Every k4p1 patch layer inside `model` (searching nested models)."""
  found = []
  for layer in model.layers:
    if isinstance(layer, base_lib.PatchLayer):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(patch_layers_of(layer))
  return found
