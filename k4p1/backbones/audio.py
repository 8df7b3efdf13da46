"""Keyword-spotting backbones on log-mel input: BC-ResNet (Kim et al. 2021) and Res15 (Tang & Lin 2018).

Both take the LogMelFrontend's features, [batch, bands, frames, 1] (frequency is the height
axis), and end in a feature map the task model averages and classifies (its Dense head is the
papers' last layer). Task models take raw 16 kHz waveforms: the frontend is inside the model.

  bc_resnet  BC-ResNet-tau, tau = backbone.alpha (8: BC-ResNet-8, 321K parameters with a
             12-way head as in the paper). A 5x5 stride-(2, 1) conv, 12 broadcasted residual
             blocks in 4 stages (2, 2, 4, 4; stages 1 and 2 halve the frequency axis): a
             frequency-depthwise 3x1 conv with SubSpectralNorm (BN over 5 sub-bands), the
             frequency average broadcast back after a temporal branch (dilated 1x3 depthwise
             conv, BN, swish, 1x1 conv, spatial dropout 0.1), then a 5x5 depthwise conv over
             the remaining bands, a 1x1 conv, BN and ReLU.
  res15      Res15: 13 dilated 3x3 convs of 45 maps (dilation 2^(i // 3)) after a first conv,
             residual every two, BN without scale or shift after each (237,330 weights; 238K
             with a 12-way head). alpha scales the maps.

Random weights (`weights=none`) or a `.weights.h5` of a backbone k4p1 trained (a pretraining
run's base.weights.h5). backbone.input_size is the clip length in samples (0: 16000).

Example:
  spec = BackboneSpec("bc_resnet", alpha=8, input_size=16000, weights="none")
  backbone = build_backbone(spec)
  backbone.input_spec               # InputSpec(modality='audio', shape=(16000,), ...)
  backbone.model.output_shape       # (None, 1, 101, 256)
"""

from __future__ import annotations

import keras

from k4p1.backbones.base import Backbone, register_backbone, resolve_weights, seeded_initialisation
from k4p1.config import BackboneSpec
from k4p1.errors import ConfigError
from k4p1.frontends import LogMelFrontend

DEFAULT_SAMPLES = 16000
BN = dict(momentum=0.9, epsilon=1e-5)  # PyTorch's BatchNorm2d defaults, as both papers trained
SUB_BANDS = 5                          # SubSpectralNorm's groups in BC-ResNet


@keras.saving.register_keras_serializable(package="k4p1")
class ChannelDropout(keras.layers.Layer):
  """Drops whole channels while training (PyTorch's Dropout2d, Keras's SpatialDropout2D).

  Unlike SpatialDropout2D it keeps no seed-generator variable: a backbone's variables are its
  weights only, so fingerprints and parameter counts do not depend on a random-number state.
  """

  def __init__(self, rate: float, **kwargs):
    super().__init__(**kwargs)
    self.rate = float(rate)

  def call(self, x, training=None):
    if not training or self.rate == 0:
      return x
    import tensorflow as tf
    shape = tf.shape(x)
    return tf.nn.dropout(x, self.rate, noise_shape=[shape[0], 1, 1, shape[3]])

  def get_config(self):
    return {**super().get_config(), "rate": self.rate}


def _bn(x, name, **kwargs):
  return keras.layers.BatchNormalization(name=name, **BN, **kwargs)(x)


def sub_spectral_norm(x, groups: int, name: str):
  """BN with separate statistics (and scale, shift) for each of `groups` frequency sub-bands:
  the channels and sub-bands are folded into BN's channel axis (channel-major, like the
  paper's view(b, c * groups, f // groups, t)). Plain BN when the bands do not divide."""
  _, f, t, c = x.shape
  if groups <= 1 or f % groups:
    return _bn(x, name)
  x = keras.layers.Reshape((groups, f // groups, t, c), name=f"{name}_split")(x)
  x = keras.layers.Permute((2, 3, 4, 1), name=f"{name}_to_channels")(x)
  x = keras.layers.Reshape((f // groups, t, c * groups), name=f"{name}_fold")(x)
  x = _bn(x, name)
  x = keras.layers.Reshape((f // groups, t, c, groups), name=f"{name}_unfold")(x)
  x = keras.layers.Permute((4, 1, 2, 3), name=f"{name}_to_bands")(x)
  return keras.layers.Reshape((f, t, c), name=f"{name}_merge")(x)


def bc_res_block(x, out_channels: int, stage: int, stride: int, name: str, dropout: float = 0.1):
  """One broadcasted residual block: f2 (frequency-depthwise conv + SSN) on the 2-D map, f1
  on its frequency average, broadcast back; identity shortcut unless the width changes."""
  transition = x.shape[-1] != out_channels
  shortcut = x
  if transition:
    x = keras.layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_expand")(x)
    x = _bn(x, f"{name}_expand_bn")
    x = keras.layers.ReLU(name=f"{name}_expand_relu")(x)
  x = keras.layers.DepthwiseConv2D((3, 1), strides=(stride, 1), padding="same", use_bias=False,
                                   name=f"{name}_freq_dw")(x)
  x = sub_spectral_norm(x, SUB_BANDS, f"{name}_ssn")
  aux = x
  x = keras.layers.AveragePooling2D((x.shape[1], 1), name=f"{name}_freq_mean")(x)
  x = keras.layers.DepthwiseConv2D((1, 3), dilation_rate=(1, 2 ** stage), padding="same",
                                   use_bias=False, name=f"{name}_time_dw")(x)
  x = _bn(x, f"{name}_time_bn")
  x = keras.layers.Activation("swish", name=f"{name}_swish")(x)
  x = keras.layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_pointwise")(x)
  x = ChannelDropout(dropout, name=f"{name}_dropout")(x)
  x = keras.layers.Add(name=f"{name}_broadcast")([x, aux])
  if not transition:
    x = keras.layers.Add(name=f"{name}_shortcut")([x, shortcut])
  return keras.layers.ReLU(name=f"{name}_out")(x)


def bc_resnet(tau: float = 8, bands: int = 40, frames: int = 101) -> keras.Model:
  """BC-ResNet-tau: log-mel [batch, bands, frames, 1] -> [batch, 1, frames, 32 tau]."""
  base = int(8 * tau)
  if base < 1:
    raise ConfigError(f"BC-ResNet needs tau >= 0.125 (backbone.alpha). Received: {tau}")
  channels = [base * 2, base, int(base * 1.5), base * 2, int(base * 2.5), base * 4]
  repeats, strided = (2, 2, 4, 4), (1, 2)
  if bands % 8:
    raise ConfigError(f"BC-ResNet halves the frequency axis three times: it needs a number of "
                      f"mel bands divisible by 8 (40 in the paper). Received: {bands} bands")
  inputs = keras.Input((bands, frames, 1), name="log_mel")
  x = keras.layers.Conv2D(channels[0], 5, strides=(2, 1), padding="same", use_bias=False,
                          name="head_conv")(inputs)
  x = _bn(x, "head_bn")
  x = keras.layers.ReLU(name="head_relu")(x)
  for stage, count in enumerate(repeats):
    for i in range(count):
      stride = 2 if stage in strided and i == 0 else 1
      x = bc_res_block(x, channels[stage + 1], stage, stride, f"stage{stage}_block{i}")
  x = keras.layers.ZeroPadding2D(((0, 0), (2, 2)), name="final_pad")(x)
  x = keras.layers.DepthwiseConv2D((x.shape[1], 5), use_bias=False, name="final_dw")(x)
  x = keras.layers.Conv2D(channels[-1], 1, use_bias=False, name="final_conv")(x)
  x = _bn(x, "final_bn")
  x = keras.layers.ReLU(name="final_relu")(x)
  tau_text = f"{tau:g}".replace(".", "_")
  return keras.Model(inputs, x, name=f"bc_resnet_{tau_text}")


def res15(maps: int = 45, layers: int = 13, bands: int = 40, frames: int = 101) -> keras.Model:
  """Res15: log-mel [batch, bands, frames, 1] -> [batch, bands, frames, maps]."""
  inputs = keras.Input((bands, frames, 1), name="log_mel")
  x = keras.layers.Conv2D(maps, 3, padding="same", use_bias=False, name="conv0")(inputs)
  x = keras.layers.ReLU(name="relu0")(x)
  residual = x
  for i in range(1, layers + 1):
    y = keras.layers.Conv2D(maps, 3, padding="same", dilation_rate=2 ** ((i - 1) // 3),
                            use_bias=False, name=f"conv{i}")(x)
    y = keras.layers.ReLU(name=f"relu{i}")(y)
    if i % 2 == 0:
      x = residual = keras.layers.Add(name=f"add{i}")([y, residual])
    else:
      x = y
    x = _bn(x, f"bn{i}", center=False, scale=False)
  return keras.Model(inputs, x, name=f"res15_{maps}")


AUDIO_DEFAULTS = dict(sample_rate=16000, bands=40, window_ms=30.0, hop_ms=10.0)


def _audio_backbone(spec: BackboneSpec, build) -> Backbone:
  samples = spec.input_size or DEFAULT_SAMPLES
  audio = {**AUDIO_DEFAULTS, **dict(spec.audio)}
  try:
    frontend = LogMelFrontend(**audio)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"backbone.audio: {e}") from e
  if samples < frontend.window:
    raise ConfigError(
        f"backbone.input_size is the clip length in samples for {spec.name} (16000: one "
        f"second at 16 kHz); {samples} is shorter than one {frontend.window}-sample window. "
        f"Received: backbone.input_size={spec.input_size}")
  weights = resolve_weights(spec)
  if weights == "imagenet":
    raise ConfigError(f"backbone.name={spec.name!r} is an audio backbone: it has no ImageNet "
                      f"weights. Use backbone.weights=none (random) or a .weights.h5 file of a "
                      f"{spec.name} k4p1 trained (a pretraining run's base.weights.h5).")
  with seeded_initialisation(spec.seed):
    model = build(frontend.bands, frontend.frames(samples))
  if weights is not None:
    try:
      model.load_weights(weights)
    except Exception as e:
      raise ConfigError(f"Could not load {weights!r} into {model.name} ({type(e).__name__}: "
                        f"{e}). Is it a {spec.name} at alpha={spec.alpha} with "
                        f"{frontend.bands} mel bands?") from e
  return Backbone(model, samples, "none", spec, audio=audio)


@register_backbone("bc_resnet")
def build_bc_resnet(spec: BackboneSpec) -> Backbone:
  return _audio_backbone(spec, lambda bands, frames: bc_resnet(spec.alpha, bands, frames))


@register_backbone("res15")
def build_res15(spec: BackboneSpec) -> Backbone:
  maps = max(1, round(45 * spec.alpha))
  return _audio_backbone(spec, lambda bands, frames: res15(maps, 13, bands, frames))
