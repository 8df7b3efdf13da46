"""Fine-tune the top of the network: the task gets private copies of the layers from one on.

The manual baseline TAPS is compared with (its Table 10, "Man. Freeze"): freeze everything
below a chosen layer and fine-tune everything from it to the output, at about the parameter
budget TAPS chose. Layers are in the base's graph order (keras `model.layers`); the copies are
plain Keras layers, as in `full`.

Example:
  parse_patch("top(start=block_15_expand),last_layer")   # MobileNetV2's last two blocks + Conv_1
"""

from __future__ import annotations

import dataclasses

import keras

from k4p1.errors import ConfigError
from k4p1.patches.base import PATCH_KINDS, PatchKind
from k4p1.patches.full import copy_layer, init_copy
from k4p1.registry import did_you_mean


@dataclasses.dataclass(frozen=True)
class TopOptions:
  """start: the first base layer the task fine-tunes (its own copy); every later one too."""
  start: str = ""

  def __post_init__(self):
    if not self.start:
      raise ValueError("top needs start=LAYER, the first layer to fine-tune, e.g. "
                       "top(start=block_15_expand)")


def _from_start(layer, graph, options) -> bool:
  names = list(graph.layers)
  if options.start not in graph.layers:
    raise ConfigError(f"top(start={options.start}): the base has no layer {options.start!r}."
                      f"{did_you_mean(options.start, names)} Its weight layers: "
                      f"{', '.join(n for n in names if graph.layers[n].weights)[:600]}")
  return names.index(layer.name) >= names.index(options.start)


PATCH_KINDS.register("top", PatchKind(
    name="top",
    description="private copies of every layer from `start` to the output, all trained "
                "(fine-tune the last blocks: TAPS's manual baseline)",
    targets=(keras.layers.Layer,),
    build=copy_layer,
    options=TopOptions,
    applies=_from_start,
    init=init_copy,
    conflicts=("scale_bias", "bn_stats", "depthwise", "bias", "channel_scale_bias", "taps",
               "full"),
    target_text="layer",
    describe=lambda options: f" (from {options.start})",
    order=85))
