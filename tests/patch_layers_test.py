"""Patch layers: serialization round trips and numerics against NumPy."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from k4p1.frontends import ImageFrontend as Preprocess
from k4p1.patches.batchnorm import FusedBatchNormalization
from k4p1.patches.channel_scale_bias import ChannelScaleBiasPatch
from k4p1.patches.depthwise import DepthwisePatch
from k4p1.patches.scale_bias import ScaleBiasPatch


def _built_bn(channels=4, scale=True, seed=0):
  rng = np.random.RandomState(seed)
  bn = keras.layers.BatchNormalization(scale=scale, epsilon=1e-3, name="bn")
  bn.build((None, 5, 5, channels))
  if scale:
    bn.gamma.assign(rng.uniform(0.5, 1.5, channels))
  bn.beta.assign(rng.normal(size=channels))
  bn.moving_mean.assign(rng.normal(size=channels))
  bn.moving_variance.assign(rng.uniform(0.5, 2.0, channels))
  return bn


def _patch_from(bn, **kwargs):
  patch = ScaleBiasPatch.from_base(bn, task="t", **kwargs)
  patch.build((None, 5, 5, bn.moving_mean.shape[0]))
  patch.init_from_base(bn)
  return patch


def _roundtrip(layer, x):
  config = layer.get_config()
  clone = layer.__class__.from_config(config)
  clone.build(x.shape)
  clone.set_weights(layer.get_weights())
  return config, clone


class SerializationTest(tf.test.TestCase, parameterized.TestCase):

  def test_scale_bias_roundtrip(self):
    x = np.random.RandomState(1).normal(size=(2, 5, 5, 4)).astype("float32")
    patch = _patch_from(_built_bn(), statistics="frozen")
    config, clone = _roundtrip(patch, x)
    self.assertEqual(clone.get_config(), config)
    self.assertEqual((clone.task, clone.statistics, clone.base_name), ("t", "frozen", "bn"))
    self.assertAllClose(clone(x, training=True), patch(x, training=True))
    # Registered: the generic Keras deserializer finds it.
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(patch))
    self.assertIsInstance(again, ScaleBiasPatch)

  def test_depthwise_roundtrip(self):
    base = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")
    x = np.random.RandomState(2).normal(size=(1, 6, 6, 3)).astype("float32")
    base(x)
    patch = DepthwisePatch.from_base(base, task="t")
    patch(x)
    patch.init_from_base(base)
    config, clone = _roundtrip(patch, x)
    self.assertEqual(clone.get_config(), config)
    self.assertAllClose(clone(x), patch(x))

  def test_channel_scale_bias_roundtrip(self):
    base = keras.layers.Dense(3, name="dense")
    x = np.ones((2, 4), "float32")
    patch = ChannelScaleBiasPatch(base, task="t")
    patch(x)
    patch.scale.assign([1.0, 2.0, 3.0])
    config = patch.get_config()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(patch))
    clone(x)
    clone.set_weights(patch.get_weights())
    self.assertEqual(clone.get_config()["task"], config["task"])
    self.assertAllClose(clone(x), patch(x))

  def test_preprocess_roundtrip_and_values(self):
    layer = Preprocess("tf")
    clone = Preprocess.from_config(layer.get_config())
    self.assertAllClose(clone(np.array([[0.0, 127.5, 255.0]])), [[-1.0, 0.0, 1.0]])
    with self.assertRaisesRegex(ValueError, "mode must be one of"):
      Preprocess("bgr")


class NumericsTest(tf.test.TestCase, parameterized.TestCase):

  def test_fresh_patch_equals_base_bn(self):
    bn = _built_bn()
    x = np.random.RandomState(3).normal(size=(3, 5, 5, 4)).astype("float32")
    self.assertAllClose(_patch_from(bn)(x, training=False), bn(x, training=False), atol=1e-6)

  def test_batch_statistics_mode_matches_numpy(self):
    bn = _built_bn()
    patch = _patch_from(bn, statistics="batch")
    x = np.random.RandomState(4).normal(2.0, 3.0, size=(8, 5, 5, 4)).astype("float32")
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    gamma, beta = patch.gamma.numpy(), patch.beta.numpy()
    expected = gamma * (x - mean) / np.sqrt(var + 1e-3) + beta
    self.assertAllClose(patch(x, training=True), expected, atol=1e-4)
    # The task's own moving statistics move towards the batch statistics (momentum 0.99).
    old_mean, old_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    self.assertAllClose(patch.moving_mean.numpy(), 0.99 * old_mean + 0.01 * mean, atol=1e-5)
    self.assertAllClose(patch.moving_variance.numpy(), 0.99 * old_var + 0.01 * var, atol=1e-5)
    self.assertAllClose(bn.moving_mean.numpy(), old_mean)  # the base is untouched

  def test_frozen_statistics_mode_matches_numpy(self):
    bn = _built_bn()
    patch = _patch_from(bn, statistics="frozen")
    x = np.random.RandomState(5).normal(2.0, 3.0, size=(8, 5, 5, 4)).astype("float32")
    mm, mv = patch.moving_mean.numpy(), patch.moving_variance.numpy()
    expected = patch.gamma.numpy() * (x - mm) / np.sqrt(mv + 1e-3) + patch.beta.numpy()
    self.assertAllClose(patch(x, training=True), expected, atol=1e-4)
    self.assertAllClose(patch.moving_mean.numpy(), mm)  # statistics do not move
    self.assertLen(patch.trainable_weights, 2)

  def test_statistics_only_patch_learns_nothing(self):
    patch = _patch_from(_built_bn(), learn=False)
    self.assertEqual(patch.kind, "bn_stats")
    self.assertEmpty(patch.trainable_weights)
    x = np.random.RandomState(6).normal(5.0, 1.0, size=(8, 5, 5, 4)).astype("float32")
    before = patch.moving_mean.numpy()
    patch(x, training=True)
    self.assertNotAllClose(patch.moving_mean.numpy(), before)

  def test_patch_adds_gamma_when_base_has_none(self):
    bn = _built_bn(scale=False)  # like InceptionV3
    patch = _patch_from(bn)
    self.assertAllEqual(patch.gamma.numpy(), np.ones(4))
    x = np.random.RandomState(7).normal(size=(2, 5, 5, 4)).astype("float32")
    self.assertAllClose(patch(x, training=False), bn(x, training=False), atol=1e-6)
    self.assertLen(patch.trainable_weights, 2)

  def test_depthwise_matches_numpy(self):
    base = keras.layers.DepthwiseConv2D(3, padding="valid", use_bias=False)
    x = np.random.RandomState(8).normal(size=(2, 5, 5, 2)).astype("float32")
    base(x)
    patch = DepthwisePatch.from_base(base, task="t")
    patch(x)
    patch.init_from_base(base)
    k = np.random.RandomState(9).normal(size=patch.kernel.shape).astype("float32")
    patch.kernel.assign(k)
    expected = np.zeros((2, 3, 3, 2), "float32")
    for i in range(3):
      for j in range(3):
        expected[:, i, j, :] = np.einsum("bhwc,hwc->bc", x[:, i:i + 3, j:j + 3, :], k[..., 0])
    self.assertAllClose(patch(x), expected, atol=1e-5)
    self.assertNotAllClose(base(x), expected)  # the base kernel did not change

  def test_channel_scale_bias_matches_numpy(self):
    base = keras.layers.Dense(3, use_bias=False)
    x = np.random.RandomState(10).normal(size=(4, 2)).astype("float32")
    patch = ChannelScaleBiasPatch(base, task="t")
    y0 = patch(x)
    self.assertAllClose(y0, base(x))  # fresh patch = identity
    patch.scale.assign([2.0, -1.0, 0.5])
    patch.bias.assign([1.0, 0.0, -3.0])
    w = base.kernel.numpy()
    self.assertAllClose(patch(x), (x @ w) * [2.0, -1.0, 0.5] + [1.0, 0.0, -3.0], atol=1e-5)

  def test_fused_equals_keras_batch_normalization(self):
    x = np.random.RandomState(11).normal(1.0, 2.0, size=(4, 6, 6, 5)).astype("float32")
    for training in (False, True):
      keras_bn = _built_bn(5, seed=3)
      fused = FusedBatchNormalization.from_config(keras_bn.get_config())
      fused.build(x.shape)
      fused.set_weights(keras_bn.get_weights())
      with tf.GradientTape(persistent=True) as tape:
        y_keras = keras_bn(x, training=training)
        y_fused = fused(x, training=training)
        l_keras = tf.reduce_sum(y_keras * y_keras)
        l_fused = tf.reduce_sum(y_fused * y_fused)
      self.assertAllClose(y_fused, y_keras, atol=1e-5)
      for a, b in zip(tape.gradient(l_fused, [fused.gamma, fused.beta]),
                      tape.gradient(l_keras, [keras_bn.gamma, keras_bn.beta])):
        self.assertAllClose(a, b, rtol=1e-4, atol=1e-3)
      self.assertAllClose(fused.moving_mean, keras_bn.moving_mean, atol=1e-6)
      self.assertAllClose(fused.moving_variance, keras_bn.moving_variance, atol=1e-6)
    # Where the kernel does not apply (rank 2), it is exactly Keras.
    x2 = x[:, 0, 0, :]
    keras_bn = keras.layers.BatchNormalization()
    fused = FusedBatchNormalization()
    for layer in (keras_bn, fused):
      layer.build(x2.shape)
      layer.moving_variance.assign(np.full(5, 2.0, "float32"))
    self.assertAllClose(fused(x2, training=True), keras_bn(x2, training=True), atol=1e-6)
    self.assertAllClose(fused.moving_variance, keras_bn.moving_variance, atol=1e-6)

  def test_patch_needs_task(self):
    with self.assertRaisesRegex(ValueError, "needs a task name"):
      ScaleBiasPatch(task="")


if __name__ == "__main__":
  tf.test.main()
