"""The bias-only kind (k4p1/patches/bias.py): README "Extending k4p1"'s worked example.

Everything a patch kind must do, on a kind that lives in one file: a fresh patch equals the
base, it trains only its own variables, the report counts it, its patch file round-trips, it
folds into a plain Keras model, and it exports to a SavedModel and to TFLite.
"""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from k4p1 import export, patches
from k4p1.backbones import Backbone, build_backbone
from k4p1.config import BackboneSpec
from k4p1.export.tflite import run_tflite, tflite_model
from k4p1.export.fold import fold_task
from k4p1.model import TaskModels
from k4p1.patches.bias import BiasPatch
from k4p1.analysis.report import task_parameters
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_task


def _biased_model():
  """conv (bias, linear) -> BN -> relu -> dense (bias, relu) -> dense (bias, linear)."""
  keras.utils.set_random_seed(0)
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dense(5, activation="relu", name="dense_relu")(x)
  x = keras.layers.Dense(6, name="dense_linear")(x)
  return keras.Model(inputs, x)


def _sgd_step(task, images, labels, lr=0.5):
  variables = task.model.trainable_variables
  with tf.GradientTape() as tape:
    logits = task.model(images, training=True)
    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True))
  keras.optimizers.SGD(lr).apply_gradients(zip(tape.gradient(loss, variables), variables))


class BiasKindTest(tf.test.TestCase):

  def test_targets_bn_and_linear_biased_layers_only(self):
    base = _biased_model()
    patched = patches.patch_model(base, "t", patches.parse_patch("bias"))
    wrapped = sorted(layer.layer.name for layer, _, _ in patched.patch_layers)
    self.assertEqual(wrapped, ["bn", "conv", "dense_linear"])  # not the relu Dense
    for layer, _, kind in patched.patch_layers:
      self.assertIsInstance(layer, BiasPatch)
      self.assertEqual(kind, "bias")
    x = random_images(2, 8)
    self.assertAllEqual(patched.model(x, training=False), base(x, training=False))

  def test_conflicts_with_scale_bias(self):
    with self.assertRaisesRegex(Exception, "either 'bias' or 'scale_bias'"):
      patches.parse_patch("bias,scale_bias")

  def test_golden_count_mobilenet_v2_224(self):
    """BitFit on MobileNetV2 1.0 @224: one bias per BN channel (its backbone has no biases)."""
    backbone = build_backbone(BackboneSpec("mobilenet_v2", alpha=1.0, input_size=224,
                                           weights="none"))
    models = TaskModels(backbone)
    models.add(tiny_task("b", "bias,last_layer"), 1000)
    row = task_parameters(models, "b")
    self.assertEqual(row["components"]["bias"], {"learned": 17_056, "fixed": 0})
    self.assertEqual(row["trainable"], 17_056 + 1_281_000)
    self.assertEqual(patches.label(models.tasks["b"].spec.patch), "bias+last_layer")

  @pytest.mark.large  # ~25 s end to end; the kind's numerics are tested in the fast tier
  def test_trains_saves_folds_and_exports(self):
    backbone = calibrated_mobilenet_v2()
    models = TaskModels(backbone)
    task = models.add(tiny_task("b", "bias,last_layer"), 3)
    models.activate("b")
    own = models.task_variables("b")
    base_before = [v.numpy().copy() for v in backbone.model.variables]
    own_before = [v.numpy().copy() for v in own]
    images, labels = random_images(8), np.arange(8) % 3
    for _ in range(3):
      _sgd_step(task, images, labels)
    # Only the task's deltas and classifier moved; the shared base did not.
    for v, before in zip(backbone.model.variables, base_before):
      self.assertAllEqual(v.numpy(), before)
    moved = [v.path for v, before in zip(own, own_before) if not np.array_equal(v, before)]
    self.assertLen(moved, len(own))
    # Report: learned = every BN channel of the base; fixed = nothing.
    channels = sum(int(l.moving_mean.shape[0]) for l in backbone.model.layers
                   if isinstance(l, keras.layers.BatchNormalization))
    self.assertEqual(task_parameters(models, "b")["components"]["bias"],
                     {"learned": channels, "fixed": 0})
    expected = task.model(images, training=False).numpy()
    scale = float(np.max(np.abs(expected)))

    # Patch file: records the kind, and rebuilds the task exactly on another TaskModels.
    workdir = tempfile.mkdtemp()
    path = os.path.join(workdir, "b.k4p1.npz")
    export.save_patch(models, "b", path)
    meta, _ = export.read_patch(path)
    self.assertEqual(meta["patch"]["kinds"], {"bias": {}})
    other = TaskModels(Backbone(backbone.model, backbone.input_size, backbone.preprocessing,
                                backbone.spec))
    again = export.add_task_from_patch(other, path)
    self.assertAllEqual(again.model(images, training=False), expected)

    # Fold: an ordinary Keras model, equal to float32 rounding.
    folded = fold_task(models, "b")
    self.assertFalse([l for l in folded.layers[2].layers if isinstance(l, patches.PatchLayer)])
    self.assertAllClose(folded(images), expected, rtol=1e-5, atol=1e-5 * scale)

    # SavedModel signature and TFLite.
    saved = export.export_saved_model(models, ["b"], os.path.join(workdir, "saved_model"))
    serve = tf.saved_model.load(saved).signatures["b"]
    probabilities = tf.nn.softmax(expected).numpy()
    out = serve(images=tf.constant(images.astype(np.uint8)))["probabilities"].numpy()
    uint8_expected = tf.nn.softmax(task.model(images.astype(np.uint8).astype(np.float32),
                                              training=False)).numpy()
    self.assertAllClose(out, uint8_expected, rtol=1e-5, atol=1e-5)
    lite = run_tflite(tflite_model(models, ["b"]), "b", images)
    self.assertAllClose(lite, probabilities, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
  tf.test.main()
