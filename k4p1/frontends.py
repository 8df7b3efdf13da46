"""Inputs: what a task model takes (`InputSpec`) and the frontend that prepares it.

A task model is `frontend -> backbone -> head`. The `InputSpec` says what enters the model
(modality, shape, dtype) and what a serving signature accepts (uint8 images of any size, resized
inside); the frontend layer maps raw input to what the backbone expects (for images: pixels in
[0, 255] to the backbone's range) and has a plain-Keras form for folded, deployable models.
Frontends are registered by modality in FRONTENDS: `image` (ImageFrontend: pixel scaling) and
`audio` (LogMelFrontend: 16 kHz waveforms -> log-mel spectrogram, with SpecAugment masking while
training), so SavedModels and TFLite files take raw pixels or raw audio.

Example:
  spec = InputSpec.image(224)
  frontend = ImageFrontend("tf")             # [0, 255] -> [-1, 1]
  plain = frontend.to_plain()                # [keras.layers.Rescaling(...)]
  x = spec.to_model_input(uint8_images)      # any size -> float32 [b, 224, 224, 3]

  audio = InputSpec.audio(16000)             # 1 s at 16 kHz
  LogMelFrontend()(waveforms).shape          # (b, 40, 101, 1): mel bands x frames
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
    modality: 'image' or 'audio'.
    shape: the model input without the batch axis: (224, 224, 3) for images, (16000,) for
      one second of 16 kHz audio.
    dtype: the model input's dtype (images: float32 pixels in [0, 255]; audio: float32
      samples in [-1, 1]).
    serving_dtype: what serving signatures accept (images: uint8, any height and width;
      audio: float32 waveforms of any length, zero-padded or cut to `shape`).
    sample_rate: audio only: samples per second the model expects.
  """
  modality: str = "image"
  shape: tuple = (224, 224, 3)
  dtype: str = "float32"
  serving_dtype: str = "uint8"
  sample_rate: int = 0

  @classmethod
  def image(cls, size: int, channels: int = 3) -> "InputSpec":
    return cls("image", (int(size), int(size), int(channels)))

  @classmethod
  def audio(cls, samples: int = 16000, sample_rate: int = 16000) -> "InputSpec":
    """Mono waveforms of `samples` samples at `sample_rate` Hz (float32 in [-1, 1])."""
    return cls("audio", (int(samples),), "float32", "float32", int(sample_rate))

  @property
  def size(self) -> int:
    """The square image resolution; for audio, the clip length in samples."""
    return int(self.shape[0])

  @property
  def name(self) -> str:
    """The input's name in signatures: 'images' or 'waveforms'."""
    return "waveforms" if self.modality == "audio" else "images"

  def keras_input(self, name: str = "") -> keras.KerasTensor:
    return keras.Input(self.shape, dtype=self.dtype, name=name or self.name)

  def tensor_spec(self, name: str = "") -> tf.TensorSpec:
    """A batch of model inputs (what TFLite signatures and evaluation take)."""
    return tf.TensorSpec([None, *self.shape], self.dtype, name=name or self.name)

  def serving_spec(self, name: str = "") -> tf.TensorSpec:
    """What a SavedModel signature accepts: uint8 images of any size, or float32 waveforms
    of any length."""
    if self.modality == "audio":
      return tf.TensorSpec([None, None], self.serving_dtype, name=name or self.name)
    return tf.TensorSpec([None, None, None, self.shape[-1]], self.serving_dtype,
                         name=name or self.name)

  def to_model_input(self, raw):
    """Serving input -> model input: images are cast and resized bilinearly to the model's
    size; waveforms are zero-padded at the end or cut to the model's length."""
    if self.modality == "audio":
      return fit_length(tf.cast(raw, tf.float32), self.shape[0])
    return tf.image.resize(tf.cast(raw, tf.float32), self.shape[:2], method="bilinear")


def fit_length(waveforms, samples: int):
  """[batch, n] -> [batch, samples]: zero-padded at the end, or the first `samples` kept."""
  waveforms = waveforms[:, :samples]
  pad = samples - tf.shape(waveforms)[1]
  return tf.ensure_shape(tf.pad(waveforms, [[0, 0], [0, pad]]), [None, samples])


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


def mel_matrix(sample_rate: int, fft_length: int, bands: int, lower_hz: float,
               upper_hz: float) -> np.ndarray:
  """[fft_length // 2 + 1, bands] triangular HTK mel filters (tf.signal's definition)."""
  with tf.init_scope():  # eager even when a layer is built inside a tf.function
    return tf.signal.linear_to_mel_weight_matrix(
        bands, fft_length // 2 + 1, sample_rate, lower_hz, upper_hz).numpy()


def banded(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A [bins, bands] filterbank as per-band bin indices and weights [bands, width], width the
  widest band's support (padded with bin 0 at weight 0): x @ matrix equals
  sum(x[..., bins] * weights, -1).

  Example:
    bins, weights = banded(mel_matrix(16000, 512, 40, 20.0, 8000.0))   # [40, width] each
  """
  support = [np.flatnonzero(matrix[:, b]) for b in range(matrix.shape[1])]
  width = max(1, max(len(s) for s in support))
  bins = np.zeros((matrix.shape[1], width), np.int32)
  weights = np.zeros((matrix.shape[1], width), np.float32)
  for b, s in enumerate(support):
    bins[b, :len(s)] = s
    weights[b, :len(s)] = matrix[s, b]
  return bins, weights


@keras.saving.register_keras_serializable(package="k4p1")
class LogMelFrontend(keras.layers.Layer):
  """16 kHz waveforms -> log-mel spectrogram [batch, bands, frames, 1], inside the model.

  A Hann-windowed STFT (`window_ms` frames every `hop_ms`, a DFT of the next power of two, the
  clip zero-padded by half a window at each end, as torchaudio's `center=True`), its power on
  `bands` HTK mel filters (tf.signal.linear_to_mel_weight_matrix), then log(mel + 1e-6):
  silence gives finite features. The STFT equals tf.signal.stft (tested); its frames are cut
  with pad / reshape / slice / concat and transformed by tf.signal.rfft, because every op of
  that is a TFLite builtin (tf.signal.stft's framing is not), so TFLite files take raw audio
  too. Defaults: 40 bands, 30 ms / 10 ms (the KWS papers' BC-ResNet and Res15 inputs): one
  second gives 101 frames. Frequency is the height axis, time the width.

  While training (and `augmenting`), SpecAugment masks `freq_masks` random bands of up to
  `freq_mask_bands` bands and `time_masks` spans of up to `time_mask_frames` frames per
  example, filled with the example's mean. No variables.

  Example:
    LogMelFrontend()(np.zeros((2, 16000), np.float32)).shape   # (2, 40, 101, 1)
  """

  def __init__(self, sample_rate: int = 16000, bands: int = 40, window_ms: float = 30.0,
               hop_ms: float = 10.0, lower_hz: float = 20.0, upper_hz: float = 0.0,
               freq_masks: int = 0, freq_mask_bands: int = 0, time_masks: int = 0,
               time_mask_frames: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.sample_rate, self.bands = int(sample_rate), int(bands)
    self.window_ms, self.hop_ms = float(window_ms), float(hop_ms)
    self.lower_hz, self.upper_hz = float(lower_hz), float(upper_hz or sample_rate / 2)
    self.freq_masks, self.freq_mask_bands = int(freq_masks), int(freq_mask_bands)
    self.time_masks, self.time_mask_frames = int(time_masks), int(time_mask_frames)
    self.window = int(round(self.sample_rate * self.window_ms / 1000))
    self.hop = int(round(self.sample_rate * self.hop_ms / 1000))
    if self.window < 2 or self.hop < 1 or self.bands < 1:
      raise ValueError(f"LogMelFrontend needs a window of >= 2 samples, a hop >= 1 sample and "
                       f">= 1 band. Received: window_ms={window_ms}, hop_ms={hop_ms}, "
                       f"bands={bands} at {sample_rate} Hz")
    if not 0 <= self.lower_hz < self.upper_hz <= self.sample_rate / 2:
      raise ValueError(f"Mel filters need 0 <= lower_hz < upper_hz <= sample_rate / 2. "
                       f"Received: lower_hz={lower_hz}, upper_hz={upper_hz}, "
                       f"sample_rate={sample_rate}")
    self.fft_length = 1 << (self.window - 1).bit_length()
    self.mel = mel_matrix(self.sample_rate, self.fft_length, self.bands, self.lower_hz,
                          self.upper_hz)
    self._band_bins, self._band_weights = banded(self.mel)
    self.augmenting = True  # k4p1.model.recompute_batch_statistics turns it off

  def frames(self, samples: int) -> int:
    """Frames of a clip of `samples` samples."""
    return 1 + (samples + 2 * (self.window // 2) - self.window) // self.hop

  def call(self, waveforms, training=None):
    x = tf.cast(waveforms, tf.float32)
    half = self.window // 2
    x = tf.pad(x, [[0, 0], [half, half]])
    frames = self._frame(x)  # [b, frames, window]
    spectrum = tf.signal.rfft(frames * tf.constant(self._window), [self.fft_length])
    power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
    # Each band's triangle covers a few bins: gather them, weight, sum (as power @ self.mel).
    # Not a matmul: TFLite's dynamic-range quantization would run a matmul as a hybrid op,
    # quantizing the power spectrum (a 1e9 dynamic range) to 8 bits; gather, mul and sum stay
    # float (k4p1.export.tflite keeps them float in int8 files too).
    mel = tf.reduce_sum(tf.gather(power, self._band_bins, axis=-1) * self._band_weights, -1)
    features = tf.transpose(tf.math.log(mel + 1e-6), [0, 2, 1])[..., None]
    if training and self.augmenting and (self.freq_masks or self.time_masks):
      features = self._spec_augment(features)
    return features

  def _frame(self, x):
    """[b, samples] -> [b, frames, window], every `hop` samples: the clip cut into hop-long
    chunks, each frame the next ceil(window / hop) chunks side by side, cut to `window`. Only
    pad / slice / reshape / concat (TFLite builtins, no constant): an index table for gather
    weighed ~190 KB in every TFLite file."""
    samples = int(x.shape[-1])
    count = 1 + (samples - self.window) // self.hop
    per_frame = -(-self.window // self.hop)
    chunks = count - 1 + per_frame
    needed = chunks * self.hop
    x = x[:, :needed] if samples >= needed else tf.pad(x, [[0, 0], [0, needed - samples]])
    x = tf.reshape(x, [-1, chunks, self.hop])
    frames = tf.concat([x[:, j:j + count] for j in range(per_frame)], axis=-1)
    return frames if per_frame * self.hop == self.window else frames[..., :self.window]

  @property
  def _window(self) -> np.ndarray:
    """The periodic Hann window (tf.signal.hann_window's default)."""
    n = np.arange(self.window)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / self.window)).astype(np.float32)

  def _spec_augment(self, x):
    shape = tf.shape(x)
    batch, bands, frames = shape[0], shape[1], shape[2]
    fill = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    masked = tf.zeros_like(x, tf.bool)
    if self.freq_masks and self.freq_mask_bands:
      m = _random_spans(batch, bands, self.freq_masks, self.freq_mask_bands)
      masked = masked | m[:, :, None, None]
    if self.time_masks and self.time_mask_frames:
      m = _random_spans(batch, frames, self.time_masks, self.time_mask_frames)
      masked = masked | m[:, None, :, None]
    return tf.where(masked, fill, x)

  def compute_output_shape(self, input_shape):
    samples = input_shape[-1]
    return (input_shape[0], self.bands, None if samples is None else self.frames(samples), 1)

  def to_plain(self, layers=None) -> list:
    """The same frontend without augmentation (audio has no plain-Keras equivalent: folded
    audio models keep this layer; SavedModel and TFLite exports need no k4p1 code)."""
    config = {**self.get_config(), "freq_masks": 0, "time_masks": 0, "name": "log_mel"}
    return [LogMelFrontend.from_config(config)]

  def get_config(self):
    return {**super().get_config(), "sample_rate": self.sample_rate, "bands": self.bands,
            "window_ms": self.window_ms, "hop_ms": self.hop_ms, "lower_hz": self.lower_hz,
            "upper_hz": self.upper_hz, "freq_masks": self.freq_masks,
            "freq_mask_bands": self.freq_mask_bands, "time_masks": self.time_masks,
            "time_mask_frames": self.time_mask_frames}


def _random_spans(batch, size, count: int, width: int):
  """[batch, size] bool: `count` spans per row, each of a width drawn from 0..width."""
  widths = tf.random.uniform([batch, count], 0, width + 1, tf.int32)
  room = tf.cast(tf.maximum(size - widths + 1, 1), tf.float32)
  starts = tf.cast(tf.floor(tf.random.uniform([batch, count]) * room), tf.int32)
  positions = tf.range(size)[None, None, :]
  inside = (positions >= starts[..., None]) & (positions < (starts + widths)[..., None])
  return tf.reduce_any(inside, axis=1)


FRONTENDS.register("audio", LogMelFrontend)
