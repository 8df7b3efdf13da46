"""A plug-in from outside k4p1 (tests/plugin_test.py): a backbone, a patch kind and a sampler,
registered exactly as a user's module would, named by the config field `plugins` or
$K4P1_PLUGINS.
"""

import keras
import numpy as np

from k4p1.backbones import BACKBONES, Backbone
from k4p1.patches.base import PATCH_KINDS, PatchKind
from k4p1.patches.bias import BiasPatch
from k4p1.methods.multitask.samplers import SAMPLERS, Sampler


@BACKBONES.register("toy_cnn")
def build_toy_cnn(spec):
  """Two 3x3 convolutions with BN: a backbone k4p1 does not ship."""
  keras.utils.set_random_seed(spec.seed)
  size = spec.input_size or 32
  inputs = keras.Input((size, size, 3))
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
  x = keras.layers.BatchNormalization(name="bn1")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv2")(x)
  x = keras.layers.BatchNormalization(name="bn2")(x)
  x = keras.layers.ReLU()(x)
  return Backbone(keras.Model(inputs, x, name="toy_cnn"), size, "tf", spec)


PATCH_KINDS.register("toy_bn_bias", PatchKind(
    name="toy_bn_bias", description="a learned bias delta after every BN (BitFit on BN only)",
    targets=(keras.layers.BatchNormalization,),
    build=lambda layer, task, options: BiasPatch(layer, task=task, base_name=layer.name),
    conflicts=("scale_bias", "bn_stats", "bias"), target_text="BatchNormalization"))


@SAMPLERS.register("toy_smallest_first")
class SmallestFirst(Sampler):
  """Tasks drawn in inverse proportion to their training examples."""

  def probabilities(self, step: int = 1) -> np.ndarray:
    weights = 1.0 / self.sizes
    return weights / weights.sum()
