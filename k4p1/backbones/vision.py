"""keras.applications backbones and backbones read from Keras model files.

Example:
  build_backbone(BackboneSpec("mobilenet_v2", alpha=0.35, input_size=96, weights="none"))
"""

from __future__ import annotations

import os

import keras

from k4p1.backbones.base import Backbone, register_backbone, resolve_weights, seeded_initialisation
from k4p1.config import BackboneSpec
from k4p1.errors import ConfigError


def _application(cls, spec: BackboneSpec, default_size: int, **kwargs) -> keras.Model:
  size = spec.input_size or default_size
  weights = resolve_weights(spec)
  try:
    with seeded_initialisation(spec.seed):
      return cls(input_shape=(size, size, 3), include_top=False, weights=weights, **kwargs)
  except Exception as e:  # Keras raises several types for download and file problems.
    if weights == "imagenet":
      raise ConfigError(
          f"Could not load ImageNet weights for {cls.__name__} ({type(e).__name__}: {e}). "
          f"Without internet, place the Keras weights file under $KERAS_HOME/models/ "
          f"(default ~/.keras/models/), or set backbone.weights=PATH or backbone.weights=none."
      ) from e
    if weights is not None:
      raise ConfigError(
          f"Could not load weights file {weights!r} into {cls.__name__} without its top "
          f"({type(e).__name__}: {e}). The file must hold the include_top=False weights for "
          f"alpha={spec.alpha}; for a full model use backbone.name=keras_file.") from e
    raise


@register_backbone("mobilenet_v2")
def build_mobilenet_v2(spec: BackboneSpec) -> Backbone:
  model = _application(keras.applications.MobileNetV2, spec, 224, alpha=spec.alpha)
  return Backbone(model, model.input_shape[1], spec.preprocessing or "tf", spec)


@register_backbone("inception_v3")
def build_inception_v3(spec: BackboneSpec) -> Backbone:
  model = _application(keras.applications.InceptionV3, spec, 299)
  return Backbone(model, model.input_shape[1], spec.preprocessing or "tf", spec)


_CAFFE = ("ResNet50", "ResNet101", "ResNet152", "VGG16", "VGG19")
_TORCH = ("DenseNet121", "DenseNet169", "DenseNet201")
_NONE = ("EfficientNet", "ConvNeXt", "ResNet50V2")  # include their own rescaling


@register_backbone("keras_application")
def build_keras_application(spec: BackboneSpec) -> Backbone:
  cls = getattr(keras.applications, spec.application, None)
  if cls is None or not callable(cls):
    raise ConfigError(f"keras.applications has no model {spec.application!r}. "
                      f"Examples: ResNet50, MobileNetV3Small, EfficientNetB0.")
  model = _application(cls, spec, 224)
  name = spec.application
  default = ("caffe" if name in _CAFFE else "torch" if name in _TORCH
             else "none" if name.startswith(_NONE) else "tf")
  return Backbone(model, model.input_shape[1], spec.preprocessing or default, spec)


@register_backbone("keras_file")
def build_keras_file(spec: BackboneSpec) -> Backbone:
  """A full Keras model file whose nested functional model (e.g. mobilenetv2_1.00_160) is used."""
  if not os.path.exists(spec.model_file):
    raise ConfigError(f"backbone.model_file not found: {spec.model_file!r}.")
  outer = keras.models.load_model(spec.model_file, compile=False)
  nested = [l for l in outer.layers if isinstance(l, keras.Model)]
  if spec.nested_model:
    nested = [l for l in nested if l.name == spec.nested_model]
    if not nested:
      names = [l.name for l in outer.layers if isinstance(l, keras.Model)]
      raise ConfigError(f"{spec.model_file} has no nested model {spec.nested_model!r}. "
                        f"Nested models: {names}")
  if len(nested) != 1:
    raise ConfigError(
        f"{spec.model_file}: expected exactly one nested backbone model, found "
        f"{[l.name for l in nested]}. Set backbone.nested_model to pick one.")
  model = _unfrozen(nested[0])
  size = model.input_shape[1]
  if spec.input_size and spec.input_size != size:
    model = _at_input_size(model, spec.input_size, spec.model_file)
    size = spec.input_size
  return Backbone(model, size, spec.preprocessing or "tf", spec)


def _unfrozen(model: keras.Model) -> keras.Model:
  """`model` rebuilt with every layer trainable, same weights.

  A file saved with frozen layers (`trainable=False`, as a classifier trained on a frozen base
  is) creates their variables as non-trainable, which no later `trainable = True` undoes in
  Keras 3. Which weights a task trains is its patch's choice (TaskModels), not the file's, so
  the layers are rebuilt from their configs without the flag; BN statistics stay
  non-trainable, as every BN creates them.
  """
  config = model.get_config()
  frozen = [layer for layer in config["layers"] if layer["config"].get("trainable") is False]
  if not frozen:
    return model
  for layer in frozen:
    layer["config"]["trainable"] = True
  clone = model.__class__.from_config(config)
  clone.set_weights(model.get_weights())
  return clone


def _at_input_size(model: keras.Model, size: int, where: str) -> keras.Model:
  """The same layers and weights on a size x size input (convolutional backbones only).

  Padding layers keep the padding the file computed for its own size; for MobileNetV2 that is
  what keras.applications computes for any size whose stride-2 inputs are even (e.g. 64, 96,
  128, 224), which tests/backbones_test.py checks.
  """
  try:
    clone = keras.models.clone_model(model, input_tensors=keras.Input((size, size,
                                                                       model.input_shape[-1])))
  except Exception as e:  # Keras raises ValueError/TypeError for shape-bound layers
    raise ConfigError(
        f"{where}: its backbone takes {model.input_shape[1]}x{model.input_shape[2]} inputs and "
        f"cannot be rebuilt at {size}x{size} ({type(e).__name__}: {e}). Set "
        f"backbone.input_size=0 to use its own size.") from e
  clone.set_weights(model.get_weights())
  return clone
