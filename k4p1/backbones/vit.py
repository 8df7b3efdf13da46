"""A compact Vision Transformer (ViT-Ti/16 shape at alpha 1.0) built from Keras layers.

Attention is keras.layers.MultiHeadAttention (its query/key/value/output projections are the
EinsumDense layers TAPS gates) and the MLP two Dense layers, so every weight matrix of a block
is a layer a patch kind can reach. Built offline, with random weights or a `.weights.h5` of a
ViT trained by k4p1 (keras-hub's pretrained ViTs need a download; not used here).

Shape: patch embedding (a Conv2D with kernel = stride = patch), learned position embeddings,
`depth` pre-norm blocks (LayerNorm -> MHA -> residual, LayerNorm -> MLP (GELU) -> residual),
a final LayerNorm and the mean over tokens. alpha 1.0: width 192, 12 blocks, 3 heads, MLP 768
(ViT-Ti); alpha scales width (in steps of 64) and depth. Patches are 16 pixels from 128px up,
else 4 (a 32px input has 64 tokens).

Example:
  build_backbone(BackboneSpec("vit", alpha=0.35, input_size=32, weights="none"))
"""

from __future__ import annotations

import keras

from k4p1.backbones.base import Backbone, register_backbone, resolve_weights, seeded_initialisation
from k4p1.config import BackboneSpec
from k4p1.errors import ConfigError


def vit_shape(alpha: float, size: int) -> dict:
  """Width, depth, heads, MLP width and patch size of the ViT at `alpha` and `size`."""
  width = 64 * max(1, round(3 * alpha))
  return {"width": width, "depth": max(1, round(12 * alpha)), "heads": width // 64,
          "mlp": 4 * width, "patch": 16 if size >= 128 else 4}


@keras.saving.register_keras_serializable(package="k4p1")
class PositionEmbedding(keras.layers.Layer):
  """Adds a learned embedding per token position."""

  def build(self, input_shape):
    self.embedding = self.add_weight(name="embedding", shape=tuple(input_shape[1:]),
                                     initializer=keras.initializers.RandomNormal(stddev=0.02))

  def call(self, inputs):
    return inputs + self.embedding


def vision_transformer(size: int, alpha: float = 1.0, name: str = "vit") -> keras.Model:
  """The functional ViT: float images in [-1, 1] -> (batch, width) features."""
  s = vit_shape(alpha, size)
  if size % s["patch"]:
    raise ConfigError(f"The ViT needs an input size divisible by its patch size {s['patch']}. "
                      f"Received: backbone.input_size={size}")
  inputs = keras.Input((size, size, 3))
  x = keras.layers.Conv2D(s["width"], s["patch"], strides=s["patch"], name="patch_embed")(inputs)
  x = keras.layers.Reshape(((size // s["patch"]) ** 2, s["width"]), name="tokens")(x)
  x = PositionEmbedding(name="position_embedding")(x)
  for i in range(s["depth"]):
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm1")(x)
    h = keras.layers.MultiHeadAttention(s["heads"], s["width"] // s["heads"],
                                        name=f"block{i}_attention")(h, h)
    x = keras.layers.Add(name=f"block{i}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"block{i}_norm2")(x)
    h = keras.layers.Dense(s["mlp"], activation="gelu", name=f"block{i}_mlp1")(h)
    h = keras.layers.Dense(s["width"], name=f"block{i}_mlp2")(h)
    x = keras.layers.Add(name=f"block{i}_add2")([x, h])
  x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")(x)
  x = keras.layers.GlobalAveragePooling1D(name="token_mean")(x)
  return keras.Model(inputs, x, name=f"{name}_{s['width']}x{s['depth']}_{size}")


@register_backbone("vit")
def build_vit(spec: BackboneSpec) -> Backbone:
  size = spec.input_size or 224
  weights = resolve_weights(spec)
  if weights == "imagenet":
    raise ConfigError("backbone.name='vit' has no downloadable ImageNet weights in k4p1: use "
                      "backbone.weights=none (random) or a .weights.h5 file of a ViT k4p1 "
                      "trained (base.weights.h5).")
  with seeded_initialisation(spec.seed):
    model = vision_transformer(size, spec.alpha)
  if weights is not None:
    try:
      model.load_weights(weights)
    except Exception as e:
      raise ConfigError(f"Could not load {weights!r} into the ViT at alpha={spec.alpha}, "
                        f"{size}px ({type(e).__name__}: {e}).") from e
  return Backbone(model, size, spec.preprocessing or "tf", spec)
