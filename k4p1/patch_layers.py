"""Patch layers: a base layer's computation with task-specific parameters.

Every patch layer carries `task` (whose parameters these are), `base_name` (the base layer it
stands in for) and `init_from_base(base_layer)`, which copies the base's values so that a freshly
patched model computes exactly what the base computes. All are registered Keras serializables.

- ScaleBiasPatch: a BatchNormalization owned by one task (gamma, beta, moving statistics).
  `statistics='batch'` normalises with batch statistics while training and updates the task's
  moving statistics; 'frozen' always uses the moving statistics (gamma and beta still learn).
  `learn=False` gives the statistics-only baseline (nothing learned, statistics recomputed).
- DepthwisePatch: a DepthwiseConv2D owned by one task.
- ChannelScaleBiasPatch: wraps a shared layer with no BN after it: y = layer(x) * scale + bias.

Example:
  bn = model.get_layer("bn_Conv1")
  patch = ScaleBiasPatch.from_base(bn, task="flowers", statistics="frozen")
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class TaskPatchMixin:
  """What every patch layer shares: its task, its base layer, and initialisation from it."""

  kind = ""

  def _init_patch(self, task: str, base_name: str):
    if not task:
      raise ValueError(f"{type(self).__name__} needs a task name. Received: task={task!r}")
    self.task = task
    self.base_name = base_name

  def _patch_config(self):
    return {"task": self.task, "base_name": self.base_name}

  @staticmethod
  def patch_name(base_name: str, task: str) -> str:
    return f"{base_name}_{task}"


@keras.saving.register_keras_serializable(package="k4p1")
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """keras BatchNormalization computed with TensorFlow's fused kernel where it applies.

  Keras 3 builds BN from elementwise ops, so with batch statistics its backward pass makes
  several passes over every activation; the fused kernel makes one (measured on 2 CPU cores,
  32x112x112x96, forward + backward: 2.1x faster). With moving statistics the Keras ops are
  kept: in MobileNetV2 training steps they measured faster than the fused kernel (18.7 vs 16.6
  images/s, bench/train_throughput.py). Same semantics as Keras: moving statistics updated with
  `momentum`, moving variance from the biased batch variance. Falls back to Keras for masks,
  other ranks or axes, float16, or tiny epsilon.

  k4p1 uses it for every BN layer it creates (patches and the private copies of full
  fine-tuning), so speed comparisons between regimes compare like with like.
  """

  def _fusable(self, inputs, training, mask) -> bool:
    return (mask is None and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4 and self.axis in (-1, 3)
            and self.compute_dtype == "float32" and self.epsilon >= 1.001e-5
            and not getattr(self, "synchronized", False) and isinstance(training, (bool, type(None))))

  def call(self, inputs, training=None, mask=None):
    if not (training and self.trainable) or not self._fusable(inputs, training, mask):
      return super().call(inputs, training=training, mask=mask)
    channels = self.moving_mean.shape[0]
    gamma = self.gamma if self.scale else tf.ones((channels,), tf.float32)
    beta = self.beta if self.center else tf.zeros((channels,), tf.float32)
    x = tf.cast(inputs, tf.float32)
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=self.epsilon, is_training=True)
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    variance = variance * (n - 1.0) / tf.maximum(n, 2.0)  # the kernel's is unbiased
    m = self.momentum
    self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
    self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
    return y


@keras.saving.register_keras_serializable(package="k4p1")
class ScaleBiasPatch(TaskPatchMixin, FusedBatchNormalization):
  """A task's own BatchNormalization: the paper's scale-and-bias patch.

  Args:
    task: task name.
    base_name: name of the base BatchNormalization it replaces.
    statistics: 'batch' or 'frozen' (see module docstring).
    learn: train gamma and beta (False: statistics-only patch).
    **kwargs: BatchNormalization arguments (axis, momentum, epsilon, ...).
  """

  kind = "scale_bias"

  def __init__(self, task: str, base_name: str = "", statistics: str = "batch",
               learn: bool = True, **kwargs):
    kwargs["scale"] = True   # InceptionV3's BN has no gamma: the patch adds one.
    kwargs["center"] = True
    super().__init__(**kwargs)
    if statistics not in ("batch", "frozen"):
      raise ValueError(f"statistics must be 'batch' or 'frozen'. Received: statistics={statistics!r}")
    self._init_patch(task, base_name)
    self.statistics = statistics
    self.learn = learn
    if not learn:
      self.kind = "bn_stats"

  @classmethod
  def from_base(cls, base: keras.layers.BatchNormalization, task: str, statistics="batch",
                learn=True) -> "ScaleBiasPatch":
    config = base.get_config()
    for key in ("name", "scale", "center", "trainable"):
      config.pop(key, None)
    return cls(task=task, base_name=base.name, statistics=statistics, learn=learn,
               name=cls.patch_name(base.name, task), **config)

  def build(self, input_shape):
    super().build(input_shape)
    if not self.learn:
      self.gamma.trainable = False
      self.beta.trainable = False

  def init_from_base(self, base: keras.layers.BatchNormalization):
    channels = base.moving_mean.shape
    self.gamma.assign(base.gamma if base.scale else np.ones(channels, "float32"))
    self.beta.assign(base.beta if base.center else np.zeros(channels, "float32"))
    self.moving_mean.assign(base.moving_mean)
    self.moving_variance.assign(base.moving_variance)

  def call(self, inputs, training=None, mask=None):
    if self.statistics == "frozen":
      training = False
    return super().call(inputs, training=training, mask=mask)

  def get_config(self):
    config = super().get_config()
    config.pop("scale", None)
    config.pop("center", None)
    return {**config, **self._patch_config(), "statistics": self.statistics, "learn": self.learn}


@keras.saving.register_keras_serializable(package="k4p1")
class DepthwisePatch(TaskPatchMixin, keras.layers.DepthwiseConv2D):
  """A task's own DepthwiseConv2D: the paper's depthwise-convolution patch.

  Example:
    patch = DepthwisePatch.from_base(model.get_layer("block_1_depthwise"), task="cars")
  """

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

  def init_from_base(self, base):
    self.kernel.assign(base.kernel)
    if self.use_bias:
      self.bias.assign(base.bias)

  def get_config(self):
    return {**super().get_config(), **self._patch_config()}


@keras.saving.register_keras_serializable(package="k4p1")
class ChannelScaleBiasPatch(TaskPatchMixin, keras.layers.Wrapper):
  """y = layer(x) * scale + bias, per output channel; `layer` is shared and untouched.

  For layers with no BatchNormalization after them (whose scale and bias a ScaleBiasPatch
  cannot reach). Initialised to scale 1, bias 0, so the patched model equals the base.

  Example:
    patch = ChannelScaleBiasPatch(model.get_layer("predictions"), task="flowers")
  """

  kind = "channel_scale_bias"

  def __init__(self, layer, task: str, base_name: str = "", **kwargs):
    kwargs.setdefault("name", self.patch_name(layer.name, task))
    super().__init__(layer, **kwargs)
    self._init_patch(task, base_name or layer.name)

  def build(self, input_shape=None):
    if not self.layer.built:
      self.layer.build(input_shape)
    channels = self.layer.compute_output_shape(input_shape)[-1]
    self.scale = self.add_weight(name="scale", shape=(channels,), initializer="ones")
    self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
    self.built = True

  def init_from_base(self, base):
    self.scale.assign(np.ones(self.scale.shape, "float32"))
    self.bias.assign(np.zeros(self.bias.shape, "float32"))

  def call(self, inputs, training=None):
    return self.layer(inputs) * self.scale + self.bias

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def get_config(self):
    return {**super().get_config(), **self._patch_config()}


PATCH_LAYER_TYPES = (ScaleBiasPatch, DepthwisePatch, ChannelScaleBiasPatch)
