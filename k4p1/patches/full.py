"""Full fine-tuning as a patch kind: the task gets a private copy of every layer, all trained.

The copies are plain Keras layers of the base's classes (BN layers on the fused kernel, like
every BN k4p1 creates), named `<base layer>_<task>`; their learned variables are the trainable
ones, the BN statistics are fixed.

Example:
  parse_patch("full,last_layer")   # the full fine-tuning baseline
"""

from __future__ import annotations

import keras

from k4p1.patches.base import PATCH_KINDS, PatchKind
from k4p1.patches.batchnorm import FusedBatchNormalization


def copy_layer(layer: keras.layers.Layer, task: str, options=None) -> keras.layers.Layer:
  """A new layer like `layer` (same class and config), named for the task; not yet built."""
  config = {**layer.get_config(), "name": f"{layer.name}_{task}"}
  config.pop("trainable", None)
  if type(layer) is keras.layers.BatchNormalization:  # the same BN kernel as the patches
    return FusedBatchNormalization.from_config(config)
  return layer.__class__.from_config(config)


def init_copy(copy: keras.layers.Layer, base: keras.layers.Layer):
  copy.set_weights(base.get_weights())


PATCH_KINDS.register("full", PatchKind(
    name="full",
    description="private copy of the whole backbone, all of it trained (full fine-tuning "
                "baseline)",
    targets=(keras.layers.Layer,),
    build=copy_layer,
    init=init_copy,
    private_copy=True,
    target_text="layer",
    order=90))
