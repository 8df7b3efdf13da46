"""Inputs: what a task model takes (`InputSpec`) and the frontend that prepares it.

A task model is `frontend -> backbone -> head`. The `InputSpec` says what enters the model
(modality, shape, dtype) and what a serving signature accepts (uint8 images of any size, resized
inside); the frontend layer maps raw input to what the backbone expects (for images: pixels in
[0, 255] to the backbone's range) and has a plain-Keras form for folded, deployable models.
Image frontends are here; an audio (log-mel) frontend will be another registered entry.

Example:
  spec = InputSpec.image(224)
  frontend = ImageFrontend("tf")             # [0, 255] -> [-1, 1]
  plain = frontend.to_plain()                # [keras.layers.Rescaling(...)]
  x = spec.to_model_input(uint8_images)      # any size -> float32 [b, 224, 224, 3]
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from k4p1.registry import Registry

FRONTENDS = Registry("frontend", field="input modality")


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What a task model takes.

  Attributes:
    modality: 'image' (audio later).
    shape: the model input without the batch axis, e.g. (224, 224, 3).
    dtype: the model input's dtype (images: float32 pixels in [0, 255]).
    serving_dtype: what serving signatures accept (images: uint8, any height and width).
  """
  modality: str = "image"
  shape: tuple = (224, 224, 3)
  dtype: str = "float32"
  serving_dtype: str = "uint8"

  @classmethod
  def image(cls, size: int, channels: int = 3) -> "InputSpec":
    return cls("image", (int(size), int(size), int(channels)))

  @property
  def size(self) -> int:
    """The square image resolution."""
    return int(self.shape[0])

  def keras_input(self, name: str = "images") -> keras.KerasTensor:
    return keras.Input(self.shape, dtype=self.dtype, name=name)

  def tensor_spec(self, name: str = "images") -> tf.TensorSpec:
    """A batch of model inputs (what TFLite signatures and evaluation take)."""
    return tf.TensorSpec([None, *self.shape], self.dtype, name=name)

  def serving_spec(self, name: str = "images") -> tf.TensorSpec:
    """What a SavedModel signature accepts: uint8 images of any size."""
    return tf.TensorSpec([None, None, None, self.shape[-1]], self.serving_dtype, name=name)

  def to_model_input(self, raw):
    """Serving input -> model input: cast, and resize bilinearly to the model's size."""
    return tf.image.resize(tf.cast(raw, tf.float32), self.shape[:2], method="bilinear")


@keras.saving.register_keras_serializable(package="k4p1", name="Preprocess")
class ImageFrontend(keras.layers.Layer):
  """Maps float pixels in [0, 255] to what a backbone expects. No variables.

  Modes: 'tf' ([-1, 1]), 'caffe' (BGR, ImageNet means subtracted), 'torch' ([0, 1], ImageNet
  mean and std), 'none'. (Registered as 'k4p1>Preprocess', its earlier name, so saved models
  keep loading.)

  Example:
    ImageFrontend("tf")(np.full((1, 2, 2, 3), 255.0))   # -> all 1.0
  """

  MODES = ("tf", "caffe", "torch", "none")

  def __init__(self, mode: str = "tf", **kwargs):
    super().__init__(**kwargs)
    if mode not in self.MODES:
      raise ValueError(f"Preprocess mode must be one of {self.MODES}. Received: mode={mode!r}")
    self.mode = mode

  def call(self, x):
    x = keras.ops.cast(x, "float32")
    if self.mode == "tf":
      return x * (1.0 / 127.5) - 1.0  # what keras.layers.Rescaling computes, bit for bit
    if self.mode == "caffe":
      x = x[..., ::-1]
      return x - keras.ops.convert_to_tensor([103.939, 116.779, 123.68])
    if self.mode == "torch":
      x = x / 255.0
      return (x - keras.ops.convert_to_tensor([0.485, 0.456, 0.406])) / \
          keras.ops.convert_to_tensor([0.229, 0.224, 0.225])
    return x

  def to_plain(self, layers=None) -> list:
    """Plain layers computing the same (for folded models: no k4p1 class).

    Args:
      layers: the module to build them from: `keras.layers` (default) or `tf_keras.layers`
        (the QAT subprocess builds its tf_keras model from this same definition).
    """
    layers = layers or keras.layers
    if self.mode == "tf":
      return [layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")]
    if self.mode == "torch":
      std = np.array([0.229, 0.224, 0.225])
      return [layers.Rescaling(1.0 / 255.0, name="preprocess_scale"),
              layers.Normalization(mean=[0.485, 0.456, 0.406], variance=std ** 2,
                                   name="preprocess")]
    if self.mode == "caffe":  # RGB -> BGR and mean subtraction as one exact 1x1 convolution
      conv = layers.Conv2D(3, 1, name="preprocess")
      conv.build((None, None, None, 3))
      swap = np.zeros((1, 1, 3, 3), np.float32)
      for i in range(3):
        swap[0, 0, i, 2 - i] = 1.0
      conv.set_weights([swap, -np.array([103.939, 116.779, 123.68], np.float32)])
      return [conv]
    return []

  def get_config(self):
    return {**super().get_config(), "mode": self.mode}


FRONTENDS.register("image", ImageFrontend)
