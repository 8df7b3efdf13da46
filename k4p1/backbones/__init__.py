"""Backbones: a Keras functional feature extractor (image -> feature map) plus its preprocessing.

Builders are registered by name in BACKBONES (vision.py: keras.applications and Keras model
files; ssd.py: the Object Detection API's MobileNetV2 featurizer, read by tf1_import.py;
vit.py: a compact ViT; audio.py: the keyword-spotting BC-ResNet and Res15 on log-mel input);
`build_backbone(spec)` dispatches on `spec.name`. A new backbone is a registered builder
(base.py says what one returns); every module here is imported by the package itself.

Example:
  spec = BackboneSpec(name="mobilenet_v2", alpha=0.35, input_size=96, weights="none")
  backbone = build_backbone(spec)
  backbone.model.output.shape   # (None, 3, 3, 1280)
"""

import importlib
import pkgutil

from k4p1.backbones.base import (BACKBONES, Backbone, architecture_fingerprint,  # noqa: F401
                                 build_backbone, for_sizes, output_stride, register_backbone,
                                 resolve_weights, seeded_initialisation, weights_fingerprint)

for _module in pkgutil.iter_modules(__path__):  # the builders register themselves on import
  importlib.import_module(f"{__name__}.{_module.name}")
