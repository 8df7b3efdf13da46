"""Multi-resolution: one backbone at several input sizes with per-resolution patches and a
shared classifier; its SavedModel and TFLite exports, the cascade signature, multiply-add
counts and the Table 5 accounting (configs/multires.py)."""

import dataclasses
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from k4p1 import config as config_lib
from k4p1 import experiment, export
from k4p1.methods.multires import cascade as cascade_lib
from k4p1.methods.multires.cascade import Cascade, Stage
from k4p1.analysis.cost import multiply_adds
from k4p1.backbones import build_backbone, for_sizes
from k4p1.config import BackboneSpec
from k4p1.errors import ConfigError, DeployError
from k4p1.export import patch_files
from k4p1.methods.multires.signature import cascade_serving_function
from k4p1.model import TaskModels, recompute_batch_statistics
from k4p1.testing import (MULTIRES_SMOKE_CONFIG, REPO_ROOT, calibrated_mobilenet_v2,
                          smoke_run_stdout, smoke_run_workdir, tiny_task)

SIZES = (64, 32)


def _models(patch="scale_bias,last_layer(shared=true)", seed=0):
  models = TaskModels(for_sizes(calibrated_mobilenet_v2(size=SIZES[0], seed=seed), SIZES))
  for size in SIZES:
    models.add(dataclasses.replace(tiny_task(f"r{size}", patch), input_size=size), 4)
  return models


def _perturb(models, seed=0):
  """Moves every task variable and the shared head off its init (a trained stand-in)."""
  rng = np.random.RandomState(seed)
  for name in models.tasks:
    for v in models.task_variables(name):
      noise = rng.normal(0, 0.05, v.shape).astype("float32")
      v.assign(v.numpy() * (1 + noise) if v.name == "moving_variance" else v.numpy() + noise)
  if models.shared_head is not None:
    for v in models.shared_head.weights:
      v.assign(v.numpy() + rng.normal(0, 0.3, v.shape).astype("float32"))


def _uint8(n=6, h=40, w=52, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, h, w, 3)).astype(np.uint8)


def _by_hand(models, task, images):
  """Softmax of `task`'s Keras model on images resized bilinearly to its size."""
  size = models.tasks[task].input_spec.size
  x = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear")
  return tf.nn.softmax(models.tasks[task].model(x, training=False)).numpy()


class SharingTest(tf.test.TestCase):

  def test_shared_weights_are_the_same_variables(self):
    models = _models()
    a, b = (models.tasks[f"r{s}"] for s in SIZES)
    self.assertIs(a.head, b.head)
    self.assertIs(a.head, models.shared_head)
    used = [{id(v) for v in t.model.variables} for t in (a, b)]
    shared = {id(v) for v in models.used_shared_variables()}
    self.assertTrue(shared <= used[0] and shared <= used[1])
    # Only the patches differ: each task's own variables are BN scale/bias/statistics, disjoint.
    own = [{id(v) for v in models.task_variables(t.name)} for t in (a, b)]
    self.assertFalse(own[0] & own[1])
    self.assertEqual(used[0] - shared, own[0])
    for t in (a, b):
      self.assertEqual({k for k, _ in models.variable_kinds(t.name).values()}, {"scale_bias"})
    self.assertEqual(a.input_spec.shape, (64, 64, 3))
    self.assertEqual(b.input_spec.shape, (32, 32, 3))
    # The shared classifier trains with each task (last_layer) and counts as shared.
    head = {id(v) for v in models.shared_head.trainable_weights}
    self.assertTrue(head <= {id(v) for v in models.trainable_variables("r32")})
    self.assertTrue(head <= {id(v) for v in models.shared_learnable_variables()})

  def test_flexible_backbone_equals_keras_applications_at_each_size(self):
    base = build_backbone(BackboneSpec("mobilenet_v2", alpha=0.35, input_size=224,
                                       weights="none", seed=3))
    sizes = (224, 192, 160, 128, 96)
    flexible = for_sizes(base, sizes)
    self.assertEqual(flexible.model.input_shape, (None, None, None, 3))
    for size in sizes:
      ref = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=0.35,
                                           include_top=False, weights=None)
      ref.set_weights(base.model.get_weights())
      x = np.random.RandomState(size).uniform(-1, 1, (1, size, size, 3)).astype("float32")
      self.assertAllClose(flexible.model(x), ref(x), rtol=1e-5, atol=1e-5)

  def test_shared_head_needs_the_same_classes(self):
    models = _models()
    with self.assertRaisesRegex(ValueError, "shares a classifier with 4 classes; it has 7"):
      models.add(dataclasses.replace(tiny_task("r64b", "last_layer(shared=true)"),
                                     input_size=64), 7)

  def test_shared_batch_statistics_average_every_task(self):
    # One BN layer two models share, fed at two sizes: its recomputed mean is the average of
    # the two batches' channel means.
    conv = keras.layers.Conv2D(3, 3, use_bias=False, kernel_initializer="ones")
    bn = keras.layers.BatchNormalization()
    def model(size):
      x = keras.Input((size, size, 2))
      return keras.Model(x, bn(conv(x)))
    m1, m2 = model(8), model(4)
    rng = np.random.RandomState(0)
    x1, x2 = rng.normal(size=(2, 8, 8, 2)), rng.normal(1.0, 1.0, size=(3, 4, 4, 2))
    recompute_batch_statistics({"a": m1, "b": m2}, [bn], [("a", x1), ("b", x2)])
    means = [np.mean(conv(x).numpy(), axis=(0, 1, 2)) for x in (x1, x2)]
    self.assertAllClose(bn.moving_mean.numpy(), (means[0] + means[1]) / 2, rtol=1e-5, atol=1e-6)


class BadInputTest(tf.test.TestCase):

  def test_size_not_a_multiple_of_the_output_stride(self):
    with self.assertRaisesRegex(ConfigError, r"\[100\] are not multiples of 32"):
      for_sizes(calibrated_mobilenet_v2(size=64), [64, 100])

  def test_resolution_below_the_minimum(self):
    with self.assertRaisesRegex(ConfigError, "below 32"):
      config_lib.load(os.path.join(REPO_ROOT, "configs", "multires.py") +
                      ":smoke,resolutions=64/16")
    c = config_lib.load(os.path.join(REPO_ROOT, "configs", "multires.py") + ":smoke",
                        lock=False)
    c.tasks.r32.input_size = 16
    with self.assertRaisesRegex(ConfigError, "tasks.r32.input_size must be >= 32"):
      config_lib.validate(c)

  def test_a_shape_bound_backbone_cannot_change_size(self):
    vit = build_backbone(BackboneSpec("vit", alpha=0.35, input_size=32, weights="none"))
    with self.assertRaisesRegex(ConfigError, "cannot run at sizes"):
      for_sizes(vit, [64])

  def test_cascade_config_checks(self):
    c = config_lib.load(os.path.join(REPO_ROOT, "configs", "multires.py") + ":smoke",
                        lock=False)
    for field, value, message in (("tasks", "r64", "at least two distinct tasks"),
                                  ("tasks", "r64,r16", "not a task"),
                                  ("validation", 1.0, "must be in \\(0, 1\\)"),
                                  ("tolerance", -0.1, "in \\[0, 1\\)")):
      bad = c.copy_and_resolve_references()
      bad.cascade[field] = value
      with self.assertRaisesRegex(ConfigError, message):
        config_lib.validate(bad)


# ~50 s (a SavedModel with a cascade, two TFLite conversions): the CI slow tier.
@pytest.mark.large
class ExportTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    cls.models = _models()
    _perturb(cls.models)
    images = _uint8()
    p64 = _by_hand(cls.models, "r64", images)
    # A threshold that sends some examples on: the median confidence at 32px.
    p32 = _by_hand(cls.models, "r32", images)
    cls.cascade = Cascade((Stage("r32", float(np.median(p32.max(-1)))), Stage("r64", 0.0)))
    cls.images, cls.p32, cls.p64 = images, p32, p64
    cls.path = os.path.join(cls.dir, "saved_model")
    export.export_saved_model(cls.models, ["r64", "r32"], cls.path,
                              kinds={"cascade": list(cls.cascade.stages)})
    cls.loaded = tf.saved_model.load(cls.path)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir, True)
    super().tearDownClass()

  def test_each_resolution_signature_equals_its_keras_model(self):
    for task, expected in (("r64", self.p64), ("r32", self.p32)):
      out = self.loaded.signatures[task](images=tf.constant(self.images))
      self.assertAllClose(out["probabilities"], expected, rtol=1e-3, atol=1e-5)

  def test_cascade_signature_equals_the_stages_by_hand(self):
    out = self.loaded.signatures["cascade"](images=tf.constant(self.images))
    predicted, stage = cascade_lib.run_cascade(self.cascade, {"r32": self.p32, "r64": self.p64})
    self.assertAllEqual(out["stage"], stage)
    self.assertAllEqual(out["classes"], predicted)
    self.assertIn(0, stage.tolist())
    self.assertIn(1, stage.tolist())
    expected = np.where((stage == 0)[:, None], self.p32, self.p64)
    # The stages run on sub-batches: float32 sums in another order (1e-4 relative here).
    self.assertAllClose(out["probabilities"], expected, rtol=1e-3, atol=1e-5)
    with open(os.path.join(self.path, "assets.extra", "k4p1_cascade.json")) as f:
      definition = json.load(f)
    self.assertEqual(Cascade.from_json(definition), self.cascade)
    self.assertEqual([s["input_size"] for s in definition["stages"]], [32, 64])

  def test_cascade_signature_runs_only_the_undecided(self):
    # Threshold 0 at the first stage decides everything there: the second stage sees nothing.
    serve = cascade_serving_function(self.models, Cascade((Stage("r32", 0.0),
                                                           Stage("r64", 0.0))))
    out = serve(tf.constant(self.images))
    self.assertAllEqual(out["stage"], np.zeros(len(self.images)))
    self.assertAllClose(out["probabilities"], self.p32, rtol=1e-3, atol=1e-5)
    empty = serve(tf.zeros([0, 20, 20, 3], tf.uint8))
    self.assertEqual(empty["stage"].shape, (0,))
    with self.assertRaisesRegex(DeployError, "not tasks of this model"):
      cascade_serving_function(self.models, Cascade((Stage("r48", 0.0),)))

  def test_tflite_per_resolution(self):
    from k4p1.export import tflite
    for task, size in (("r64", 64), ("r32", 32)):
      content = tflite.tflite_model(self.models, [task])
      x = tf.image.resize(tf.cast(self.images, tf.float32), (size, size)).numpy()
      expected = tf.nn.softmax(self.models.tasks[task].model(x, training=False)).numpy()
      self.assertAllClose(tflite.run_tflite(content, task, x), expected, rtol=1e-4, atol=1e-5)

  def test_patch_files_and_shared_head_round_trip(self):
    d = tempfile.mkdtemp(dir=self.dir)
    paths = [os.path.join(d, f"{t}.k4p1.npz") for t in self.models.tasks]
    for t, p in zip(self.models.tasks, paths):
      export.save_patch(self.models, t, p)
    head = os.path.join(d, patch_files.SHARED_HEAD_FILE)
    patch_files.save_shared_head(self.models, head)
    base = os.path.join(d, "base.weights.h5")
    self.models.base.save_weights(base)
    spec = dataclasses.replace(self.models.backbone.spec, input_size=64)
    with self.assertRaisesRegex(DeployError, "share a classifier"):
      patch_files.assemble(spec, paths, base)
    rebuilt = patch_files.assemble(spec, paths, base, head)
    for task, expected in (("r64", self.p64), ("r32", self.p32)):
      self.assertEqual(rebuilt.tasks[task].input_spec.size, int(task[1:]))
      self.assertAllClose(_by_hand(rebuilt, task, self.images), expected, rtol=1e-5, atol=1e-6)


class CostTest(tf.test.TestCase):

  def test_hand_counts(self):
    x = keras.Input((16, 16, 3))
    y = keras.layers.Conv2D(8, 3, strides=2, padding="same")(x)            # 8x8x8 x 27
    y = keras.layers.DepthwiseConv2D(3, padding="same")(y)                  # 8x8x8 x 9
    y = keras.layers.BatchNormalization()(y)                                # not counted
    inner_in = keras.Input((8, 8, 8))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 1)(inner_in))      # 8x8x4 x 8
    y = inner(y)
    y = keras.layers.SeparableConv2D(6, 3, padding="same")(y)               # 8x8x4x9 + 8x8x4x6
    y = keras.layers.GlobalAveragePooling2D()(y)
    y = keras.layers.Dense(5)(y)                                            # 6 x 5
    cost = multiply_adds(keras.Model(x, y), (16, 16, 3))
    expected = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9 + 8 * 8 * 4 * 8 + (8 * 8 * 4 * 9 + 8 * 8 * 4 * 6) + 30
    self.assertEqual(cost["total"], expected)
    self.assertEqual(cost["uncounted"], [])
    self.assertEqual([n for n, _, _ in cost["layers"]][2], f"{inner.name}/" +
                     inner.layers[-1].name)

  def test_mobilenet_v2_1_0_at_224(self):
    # The MobileNetV2 paper's "300M multiply-adds".
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    self.assertEqual(multiply_adds(model, (224, 224, 3))["total"], 300_774_272)

  def test_task_model_at_each_resolution(self):
    models = _models()
    small = multiply_adds(models.tasks["r32"].model, (32, 32, 3))["total"]
    large = multiply_adds(models.tasks["r64"].model, (64, 64, 3))["total"]
    self.assertGreater(large, 3 * small)   # ~4x the pixels; the classifier does not grow
    self.assertEqual(multiply_adds(models.tasks["r32"].model, (32, 32, 3))["uncounted"], [])


class AcceptanceTest(tf.test.TestCase):

  def test_params_prints_table_5_accounting(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, True)
    config = config_lib.load(os.path.join(REPO_ROOT, "configs", "multires.py"))
    result = experiment.run(config, workdir, "params")
    totals = result["totals"]
    self.assertEqual(totals["all_shared"]["total"], 3_538_984)
    self.assertEqual(totals["independent"]["total"], 5 * 3_538_984)
    # S/B: the shared weights every resolution uses (all but the base's BN), plus 5 patches of
    # 34,112 scales and biases and 34,112 statistics each.
    this = totals["this run"]
    self.assertEqual(this["shared"], 3_538_984 - 2 * 34_112)
    self.assertEqual((this["task_learned"], this["task_fixed"]), (5 * 34_112, 5 * 34_112))
    self.assertEqual([r["task"] for r in result["tasks"]], ["r224", "r192", "r160", "r128", "r96"])

  @pytest.mark.large  # ~40 s; the slow tier's cascade_latency smoke reuses the same run
  def test_smoke_trains_and_exports_resolution_and_cascade_signatures(self):
    # train.py --config=configs/multires.py:smoke, once per process (the bench smoke reads it)
    workdir = smoke_run_workdir(MULTIRES_SMOKE_CONFIG)
    self.assertIn("Cascade (Streeter's greedy", smoke_run_stdout(MULTIRES_SMOKE_CONFIG))
    with open(os.path.join(workdir, "cascade.json")) as f:
      definition = json.load(f)
    self.assertEqual(definition["stages"][-1]["threshold"], 0.0)
    loaded = tf.saved_model.load(os.path.join(workdir, "saved_model"))
    self.assertEqual(set(loaded.signatures), {"serving_default", "r64", "r32", "cascade"})
    out = loaded.signatures["cascade"](images=tf.constant(_uint8(3)))
    self.assertEqual(out["probabilities"].shape, (3, 10))
    for name in ("base.weights.h5", "shared_head.npz", "patches/r64.k4p1.npz"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)


if __name__ == "__main__":
  tf.test.main()
