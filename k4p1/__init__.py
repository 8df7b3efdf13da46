"""k4p1: model patches for parameter-efficient transfer and multi-task learning (Keras 3).

Data flow: config -> backbones -> patching (patch_layers) -> model -> trainer -> export.
"""

__version__ = "0.1.0"
