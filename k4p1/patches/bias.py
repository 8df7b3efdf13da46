"""Bias-only patch (BitFit, Ben Zaken et al. 2022): a task learns only bias terms.

The worked example of README "Extending k4p1": this file is the whole kind. It adds a learned
per-channel bias delta after every BatchNormalization (the task's own BN beta, as beta + delta)
and after every conv/dense layer that has a bias and a linear activation. Gamma, statistics and
kernels stay shared. A fresh patch adds zeros, so it computes exactly what the base computes;
`to_plain` adds the delta into the layer's beta or bias, so a folded task is an ordinary model.

Example:
  models.add(TaskSpec("cars", dataset, parse_patch("bias,last_layer")), num_classes=196)
"""

from __future__ import annotations

import keras
import numpy as np

from k4p1.patches.base import ChannelWrapperPatch, PATCH_KINDS, PatchKind, build_like, to_plain

_BIASED = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


@keras.saving.register_keras_serializable(package="k4p1")
class BiasPatch(ChannelWrapperPatch):
  """y = layer(x) + delta, per output channel; `layer` (BN, or a biased linear conv/dense) is
  shared and untouched."""

  kind = "bias"
  channel_weights = (("delta", "bias_delta", "zeros"),)

  def call(self, inputs, training=None, mask=None):
    if isinstance(self.layer, keras.layers.BatchNormalization):
      return self.layer(inputs, training=training, mask=mask) + self.delta
    return self.layer(inputs) + self.delta

  def to_plain(self, name: str) -> keras.layers.Layer:
    inner = to_plain(self.layer, name)
    delta = self.delta.numpy()
    if isinstance(inner, keras.layers.BatchNormalization):
      plain = build_like(keras.layers.BatchNormalization.from_config(
          {**inner.get_config(), "center": True, "scale": True}), inner)
      gamma = inner.gamma.numpy() if inner.scale else np.ones_like(delta)
      beta = inner.beta.numpy() if inner.center else np.zeros_like(delta)
      plain.set_weights([gamma, beta + delta, inner.moving_mean.numpy(),
                         inner.moving_variance.numpy()])
      return plain
    inner.bias.assign(inner.bias.numpy() + delta)
    return inner


def _has_linear_bias(layer, graph, options=None) -> bool:
  if isinstance(layer, keras.layers.BatchNormalization):
    return True
  return bool(getattr(layer, "use_bias", False)) and \
      getattr(layer.activation, "__name__", "") == "linear"


PATCH_KINDS.register("bias", PatchKind(
    name="bias",
    description="BitFit: a learned bias delta on every BN and biased linear conv/dense layer",
    targets=(keras.layers.BatchNormalization,) + _BIASED,
    build=lambda layer, task, options: BiasPatch(layer, task=task, base_name=layer.name),
    applies=_has_linear_bias,
    conflicts=("scale_bias", "bn_stats"),
    target_text="BatchNormalization or biased conv/dense",
    order=50))
