"""What a backbone is, and the helpers every builder shares (weights, seeding, resolutions,
fingerprints). The builders live beside this file, one module per family, each registering into
BACKBONES; a user's builder registers from a plug-in module (k4p1.plugins) the same way.

Example:
  @register_backbone("tiny_cnn")
  def build_tiny_cnn(spec: BackboneSpec) -> Backbone: ...
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
from k4p1.frontends import ImageFrontend, InputSpec, LogMelFrontend
from k4p1.registry import Registry

BACKBONES = Registry("backbone", field="backbone.name")
register_backbone = BACKBONES.register


@dataclasses.dataclass
class Backbone:
  """A feature extractor and what a caller needs to feed it.

  Attributes:
    model: functional keras.Model, float image batch (already preprocessed) -> feature map;
      for audio, log-mel features [batch, bands, frames, 1] -> feature map.
    input_size: square input resolution; for audio, the clip length in samples.
    preprocessing: 'tf' ([-1, 1]), 'caffe', 'torch' or 'none': the image frontend's mode.
    spec: the spec it was built from.
    audio: LogMelFrontend options of an audio backbone (its inputs are waveforms); None for
      images.
  """
  model: keras.Model
  input_size: int
  preprocessing: str
  spec: BackboneSpec
  audio: dict | None = None

  @property
  def input_spec(self) -> InputSpec:
    """What a task model on this backbone takes (before its frontend)."""
    if self.audio is not None:
      return InputSpec.audio(self.input_size, self.audio.get("sample_rate", 16000))
    return InputSpec.image(self.input_size, channels=self.model.input_shape[-1])

  def frontend(self, name: str = "preprocess") -> keras.layers.Layer:
    """A new frontend layer: raw pixels to this backbone's input range, or waveforms to
    log-mel features."""
    if self.audio is not None:
      return LogMelFrontend(**self.audio, name=name)
    return ImageFrontend(self.preprocessing, name=name)


def resolve_weights(spec: BackboneSpec):
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


def build_backbone(spec: BackboneSpec) -> Backbone:
  """Builds the backbone named by `spec.name` (a BACKBONES entry)."""
  return BACKBONES.lookup(spec.name)(spec)


def output_stride(backbone: Backbone) -> int:
  """Input size / feature-map size at the backbone's own resolution (32 for MobileNetV2)."""
  return max(1, backbone.input_size // max(1, int(backbone.model.output_shape[1] or 1)))


def for_sizes(backbone: Backbone, sizes) -> Backbone:
  """`backbone`, able to run at every square size in `sizes` with the same layers.

  Unchanged when every size is its own. Otherwise the functional model is rebuilt with the
  same layers on a (None, None, channels) input, weights copied, before any task shares it.
  Every size must be a multiple of the output stride: then every stride-2 layer sees an even
  size and its padding is what keras.applications computes at that size (tested at MobileNetV2's
  224, 192, 160, 128, 96).

  Raises:
    ConfigError: a size that is not a multiple of the output stride, or a backbone whose
      layers are bound to one input size (a ViT's position embedding).
  """
  own = backbone.input_size
  if backbone.audio is not None and any(s and int(s) != own for s in sizes):
    raise ConfigError(f"Audio backbones run on clips of backbone.input_size={own} samples; "
                      f"tasks cannot set their own input_size. Received: {sorted(set(sizes))}")
  sizes = sorted({int(s) for s in sizes if s and int(s) != own})
  if not sizes:
    return backbone
  stride = output_stride(backbone)
  bad = [s for s in sizes if s % stride]
  if bad:
    raise ConfigError(
        f"Task input sizes {bad} are not multiples of {stride}, the output stride of "
        f"{backbone.model.name} (it runs at {own}px). Use multiples of {stride} (e.g. "
        f"{', '.join(str(stride * k) for k in (3, 4, 5, 6, 7))}) so every stride-2 layer sees an "
        f"even size.")
  model = backbone.model
  channels = model.input_shape[-1]
  try:
    flexible = keras.models.clone_model(model, input_tensors=keras.Input((None, None, channels)))
    for s in sizes:
      flexible.compute_output_spec(keras.KerasTensor((1, s, s, channels)))
  except Exception as e:  # shape-bound layers raise ValueError/TypeError
    raise ConfigError(
        f"{model.name} cannot run at sizes {sizes} besides its own {own}px "
        f"({type(e).__name__}: {e}). Give every task backbone.input_size (tasks.*.input_size=0), "
        f"or use a convolutional backbone.") from e
  flexible.set_weights(model.get_weights())
  return dataclasses.replace(backbone, model=flexible)


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
