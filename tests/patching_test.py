"""Patching: equality with the base, sharing by identity, and what one training step changes."""

from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from k4p1.backbones import build_backbone
from k4p1.config import BackboneSpec, ConfigError
from k4p1.model import TaskModels, recompute_batch_statistics
from k4p1.patches import batchnorm, layers_followed_by_bn, parse_patch, patch_model
from k4p1.patches.channel_scale_bias import ChannelScaleBiasPatch
from k4p1.patches.depthwise import DepthwisePatch
from k4p1.patches.scale_bias import ScaleBiasPatch
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_mobilenet_v2, tiny_task

ALL_PATCHES = ["last_layer", "scale_bias,last_layer", "bn_stats,last_layer",
               "depthwise,last_layer", "scale_bias,depthwise,last_layer", "scale_bias",
               "full,last_layer"]


def _snapshot(variables):
  return {id(v): np.array(v.numpy()) for v in variables}


def _changed(variables, snapshot):
  """Paths of the variables whose value differs from `snapshot`."""
  return [v.path for v in variables if not np.array_equal(v.numpy(), snapshot[id(v)])]


def _one_step(task_model, images, labels, lr=0.1):
  variables = task_model.model.trainable_variables
  opt = keras.optimizers.SGD(lr)
  with tf.GradientTape() as tape:
    logits = task_model.model(images, training=True)
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                        from_logits=True))
  opt.apply_gradients(zip(tape.gradient(loss, variables), variables))


def _assert_equal_to_rounding(test, patched, base, x):
  """The patched model computes what the base computes.

  Bit for bit on Keras's BN ops; with TF's fused BN kernel (what k4p1's BN layers use under
  oneDNN) to float32 rounding, which through ~50-100 BN layers of a random network reaches
  ~2e-4 of the largest output (measured: InceptionV3 @75, 94 BN layers).
  """
  expected = base(x, training=False).numpy()
  with mock.patch.object(batchnorm, "_ONEDNN", False):
    test.assertAllEqual(patched(x, training=False), expected)
  scale = float(np.max(np.abs(expected)))
  test.assertAllClose(patched(x, training=False), expected, rtol=1e-3, atol=5e-4 * scale)


class PatchedEqualsBaseTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Calibrated BN statistics: outputs of order 1 (a random MobileNetV2 gives ~1e-10, which
    # any tolerance would accept).
    cls.backbone = calibrated_mobilenet_v2()

  @parameterized.parameters(*ALL_PATCHES)
  def test_fresh_patch_equals_base(self, patch):
    base = self.backbone.model
    x = random_images(3) / 127.5 - 1
    patched = patch_model(base, "t", parse_patch(patch))
    expected = base(x, training=False)
    self.assertGreater(float(np.max(np.abs(expected))), 0.1)
    _assert_equal_to_rounding(self, patched.model, base, x)

  def test_inception_v3_and_resnet50_patch_without_special_code(self):
    for spec, size in [(BackboneSpec("inception_v3", input_size=75, weights="none"), 75),
                       (BackboneSpec("keras_application", application="ResNet50",
                                     input_size=32, weights="none"), 32)]:
      base = build_backbone(spec).model
      bns = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
      recompute_batch_statistics(base, bns, [(random_images(8, size, seed=i) / 127.5 - 1, None)
                                             for i in range(2)])  # outputs of order 1
      x = random_images(2, size) / 127.5 - 1
      patched = patch_model(base, "t", parse_patch("scale_bias"))
      self.assertLen(patched.patch_layers, len(bns))
      self.assertGreater(float(np.max(np.abs(base(x, training=False)))), 0.1)
      _assert_equal_to_rounding(self, patched.model, base, x)

  def test_unmatched_patch_kind_is_a_clear_error(self):
    base = build_backbone(BackboneSpec("inception_v3", input_size=75, weights="none")).model
    with self.assertRaisesRegex(ValueError, "depthwise.*match no layer.*DepthwiseConv2D"):
      patch_model(base, "t", parse_patch("depthwise"))


class SharingTest(tf.test.TestCase):

  def test_tasks_share_base_variables_by_identity(self):
    backbone = tiny_mobilenet_v2()
    models = TaskModels(backbone)
    a = models.add(tiny_task("a", "scale_bias,last_layer"), 3)
    b = models.add(tiny_task("b", "depthwise,last_layer"), 4)
    base_ids = {id(v) for v in backbone.model.variables}
    conv_a = a.patched.model.get_layer("Conv1")
    conv_b = b.patched.model.get_layer("Conv1")
    self.assertIs(conv_a, backbone.model.get_layer("Conv1"))
    self.assertIs(conv_b, conv_a)
    # b's depthwise kernels are its own; a's BN layers are its own; everything else shared.
    self.assertIsInstance(b.patched.model.get_layer("block_1_depthwise_b"), DepthwisePatch)
    self.assertIsInstance(a.patched.model.get_layer("bn_Conv1_a"), ScaleBiasPatch)
    a_ids = {id(v) for v in models.task_variables("a")}
    b_ids = {id(v) for v in models.task_variables("b")}
    self.assertEmpty(a_ids & b_ids)
    self.assertEmpty(a_ids & base_ids)
    shared_in_a = {id(v) for v in a.model.variables} & base_ids
    n_bn_vars = 4 * sum(isinstance(l, keras.layers.BatchNormalization)
                        for l in backbone.model.layers)
    self.assertLen(shared_in_a, len(base_ids) - n_bn_vars)

  def test_adding_a_task_never_touches_another(self):
    backbone = tiny_mobilenet_v2()
    models = TaskModels(backbone)
    a = models.add(tiny_task("a", "scale_bias,last_layer"), 3)
    x = random_images(2)
    before = a.model(x, training=False).numpy()
    snap = _snapshot(a.model.variables)
    b = models.add(tiny_task("b", "scale_bias,depthwise,last_layer"), 3)
    models.activate("b")
    _one_step(b, x, np.array([0, 1]))
    self.assertEqual(_changed(a.model.variables, snap), [])
    self.assertAllClose(a.model(x, training=False), before, atol=0)

  def test_channel_scale_bias_wraps_only_layers_without_bn(self):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_bn")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(5, 1, name="conv_plain")(x)
    base = keras.Model(inputs, x)
    self.assertEqual(layers_followed_by_bn(base), {"conv_bn"})
    patched = patch_model(base, "t", parse_patch("channel_scale_bias"))
    wrapped = [p for p, _, _ in patched.patch_layers]
    self.assertLen(wrapped, 1)
    self.assertIsInstance(wrapped[0], ChannelScaleBiasPatch)
    self.assertIs(wrapped[0].layer, base.get_layer("conv_plain"))
    x = random_images(2, 8)
    self.assertAllClose(patched.model(x), base(x), atol=1e-5)


class OneStepChangesOnlyThePatchTest(tf.test.TestCase, parameterized.TestCase):
  """After one training step, exactly the intended variables changed."""

  @parameterized.named_parameters(
      ("last_layer", "last_layer", "batch", {"head"}),
      ("scale_bias_batch", "scale_bias,last_layer", "batch", {"head", "gamma", "beta", "stats"}),
      ("scale_bias_frozen", "scale_bias,last_layer", "frozen", {"head", "gamma", "beta"}),
      ("scale_bias_random_head", "scale_bias", "batch", {"gamma", "beta", "stats"}),
      ("bn_stats", "bn_stats,last_layer", "batch", {"head", "stats"}),
      ("depthwise", "depthwise,last_layer", "batch", {"head", "depthwise"}),
      ("full", "full,last_layer", "batch", {"head", "full"}),
  )
  def test_only_intended_variables_change(self, patch, statistics, expected):
    backbone = calibrated_mobilenet_v2()
    models = TaskModels(backbone)
    task = models.add(tiny_task("t", patch, statistics), 3)
    models.activate("t")
    base_snap = _snapshot(backbone.model.variables)
    own = models.task_variables("t")
    own_snap = _snapshot(own)
    _one_step(task, random_images(8), np.arange(8) % 3)
    self.assertEqual(_changed(backbone.model.variables, base_snap), [])  # base never moves

    head_ids = {id(v) for v in task.head.weights}
    changed = set()
    for v in own:
      if np.array_equal(v.numpy(), own_snap[id(v)]):
        continue
      name = v.path.split("/")[-1]
      if id(v) in head_ids:
        changed.add("head")
      elif isinstance(v, keras.Variable) and name in ("moving_mean", "moving_variance") and \
          "full" not in patch:
        changed.add("stats")
      elif name in ("gamma", "beta") and "full" not in patch:
        changed.add(name)
      elif "depthwise" in patch and name == "kernel":
        changed.add("depthwise")
      else:
        changed.add("full")
    self.assertEqual(changed, expected)

  def test_train_base_task_trains_the_shared_base(self):
    backbone = tiny_mobilenet_v2()
    models = TaskModels(backbone)
    task = models.add(tiny_task("t", "last_layer", train_base=True), 3)
    models.activate("t")
    snap = _snapshot(backbone.model.trainable_variables)
    _one_step(task, random_images(8), np.arange(8) % 3)
    moved = [v for v in backbone.model.trainable_variables
             if not np.array_equal(v.numpy(), snap[id(v)])]
    self.assertGreater(len(moved), 0.9 * len(snap))


class PatchSpecTest(tf.test.TestCase):

  def test_unknown_patch_kind(self):
    with self.assertRaisesRegex(ConfigError, r"Unknown patch kind 'scale_bais'.*Did you mean "
                                r"'scale_bias'"):
      parse_patch("scale_bais,last_layer")

  def test_contradictions(self):
    with self.assertRaisesRegex(ConfigError, "either 'scale_bias'.*or 'bn_stats'"):
      parse_patch("scale_bias,bn_stats")
    with self.assertRaisesRegex(ConfigError, "nothing to train"):
      parse_patch("")
    with self.assertRaisesRegex(ConfigError, "statistics must be one of"):
      parse_patch("scale_bias", statistics="moving")


if __name__ == "__main__":
  tf.test.main()
