"""Reading a functional model's graph: who feeds whom, by layer name.

Example:
  layers_followed_by_bn(model)   # {'Conv1', 'expanded_conv_depthwise', ...}
"""

from __future__ import annotations

import collections
import dataclasses

import keras


def inbound_layer_names(layer_config: dict) -> set[str]:
  """Names of the layers feeding a layer, read from a functional model's config entry."""
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


@dataclasses.dataclass
class PatchGraph:
  """Producers and consumers of every layer of a functional model (by name).

  Attributes:
    producers: layer name -> names of the layers feeding it.
    consumers: layer name -> how many layers it feeds.
    layers: layer name -> the layer.
  """
  producers: dict
  consumers: collections.Counter
  layers: dict

  @classmethod
  def of(cls, model: keras.Model) -> "PatchGraph":
    producers, consumers, layers = {}, collections.Counter(), {l.name: l for l in model.layers}
    for lc in model.get_config()["layers"]:
      inbound = inbound_layer_names(lc)
      producers[lc["name"]] = inbound
      for name in inbound:
        consumers[name] += 1
    return cls(producers, consumers, layers)

  def followed_by_bn(self) -> set[str]:
    """Names of the layers whose output feeds a BatchNormalization (or a BN patch)."""
    out = set()
    for name, layer in self.layers.items():
      if isinstance(layer, keras.layers.BatchNormalization):
        out |= self.producers[name]
    return out


def layers_followed_by_bn(model: keras.Model) -> set[str]:
  """Names of the layers of `model` whose output feeds a BatchNormalization."""
  return PatchGraph.of(model).followed_by_bn()


def all_layers(model: keras.Model):
  """Every layer of `model`, nested models' layers included (depth first)."""
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from all_layers(layer)
