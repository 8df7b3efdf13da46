"""The depthwise-convolution patch (the paper's DW patch): a task's own DepthwiseConv2D kernels.

Example:
  patch = DepthwisePatch.from_base(model.get_layer("block_1_depthwise"), task="cars")
"""

from __future__ import annotations

import keras

from k4p1.patches.base import PATCH_KINDS, PatchKind, PatchLayer, plain_config


@keras.saving.register_keras_serializable(package="k4p1")
class DepthwisePatch(PatchLayer, keras.layers.DepthwiseConv2D):
  """A task's own DepthwiseConv2D."""

  kind = "depthwise"

  def __init__(self, task: str, base_name: str = "", **kwargs):
    super().__init__(**kwargs)
    self._init_patch(task, base_name)

  @classmethod
  def from_base(cls, base: keras.layers.DepthwiseConv2D, task: str) -> "DepthwisePatch":
    config = base.get_config()
    config.pop("name", None)
    config.pop("trainable", None)
    return cls(task=task, base_name=base.name, name=cls.patch_name(base.name, task), **config)

  def learned_variables(self) -> list:
    return [self.kernel] + ([self.bias] if self.use_bias else [])

  def init_from_base(self, base):
    self.kernel.assign(base.kernel)
    if self.use_bias:
      self.bias.assign(base.bias)

  def to_plain(self, name: str) -> keras.layers.DepthwiseConv2D:
    plain = keras.layers.DepthwiseConv2D.from_config({**plain_config(self), "name": name})
    plain.build_from_config(self.get_build_config())
    plain.set_weights(self.get_weights())
    return plain

  def get_config(self):
    return {**super().get_config(), **self._patch_config()}


PATCH_KINDS.register("depthwise", PatchKind(
    name="depthwise",
    description="per-task copy of every DepthwiseConv2D kernel (the paper's DW patch)",
    targets=(keras.layers.DepthwiseConv2D,),
    build=lambda layer, task, options: DepthwisePatch.from_base(layer, task),
    target_text="DepthwiseConv2D",
    order=30))
