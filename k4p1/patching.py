"""Patching: clone a base model so one task gets its own parameters at chosen layers.

`patch_model(base, task, patch)` clones `base` with `keras.models.clone_model(clone_function=...)`.
The clone function looks each layer up in PATCH_RULES (layer type -> patch kind); an unmatched
layer is returned as is, so it is *shared by identity* with the base and with every other task.
Adding a task therefore never touches another task's parameters.

Example:
  spec = parse_patch("scale_bias,depthwise,last_layer")
  patched = patch_model(base, "flowers", spec)
  patched.model(images)   # equals base(images) until the patch is trained
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import keras

from k4p1.config import PatchSpec
from k4p1.patch_layers import (PATCH_LAYER_TYPES, ChannelScaleBiasPatch, DepthwisePatch,
                               FusedBatchNormalization, ScaleBiasPatch)


@dataclasses.dataclass(frozen=True)
class PatchRule:
  """Which layers a patch kind applies to and how it makes the task's layer.

  Attributes:
    kind: a PATCH_KINDS key.
    layer_types: base layer classes it applies to.
    make: (layer, task, patch_spec) -> patch layer. `layer` may already be a patch layer when
      rules compose (a wrapping rule after a replacing one).
    applies: optional extra test (layer, context) -> bool.
  """
  kind: str
  layer_types: tuple
  make: Callable
  applies: Optional[Callable] = None


def _not_followed_by_bn(layer, context) -> bool:
  return layer.name not in context["followed_by_bn"]


PATCH_RULES = (
    PatchRule("scale_bias", (keras.layers.BatchNormalization,),
              lambda l, task, p: ScaleBiasPatch.from_base(l, task, p.statistics, learn=True)),
    PatchRule("bn_stats", (keras.layers.BatchNormalization,),
              lambda l, task, p: ScaleBiasPatch.from_base(l, task, "batch", learn=False)),
    PatchRule("depthwise", (keras.layers.DepthwiseConv2D,),
              lambda l, task, p: DepthwisePatch.from_base(l, task)),
    PatchRule("channel_scale_bias",
              (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
               keras.layers.Dense),
              lambda l, task, p: ChannelScaleBiasPatch(l, task=task, base_name=l.name),
              applies=_not_followed_by_bn),
)


def _inbound_layer_names(layer_config) -> set[str]:
  """Names of the layers feeding a layer, read from a functional model's config."""
  names = set()

  def visit(obj):
    if isinstance(obj, dict):
      if "keras_history" in obj:
        names.add(obj["keras_history"][0])
      for v in obj.values():
        visit(v)
    elif isinstance(obj, (list, tuple)):
      for v in obj:
        visit(v)

  visit(layer_config.get("inbound_nodes", []))
  return names


def layers_followed_by_bn(model: keras.Model) -> set[str]:
  """Names of the layers of `model` whose output feeds a BatchNormalization."""
  out = set()
  for lc in model.get_config()["layers"]:
    if lc["class_name"] in ("BatchNormalization", "k4p1>ScaleBiasPatch"):
      out |= _inbound_layer_names(lc)
  return out


@dataclasses.dataclass
class PatchedModel:
  """A task's view of the base: the clone plus which patch layer stands for which base layer."""
  model: keras.Model
  task: str
  patch: PatchSpec
  patch_layers: list  # [(patch_layer, base_layer)]
  private_copy: bool = False


def patch_model(base: keras.Model, task: str, patch: PatchSpec) -> PatchedModel:
  """Clones `base` for `task`, adding the task's patch layers (see module docstring).

  Args:
    base: a functional keras.Model (the shared backbone).
    task: task name; patch layers are named f"{base_layer}_{task}".
    patch: which kinds of patch to add. With 'full' every layer is copied (private weights).

  Returns:
    PatchedModel whose model computes exactly what `base` computes until trained.

  Raises:
    ValueError: `base` is not a functional model, or the patch matches no layer.
  """
  if not isinstance(base, keras.Model) or not hasattr(base, "get_config"):
    raise ValueError(f"patch_model needs a functional keras.Model. Received: {type(base).__name__}")
  if patch.has("full"):
    def copy_layer(layer):
      config = {**layer.get_config(), "name": f"{layer.name}_{task}"}
      if type(layer) is keras.layers.BatchNormalization:  # same BN kernel as the patches
        return FusedBatchNormalization.from_config(config)
      return layer.__class__.from_config(config)
    clone = keras.models.clone_model(base, clone_function=copy_layer)
    clone.set_weights(base.get_weights())
    return PatchedModel(clone, task, patch, [], private_copy=True)

  context = {}
  if patch.has("channel_scale_bias"):
    context["followed_by_bn"] = layers_followed_by_bn(base)
  pairs = []

  def clone_function(layer):
    out = layer
    for rule in PATCH_RULES:
      if (patch.has(rule.kind) and isinstance(layer, rule.layer_types)
          and (rule.applies is None or rule.applies(layer, context))):
        out = rule.make(out, task, patch)
        pairs.append((out, layer))
    return out  # unmatched layers: the same object, shared with the base

  clone = keras.models.clone_model(base, clone_function=clone_function)
  for patch_layer, base_layer in pairs:
    patch_layer.init_from_base(base_layer)
  body_kinds = patch.kinds - {"last_layer"}
  found = {p.kind for p, _ in pairs}
  missing = body_kinds - found
  if missing:
    raise ValueError(
        f"Patch kind(s) {sorted(missing)} match no layer of {base.name}: it has no "
        + ", ".join({"scale_bias": "BatchNormalization", "bn_stats": "BatchNormalization",
                     "depthwise": "DepthwiseConv2D",
                     "channel_scale_bias": "conv/dense layer without BN after it"}[k]
                    for k in sorted(missing))
        + " layers. Remove them from the task's patch.")
  return PatchedModel(clone, task, patch, pairs)


def patch_layers_of(model: keras.Model) -> list:
  """Every k4p1 patch layer inside `model` (searching nested models)."""
  found = []
  for layer in model.layers:
    if isinstance(layer, PATCH_LAYER_TYPES):
      found.append(layer)
    elif isinstance(layer, keras.Model):
      found.extend(patch_layers_of(layer))
  return found
