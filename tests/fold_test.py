"""Folding: plain-Keras task models equal the patched ones, with no k4p1 layer left."""

import os

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from k4p1.backbones import Backbone, build_backbone
from k4p1.config import BackboneSpec
from k4p1.export.fold import fold_backbone, fold_task
from k4p1.frontends import ImageFrontend
from k4p1.model import TaskModels
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_task


def _all_layers(model):
  for layer in model.layers:
    yield layer
    if isinstance(layer, keras.Model):
      yield from _all_layers(layer)


def _perturb(models, task, seed):
  """Moves every task variable away from its initial value (a trained patch, in effect)."""
  rng = np.random.RandomState(seed)
  for v in models.task_variables(task):
    value = v.numpy()
    if "variance" in v.name:
      v.assign(value * rng.uniform(0.5, 2.0, value.shape).astype("float32"))
    else:
      v.assign(value + rng.normal(0, 0.1, value.shape).astype("float32") * (np.abs(value).mean() + 0.1))


PATCHES = (("scale_bias,last_layer", "batch"), ("scale_bias,last_layer", "frozen"),
           ("bn_stats,last_layer", "batch"), ("depthwise,last_layer", "batch"),
           ("scale_bias,depthwise,last_layer", "batch"), ("full,last_layer", "batch"),
           ("last_layer", "batch"))


def _name(patch, statistics):
  return (patch.replace(",", "_") + "_" + statistics)[:40]


class FoldMathTest(tf.test.TestCase, parameterized.TestCase):
  """In float64 the folded backbone equals the patched one to rounding: the algebra is exact."""

  @parameterized.parameters(*PATCHES)
  def test_float64(self, patch, statistics):
    policy = keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # Keras caches the policy derived from floatx
    try:
      models = TaskModels(calibrated_mobilenet_v2())
      name = _name(patch, statistics)
      task = models.add(tiny_task(name, patch, statistics), num_classes=5)
      _perturb(models, name, seed=len(patch))
      z = random_images(4).astype("float64") / 127.5 - 1
      folded = fold_backbone(task.patched.model, name)
      self.assertEqual(folded.weights[0].dtype, "float64")
      self.assertAllClose(folded(z), task.patched.model(z, training=False), atol=1e-9, rtol=0)
    finally:
      keras.config.set_floatx("float32")
      keras.config.set_dtype_policy(policy)


class FoldTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.models = TaskModels(calibrated_mobilenet_v2())
    cls.x = random_images(4)

  @parameterized.parameters(*PATCHES)
  def test_folded_task_model(self, patch, statistics):
    name = _name(patch, statistics)
    task = self.models.add(tiny_task(name, patch, statistics), num_classes=5)
    _perturb(self.models, name, seed=len(patch))
    expected = task.model(self.x, training=False)
    # BN kept: plain Keras BN where the task model runs TF's fused inference kernel (k4p1's
    # BN layers under oneDNN), which rounds differently: equal to float32 rounding.
    plain = fold_task(self.models, name, fold_batchnorm=False)
    scale = float(np.max(np.abs(expected)))
    self.assertAllClose(plain(self.x), expected, rtol=1e-5, atol=2e-5 * scale)
    # BN folded: float32 rounds differently; this random network amplifies that to ~1e-5
    # (a trained one stays within 1e-5: SharedWeightsFoldTest). The rounding error grows with
    # the outputs' scale (~1e-5 of the largest output here), so the bound does too.
    folded = fold_task(self.models, name)
    self.assertAllClose(folded(self.x), expected, rtol=1e-5, atol=max(2e-4, 4e-5 * scale))
    for model in (plain, folded):
      for layer in _all_layers(model):
        self.assertTrue(type(layer).__module__.startswith("keras."), type(layer))
    # Without BN folding: layer for layer the base, under the base's names.
    backbone = plain.layers[2]
    self.assertEqual([l.name for l in backbone.layers[1:]],
                     [l.name for l in self.models.base.layers[1:]])
    self.assertEqual(backbone.count_params(), self.models.base.count_params())
    # With it: no BatchNormalization left; each BN's 4 x C values became a C-wide bias.
    bns = [l for l in self.models.base.layers if isinstance(l, keras.layers.BatchNormalization)]
    backbone = folded.layers[2]
    self.assertFalse([l for l in backbone.layers
                      if isinstance(l, keras.layers.BatchNormalization)])
    self.assertEqual(backbone.count_params(),
                     self.models.base.count_params() - sum(3 * l.gamma.shape[0] for l in bns))

  def test_folding_changes_only_the_task(self):
    self.models.add(tiny_task("other", "scale_bias,last_layer"), num_classes=3)
    before = [v.numpy().copy() for v in self.models.base.weights]
    fold_task(self.models, "other")
    for b, v in zip(before, self.models.base.weights):
      self.assertAllEqual(b, v)

  def test_unknown_task(self):
    with self.assertRaisesRegex(ValueError, "No task 'nope' to fold"):
      fold_task(self.models, "nope")


class SharedWeightsFoldTest(tf.test.TestCase):
  """A trained MobileNetV2 (the shared dogs model): folded within ~1e-5 of the patched model.

  Float32 rounding through ~50 folded layers is relative to the logits' scale, not to each
  logit (1.2e-5 on a logit of 0.14 next to logits of 1.4 on an AVX-512 CPU): the bound is 3e-5
  of the largest logit (at least 3e-5), plus 1e-5 of each.
  """

  def test_trained_backbone(self):
    path = os.path.join(os.environ.get("K4P1_DATA_DIR", ""), "mobilenet_v2_1.0_160_dogs",
                        "dog_breed_mobilenetv2.h5")
    if not os.path.exists(path):
      self.skipTest("K4P1_DATA_DIR does not hold mobilenet_v2_1.0_160_dogs (the shared data)")
    models = TaskModels(build_backbone(BackboneSpec("keras_file", model_file=path,
                                                    input_size=0)))
    x = random_images(4, 160)
    for patch in ("scale_bias,depthwise,last_layer", "last_layer"):
      name = patch.replace(",", "_")
      task = models.add(tiny_task(name, patch), num_classes=5)
      _perturb(models, name, seed=3)
      expected = task.model(x, training=False).numpy()
      scale = float(np.max(np.abs(expected)))
      self.assertAllClose(fold_task(models, name)(x), expected, rtol=1e-5,
                          atol=3e-5 * max(scale, 1.0))


class ChannelScaleBiasFoldTest(tf.test.TestCase):

  def test_conv_dense_and_depthwise_multiplier(self):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    x = keras.layers.SeparableConv2D(5, 3, padding="same", name="separable")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(6, name="dense")(x)
    base = keras.Model(inputs, x)
    models = TaskModels(Backbone(base, 8, "torch", BackboneSpec("custom")))
    images = random_images(3, 8)
    # channel_scale_bias wraps all four; the bias kind the biased conv, depthwise and dense
    # (it does not target SeparableConv2D).
    for kind, wrapped in (("channel_scale_bias", 4), ("bias", 3)):
      task = models.add(tiny_task(kind, f"{kind},last_layer"), num_classes=3)
      self.assertLen(task.patched.patch_layers, wrapped)
      _perturb(models, kind, seed=1)
      expected = task.model(images, training=False).numpy()
      scale = float(np.max(np.abs(expected)))
      self.assertAllClose(fold_task(models, kind)(images), expected, rtol=1e-5,
                          atol=1e-5 * scale)

  def test_bn_after_a_nonlinear_conv_is_not_folded_into_it(self):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_relu")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    base = keras.Model(inputs, x)
    models = TaskModels(Backbone(base, 8, "tf", BackboneSpec("custom")))
    task = models.add(tiny_task("sb", "scale_bias,last_layer"), num_classes=3)
    _perturb(models, "sb", seed=2)
    images = random_images(3, 8)
    folded = fold_task(models, "sb")
    self.assertLen([l for l in folded.layers[2].layers
                    if isinstance(l, keras.layers.BatchNormalization)], 1)
    expected = task.model(images, training=False).numpy()
    self.assertAllClose(folded(images), expected, rtol=1e-5,
                        atol=1e-5 * float(np.max(np.abs(expected))))


class PreprocessingTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(("tf",), ("torch",), ("caffe",), ("none",))
  def test_plain_layers_equal_preprocess(self, mode):
    x = random_images(2, 4)
    y = x
    for layer in ImageFrontend(mode).to_plain():
      y = layer(y)
    self.assertAllClose(y, ImageFrontend(mode)(x), atol=1e-4)


if __name__ == "__main__":
  tf.test.main()
