"""Backbones: a Keras functional feature extractor (image -> feature map) plus its preprocessing.

Builders are registered by name; `build_backbone(spec)` dispatches on `spec.name`.

Example:
  spec = BackboneSpec(name="mobilenet_v2", alpha=0.35, input_size=96, weights="none")
  backbone = build_backbone(spec)
  backbone.model.output.shape   # (None, 3, 3, 1280)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random

import keras
import numpy as np

from k4p1.config import BackboneSpec
from k4p1.errors import ConfigError
from k4p1.frontends import ImageFrontend, InputSpec
from k4p1.registry import Registry

BACKBONES = Registry("backbone", field="backbone.name")
register_backbone = BACKBONES.register


@dataclasses.dataclass
class Backbone:
  """A feature extractor and what a caller needs to feed it.

  Attributes:
    model: functional keras.Model, float image batch (already preprocessed) -> feature map.
    input_size: square input resolution.
    preprocessing: 'tf' ([-1, 1]), 'caffe', 'torch' or 'none': the frontend's mode.
    spec: the spec it was built from.
  """
  model: keras.Model
  input_size: int
  preprocessing: str
  spec: BackboneSpec

  @property
  def input_spec(self) -> InputSpec:
    """What a task model on this backbone takes (before its frontend)."""
    return InputSpec.image(self.input_size, channels=self.model.input_shape[-1])

  def frontend(self, name: str = "preprocess") -> ImageFrontend:
    """A new frontend layer mapping raw pixels to this backbone's input range."""
    return ImageFrontend(self.preprocessing, name=name)


def _resolve_weights(spec: BackboneSpec):
  w = spec.weights
  if w in ("none", "None", "", None, "random"):
    return None
  if w == "imagenet":
    return "imagenet"
  if not os.path.exists(w):
    raise ConfigError(
        f"Backbone weights file not found: {w!r}. Set backbone.weights to an existing .h5 / "
        f".weights.h5 file, to 'imagenet' (downloads on a machine with internet, or reads "
        f"$KERAS_HOME/models/), or to 'none' for random weights.")
  return w


@contextlib.contextmanager
def seeded_initialisation(seed: int):
  """Seeds weight initialisation, then restores the Python, NumPy and Keras random state.

  Building a backbone must not reseed the rest of a run (which may build several). TensorFlow's
  own global seed cannot be read back; it is left set to `seed` (k4p1 seeds its tf.data and
  augmentation ops explicitly, so nothing of k4p1's depends on it).
  """
  from keras.src.backend.common import global_state
  from keras.src.random import seed_generator
  from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED
  saved = (random.getstate(), np.random.get_state(),
           global_state.get_global_attribute(GLOBAL_RANDOM_SEED),
           global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR))
  keras.utils.set_random_seed(seed)
  try:
    yield
  finally:
    random.setstate(saved[0])
    np.random.set_state(saved[1])
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, saved[2])
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, saved[3])


def _application(cls, spec: BackboneSpec, default_size: int, **kwargs) -> keras.Model:
  size = spec.input_size or default_size
  weights = _resolve_weights(spec)
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
  model = nested[0]
  size = model.input_shape[1]
  if spec.input_size and spec.input_size != size:
    model = _at_input_size(model, spec.input_size, spec.model_file)
    size = spec.input_size
  return Backbone(model, size, spec.preprocessing or "tf", spec)


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


@register_backbone("ssd_mobilenet_v2")
def build_ssd_mobilenet_v2(spec: BackboneSpec) -> Backbone:
  """The MobileNetV2 featurizer of a TF Object Detection API SSD / SSDLite model, as Keras.

  `spec.weights` is the detector's frozen_inference_graph.pb or a TF1 checkpoint (prefix or
  folder); see k4p1.tf1_import. The Keras model is keras.applications.MobileNetV2 without its
  top, so every patch and training mode works on it unchanged. Inputs in [-1, 1] as in the OD
  API's preprocessor; 300x300 by default (the detector's own resolution).
  """
  from k4p1.tf1_import import TF1ImportError, load_mobilenet_v2
  path = spec.weights
  if path in ("imagenet", "none", "None", "", "random", None):
    raise ConfigError(
        f"backbone.name='ssd_mobilenet_v2' reads its weights from a TF Object Detection API "
        f"model: set backbone.weights to its frozen_inference_graph.pb or TF1 checkpoint "
        f"(e.g. $K4P1_DATA_DIR/ssdlite_mobilenet_v2_person/frozen_inference_graph.pb). "
        f"Received: weights={path!r}")
  if not os.path.exists(path) and not os.path.exists(path + ".index"):
    raise ConfigError(f"SSD weights not found: {path!r}. Set backbone.weights to a "
                      f"frozen_inference_graph.pb, a TF1 checkpoint prefix or its folder.")
  size = spec.input_size or 300
  model = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=spec.alpha,
                                         include_top=False, weights=None)
  try:
    load_mobilenet_v2(model, path, use_moving_averages=spec.use_moving_averages)
  except TF1ImportError as e:
    raise ConfigError(str(e)) from e
  return Backbone(model, size, spec.preprocessing or "tf", spec)


def build_backbone(spec: BackboneSpec) -> Backbone:
  """Builds the backbone named by `spec.name` (a BACKBONES entry)."""
  return BACKBONES.lookup(spec.name)(spec)


def architecture_fingerprint(model: keras.Model) -> str:
  """A hash of layer classes and weight shapes, in order: equal for the same architecture.

  Names are left out on purpose: Keras numbers unnamed layers (InceptionV3's BN layers, input
  layers) per process, so the same architecture can carry different names.
  """
  h = hashlib.sha256()
  for layer in model.layers:
    h.update(type(layer).__name__.encode())
    for w in layer.weights:
      h.update(f"{w.name}{tuple(w.shape)};".encode())
  return h.hexdigest()[:16]


def weights_fingerprint(variables) -> str:
  """A hash of variable values (in the given order): equal only for identical weights."""
  h = hashlib.sha256()
  for v in variables:
    h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
  return h.hexdigest()[:16]
