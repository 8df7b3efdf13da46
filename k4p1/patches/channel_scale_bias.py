"""Explicit per-channel scale and bias after conv/dense layers that have no BN after them.

A ScaleBiasPatch cannot reach the scale and bias of a layer without BatchNormalization after
it (a plain network, the classifier of a backbone): this kind wraps such a layer,
y = layer(x) * scale + bias, initialised to the identity. The wrapped layer stays shared.

Example:
  patch = ChannelScaleBiasPatch(model.get_layer("predictions"), task="flowers")
"""

from __future__ import annotations

import keras
import numpy as np

from k4p1.patches.base import (PATCH_KINDS, ChannelWrapperPatch, PatchKind, build_like,
                               scale_output_channels, to_plain)


@keras.saving.register_keras_serializable(package="k4p1")
class ChannelScaleBiasPatch(ChannelWrapperPatch):
  """y = layer(x) * scale + bias, per output channel; `layer` is shared and untouched."""

  kind = "channel_scale_bias"
  channel_weights = (("scale", "scale", "ones"), ("bias", "bias", "zeros"))

  def call(self, inputs, training=None):
    return self.layer(inputs) * self.scale + self.bias

  def to_plain(self, name: str) -> keras.layers.Layer:
    """The wrapped layer's plain type with scale and bias multiplied into its weights."""
    inner = to_plain(self.layer, name)
    config = {**inner.get_config(), "use_bias": True}
    if config.get("activation", "linear") != "linear":
      raise ValueError(f"{self.name}: cannot fold a scale after the nonlinear activation "
                       f"{config['activation']!r} of {self.layer.name}.")
    plain = build_like(type(inner).from_config(config), self.layer)
    scale, bias = self.scale.numpy(), self.bias.numpy()
    inner_bias = inner.bias.numpy() if inner.use_bias else np.zeros_like(bias)
    if isinstance(inner, keras.layers.SeparableConv2D):  # the scale goes into the pointwise part
      plain.set_weights([inner.depthwise_kernel.numpy(), inner.pointwise_kernel.numpy() * scale,
                         inner_bias * scale + bias])
    else:
      plain.set_weights([scale_output_channels(inner.kernel.numpy(), inner, scale),
                         inner_bias * scale + bias])
    return plain


PATCH_KINDS.register("channel_scale_bias", PatchKind(
    name="channel_scale_bias",
    description="explicit per-channel scale and bias after conv/dense layers with no BN after "
                "them",
    targets=(keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
             keras.layers.Dense),
    build=lambda layer, task, options: ChannelScaleBiasPatch(layer, task=task,
                                                             base_name=layer.name),
    applies=lambda layer, graph, options: layer.name not in graph.followed_by_bn(),
    target_text="conv/dense layer without BN after it",
    order=40))
