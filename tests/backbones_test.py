"""Backbones: every builder, local weights files, full model files, and clear errors."""

import math
import os
import shutil
import tempfile
from unittest import mock

import keras
import numpy as np
import tensorflow as tf

from k4p1.backbones import build_backbone
from k4p1.config import BackboneSpec, ConfigError
from k4p1.model import TaskModels
from k4p1.testing import calibrated_mobilenet_v2, random_images

SHARED_DATA = os.environ.get("K4P1_DATA_DIR", "")


class BackbonesTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, True)

  def test_mobilenet_v2_any_alpha_and_size(self):
    for alpha, size, channels in ((0.35, 32, 1280), (0.5, 64, 1280), (1.4, 48, 1792)):
      b = build_backbone(BackboneSpec("mobilenet_v2", alpha=alpha, input_size=size,
                                      weights="none"))
      side = math.ceil(size / 32)  # five stride-2 stages, each rounding up ('same' padding)
      self.assertEqual(b.model.output.shape[1:], (side, side, channels))
      self.assertEqual((b.input_size, b.preprocessing), (size, "tf"))

  def test_inception_v3_and_generic_application(self):
    b = build_backbone(BackboneSpec("inception_v3", input_size=75, weights="none"))
    self.assertEqual(b.model.output.shape[-1], 2048)
    r = build_backbone(BackboneSpec("keras_application", application="ResNet50", input_size=32,
                                    weights="none"))
    self.assertEqual(r.preprocessing, "caffe")
    with self.assertRaisesRegex(ConfigError, "no model 'ResNet5'"):
      build_backbone(BackboneSpec("keras_application", application="ResNet5", weights="none"))

  def test_local_weights_file(self):
    spec = BackboneSpec("mobilenet_v2", alpha=0.35, input_size=32, weights="none", seed=4)
    source = build_backbone(spec).model
    path = os.path.join(self.dir, "w.weights.h5")
    source.save_weights(path)
    loaded = build_backbone(BackboneSpec("mobilenet_v2", alpha=0.35, input_size=32,
                                         weights=path, seed=9)).model
    x = random_images(2) / 127.5 - 1
    self.assertAllClose(loaded(x), source(x), atol=0)

  def test_vit_builds_offline_and_reloads_its_weights(self):
    spec = BackboneSpec("vit", alpha=0.35, input_size=32, weights="none", seed=1)
    source = build_backbone(spec)
    self.assertEqual((source.input_size, source.preprocessing), (32, "tf"))
    x = random_images(2) / 127.5 - 1
    self.assertEqual(tuple(source.model(x).shape), (2, 64))  # width 64 at alpha 0.35
    path = os.path.join(self.dir, "vit.weights.h5")
    source.model.save_weights(path)
    loaded = build_backbone(BackboneSpec("vit", alpha=0.35, input_size=32, weights=path,
                                         seed=2)).model
    self.assertAllClose(loaded(x), source.model(x), atol=0)
    with self.assertRaisesRegex(ConfigError, "no downloadable ImageNet weights"):
      build_backbone(BackboneSpec("vit", alpha=0.35, input_size=32, weights="imagenet"))
    with self.assertRaisesRegex(ConfigError, "divisible by its patch size 4"):
      build_backbone(BackboneSpec("vit", alpha=0.35, input_size=30, weights="none"))

  def test_missing_weights_file(self):
    with self.assertRaisesRegex(ConfigError, "weights file not found.*'none' for random"):
      build_backbone(BackboneSpec("mobilenet_v2", weights="/nonexistent/w.h5"))

  def test_imagenet_download_failure_is_explained(self):
    with mock.patch("keras.src.utils.file_utils.get_file",
                    side_effect=Exception("URL fetch failure")), \
        mock.patch.dict(os.environ, {"KERAS_HOME": self.dir}):
      with self.assertRaisesRegex(ConfigError, "Could not load ImageNet weights.*KERAS_HOME"):
        build_backbone(BackboneSpec("mobilenet_v2", alpha=0.35, input_size=96,
                                    weights="imagenet"))

  def test_keras_file_uses_the_nested_backbone(self):
    # Calibrated BN statistics: outputs of order 1 (a random MobileNetV2 gives ~1e-10, which
    # any tolerance would accept).
    inner = calibrated_mobilenet_v2(seed=2).model
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    outer = keras.Model(inputs, keras.layers.Dense(3)(x))
    path = os.path.join(self.dir, "full.keras")
    outer.save(path)
    b = build_backbone(BackboneSpec("keras_file", model_file=path, input_size=0))
    self.assertEqual(b.model.name, inner.name)
    self.assertEqual(b.input_size, 32)
    x = random_images(2) / 127.5 - 1
    expected = inner(x)
    self.assertGreater(float(np.max(np.abs(expected))), 0.1)
    self.assertAllClose(b.model(x), expected, rtol=1e-6, atol=1e-6)
    # At another input size: the same weights, and what keras.applications builds at that size.
    at_64 = build_backbone(BackboneSpec("keras_file", model_file=path, input_size=64))
    reference = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35,
                                               include_top=False, weights=None)
    reference.set_weights(inner.get_weights())
    x64 = random_images(2, 64) / 127.5 - 1
    self.assertEqual(at_64.input_size, 64)
    expected = reference(x64)
    self.assertGreater(float(np.max(np.abs(expected))), 0.1)
    self.assertAllClose(at_64.model(x64), expected, rtol=1e-5, atol=1e-5)
    with self.assertRaisesRegex(ConfigError, "no nested model 'resnet'"):
      build_backbone(BackboneSpec("keras_file", model_file=path, nested_model="resnet"))

  def test_keras_file_frozen_layers_are_learnable_again(self):
    """A file saved with its base frozen (a classifier trained on a frozen backbone): every
    weight of the backbone is learnable for joint training and train_base, BN statistics not."""
    inner = calibrated_mobilenet_v2(seed=3).model
    learnable = sum(v.trainable for v in inner.variables)
    inner.trainable = False
    for layer in inner.layers[-5:]:
      layer.trainable = True
    inputs = keras.Input((32, 32, 3))
    outer = keras.Model(inputs, keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(inner(inputs))))
    path = os.path.join(self.dir, "frozen.keras")
    outer.save(path)
    for size in (0, 64):
      b = build_backbone(BackboneSpec("keras_file", model_file=path, input_size=size))
      self.assertEqual(sum(v.trainable for v in b.model.variables), learnable)
      self.assertLen(TaskModels(b).shared_learnable_variables(), learnable)
    x = random_images(2) / 127.5 - 1
    b = build_backbone(BackboneSpec("keras_file", model_file=path, input_size=0))
    self.assertAllClose(b.model(x), inner(x), rtol=1e-6, atol=1e-6)

  def test_shared_mobilenet_v2_dogs_file(self):
    path = os.path.join(SHARED_DATA, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")
    if not os.path.exists(path):
      self.skipTest("K4P1_DATA_DIR does not hold mobilenet_v2_1.0_160_dogs (the shared data)")
    b = build_backbone(BackboneSpec("keras_file", model_file=path, input_size=0))
    self.assertEqual((b.model.name, b.input_size), ("mobilenetv2_1.00_160", 160))
    self.assertEqual(b.model.count_params(), 2_257_984)
    # The file froze most of it; k4p1 can train all of it: 52 kernels + 52 gammas + 52 betas.
    self.assertEqual(sum(v.trainable for v in b.model.variables), 156)


if __name__ == "__main__":
  tf.test.main()
