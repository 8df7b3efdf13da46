"""The MobileNetV2 featurizer of a TF Object Detection API SSD / SSDLite detector, as Keras.

Example:
  build_backbone(BackboneSpec("ssd_mobilenet_v2", weights="frozen_inference_graph.pb"))
"""

from __future__ import annotations

import os

import keras

from k4p1.backbones.base import Backbone, register_backbone
from k4p1.config import BackboneSpec
from k4p1.errors import ConfigError


@register_backbone("ssd_mobilenet_v2")
def build_ssd_mobilenet_v2(spec: BackboneSpec) -> Backbone:
  """The MobileNetV2 featurizer of a TF Object Detection API SSD / SSDLite model, as Keras.

  `spec.weights` is the detector's frozen_inference_graph.pb or a TF1 checkpoint (prefix or
  folder); see k4p1.backbones.tf1_import. The Keras model is keras.applications.MobileNetV2 without its
  top, so every patch and training mode works on it unchanged. Inputs in [-1, 1] as in the OD
  API's preprocessor; 300x300 by default (the detector's own resolution).
  """
  from k4p1.backbones.tf1_import import TF1ImportError, load_mobilenet_v2
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
