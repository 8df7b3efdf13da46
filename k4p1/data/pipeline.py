"""Per-task input pipelines: examples -> preprocessed, augmented tf.data batches.

Images leave the pipeline as float32 in [0, 255] at the backbone's resolution; the model's
frontend (k4p1.frontends.ImageFrontend) maps them to the backbone's range, so exported
signatures can take uint8. Audio clips leave it as float32 waveforms in [-1, 1] of the
model's clip length (k4p1.data.audio); the model's LogMelFrontend computes the features.

Example:
  ds = task_data.train_batches(batch_size=32, seed=0)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

from k4p1.config import DatasetSpec


@dataclasses.dataclass
class Split:
  """Unbatched (image uint8 HxWxC, label int32) examples and their count; or (waveform int16
  or float32 [n], label) with the clips' `sample_rate`.

  `make` builds the dataset each time `dataset` is read, so a dataset function traced for
  another process (a parameter-server worker) creates its own instead of capturing this
  process's, which cannot be copied between processes.
  """
  make: Callable[[], tf.data.Dataset]
  size: int
  sample_rate: int = 0

  @property
  def dataset(self) -> tf.data.Dataset:
    return self.make()


@dataclasses.dataclass
class TaskData:
  """A task's train and eval splits and how to batch them.

  `input_spec` (k4p1.frontends.InputSpec) says what the model takes: images of
  `image_size`, or audio clips (`noise`: the `kws` augmentation's noise bank, or None).
  """
  spec: DatasetSpec
  train: Split
  eval: Split
  num_classes: int
  image_size: int
  cache: bool = True
  shuffle_buffer: int = 2048
  class_names: tuple = ()
  input_spec: object = None
  noise: object = None

  @property
  def audio(self) -> bool:
    return self.input_spec is not None and self.input_spec.modality == "audio"

  def _train_map(self, seed):
    """(index, (x, label)) -> (preprocessed, augmented x, label)."""
    if self.audio:
      from k4p1.data.audio import preprocess_audio_train
      samples, rate, noise = self.image_size, self.input_spec.sample_rate, self.noise
      augment, mode = self.spec.augment, self.spec.noise

      def prepare_audio(index, example):
        wave, label = example
        op_seed = tf.stack([tf.cast(seed, tf.int64), index])
        return preprocess_audio_train(wave, samples, rate, augment, op_seed, noise, mode), label
      return prepare_audio
    augment, flip = self.spec.augment, self.spec.flip
    size = self.image_size

    def prepare(index, example):
      image, label = example
      # Stateless ops seeded by (seed, example index): the same run gives the same batches in
      # any process and under any strategy.
      op_seed = tf.stack([tf.cast(seed, tf.int64), index])
      return preprocess_train(image, size, augment, flip, op_seed), label
    return prepare

  def _eval_map(self):
    """x -> x as evaluated (resized / fitted, never augmented)."""
    if self.audio:
      from k4p1.data.audio import preprocess_audio_eval
      samples = self.image_size
      return lambda x: preprocess_audio_eval(x, samples)
    crop, size = self.spec.eval_crop, self.image_size
    return lambda x: preprocess_eval(x, size, crop)

  def train_batches(self, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled, augmented, repeated batches of `batch_size` (incomplete batches dropped)."""
    ds = self.train.dataset
    if self.cache:
      ds = ds.cache()
    ds = ds.shuffle(min(self.shuffle_buffer, max(self.train.size, 1)), seed=seed,
                    reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().map(self._train_map(seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def representative_batches(self, examples: int, batch_size: int = 16) -> tf.data.Dataset:
    """The first `examples` training images, un-augmented (resized as for eval): what int8
    quantization calibrates activation ranges on."""
    fit = self._eval_map()
    ds = self.train.dataset.take(examples).map(lambda i, l: fit(i),
                                               num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size)

  def statistics_batches(self, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled training images preprocessed as for evaluation (no augmentation), repeated:
    what BN statistics are recomputed on, so they match the images the model is evaluated on."""
    fit = self._eval_map()
    ds = self.train.dataset
    if self.cache:
      ds = ds.cache()
    ds = ds.shuffle(min(self.shuffle_buffer, max(self.train.size, 1)), seed=seed).repeat()
    ds = ds.map(lambda i, l: (fit(i), l),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  def eval_batches(self, batch_size: int) -> tf.data.Dataset:
    fit = self._eval_map()
    ds = self.eval.dataset.map(lambda i, l: (fit(i), l),
                               num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# Preprocessing (the papers' MobileNet / Inception recipe).


def _to_rgb_float(image):
  image = tf.convert_to_tensor(image)
  if image.shape.rank == 2:
    image = image[..., None]
  if image.shape[-1] == 1:  # grayscale sources (digits, Fashion-MNIST)
    image = tf.image.grayscale_to_rgb(image)
  return tf.cast(image, tf.float32)


def preprocess_train(image, size: int, augment: str, flip: bool, seed):
  """Random resized crop (`inception_crop`: Inception style, area 8%-100%) or a plain resize
  (`none`), then a random horizontal flip if `flip`.

  Args:
    seed: int64 shape-[2] seed of the stateless random ops (deterministic augmentation).
  """
  image = _to_rgb_float(image)
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
  if augment == "inception_crop":
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop_size)
  image = tf.image.resize(image, (size, size), method="bilinear")
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  return tf.clip_by_value(image, 0.0, 255.0)


def preprocess_eval(image, size: int, crop: float = 1.0):
  """Central crop keeping `crop` of each side (0.875: Inception's eval crop; 1: none), then a
  bilinear resize."""
  image = _to_rgb_float(image)
  if crop < 1.0:
    image = tf.image.central_crop(image, crop)
  image = tf.image.resize(image, (size, size), method="bilinear")
  return tf.clip_by_value(image, 0.0, 255.0)
