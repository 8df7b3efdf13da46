"""Patch files and the multi-task SavedModel."""

import os
import shutil
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from k4p1 import export
from k4p1.model import TaskModels
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_mobilenet_v2, tiny_task


def _train_a_little(models, name, seed=0):
  """Perturbs a task's own variables so that a round trip has something to reproduce."""
  rng = np.random.RandomState(seed)
  for v in models.task_variables(name):
    noise = rng.normal(0, 0.05, v.shape).astype("float32")
    v.assign(v.numpy() * (1 + noise) if v.name == "moving_variance" else v.numpy() + noise)


class PatchFileTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, True)
    self.backbone = calibrated_mobilenet_v2(seed=1)
    self.models = TaskModels(self.backbone)
    self.models.add(tiny_task("flowers", "scale_bias,depthwise,last_layer"), 5)
    _train_a_little(self.models, "flowers")
    self.path = os.path.join(self.dir, "flowers.k4p1.npz")
    self.size = export.save_patch(self.models, "flowers", self.path)

  def _fresh(self, num_classes=5, patch="scale_bias,depthwise,last_layer", backbone=None):
    models = TaskModels(backbone or self.backbone)
    models.add(tiny_task("flowers", patch), num_classes)
    return models

  def test_round_trip_reproduces_outputs_exactly(self):
    x = random_images(4)
    expected = self.models.tasks["flowers"].model(x, training=False).numpy()
    # A second model set on the same base: its own fresh patch, then loaded from the file.
    other = self._fresh()
    self.assertNotAllClose(other.tasks["flowers"].model(x, training=False), expected)
    export.load_patch(other, "flowers", self.path)
    self.assertAllEqual(other.tasks["flowers"].model(x, training=False), expected)
    self.assertEqual(os.path.getsize(self.path), self.size)

  def test_add_task_from_patch_file(self):
    models = TaskModels(self.backbone)
    task = export.add_task_from_patch(models, self.path, name="flowers")
    x = random_images(2)
    self.assertAllEqual(task.model(x, training=False),
                        self.models.tasks["flowers"].model(x, training=False))

  def test_records_kinds_with_options_and_reads_version_1_files(self):
    meta, _ = export.read_patch(self.path)
    self.assertEqual(meta["format"], "k4p1-patch-v2")
    self.assertEqual(meta["patch"], {"kinds": {"scale_bias": {"statistics": "batch"},
                                               "depthwise": {}},
                                     "train_head": True, "train_base": False})
    # A file written by k4p1 before per-kind options (format v1) still loads, exactly.
    for patch, statistics in (("scale_bias,depthwise,last_layer", "frozen"),
                              ("full,last_layer", "batch")):
      models = TaskModels(self.backbone)
      models.add(tiny_task("old", patch, statistics), 5)
      _train_a_little(models, "old")
      path = os.path.join(self.dir, "old.k4p1.npz")
      export.save_patch(models, "old", path)
      self._rewrite_as_version_1(path, statistics)
      other = TaskModels(self.backbone)
      task = export.add_task_from_patch(other, path)
      self.assertEqual(task.spec.patch, models.tasks["old"].spec.patch)
      x = random_images(2)
      self.assertAllEqual(task.model(x, training=False),
                          models.tasks["old"].model(x, training=False))

  @staticmethod
  def _rewrite_as_version_1(path, statistics):
    """What k4p1 wrote before per-kind options: kinds as a list, statistics beside them, and
    a private copy's variables under copy.<layer index>."""
    import json
    with np.load(path) as f:
      meta = json.loads(f["__k4p1_meta__"].tobytes().decode())
      values = f["values"]
    rec = meta["patch"]
    meta.update(format="k4p1-patch-v1", statistics=statistics, train_base=rec["train_base"],
                patch=sorted(list(rec["kinds"]) + (["last_layer"] if rec["train_head"] else [])))
    if "full" in rec["kinds"]:
      meta["variables"] = {("copy." + k[len("base."):] if k.startswith("base.") else k): v
                           for k, v in meta["variables"].items()}
    np.savez(path, values=values,
             __k4p1_meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))

  def test_file_holds_only_the_patch(self):
    meta, arrays = export.read_patch(self.path)
    n = sum(a.size for a in arrays.values())
    self.assertEqual(n, sum(int(np.prod(v.shape)) for v in self.models.task_variables("flowers")))
    self.assertLess(n, 0.5 * sum(int(np.prod(v.shape)) for v in self.backbone.model.variables))
    self.assertEqual(meta["num_classes"], 5)
    self.assertEqual(meta["base"]["backbone"], "mobilenet_v2")

  def test_wrong_base_architecture(self):
    other = self._fresh(backbone=tiny_mobilenet_v2(alpha=0.5))
    with self.assertRaisesRegex(export.PatchFileError, "different base architecture.*alpha 0.35"):
      export.load_patch(other, "flowers", self.path)

  def test_wrong_base_weights(self):
    other = self._fresh(backbone=tiny_mobilenet_v2(seed=7))
    before = [v.numpy().copy() for v in other.task_variables("flowers")]
    with self.assertRaisesRegex(export.PatchFileError, "base with other weights"):
      export.load_patch(other, "flowers", self.path)
    for v, b in zip(other.task_variables("flowers"), before):  # nothing half-loaded
      self.assertAllEqual(v.numpy(), b)

  def test_wrong_class_count(self):
    with self.assertRaisesRegex(export.PatchFileError, "5-class classifier.*has 7 classes"):
      export.load_patch(self._fresh(num_classes=7), "flowers", self.path)

  def test_wrong_patch_kinds(self):
    with self.assertRaisesRegex(export.PatchFileError, "does not match task.*missing"):
      export.load_patch(self._fresh(patch="bn_stats,last_layer"), "flowers", self.path)

  def test_not_a_patch_file(self):
    bad = os.path.join(self.dir, "bad.npz")
    with open(bad, "wb") as f:
      f.write(b"not a zip")
    with self.assertRaisesRegex(export.PatchFileError, "not a k4p1 patch file"):
      export.read_patch(bad)
    with self.assertRaisesRegex(export.PatchFileError, "not found"):
      export.read_patch(os.path.join(self.dir, "missing.npz"))

  def test_failed_write_leaves_nothing(self):
    target = os.path.join(self.dir, "sub", "p.npz")
    with mock.patch("os.replace", side_effect=OSError("disk full")):
      with self.assertRaises(OSError):
        export.save_patch(self.models, "flowers", target)
    self.assertEqual(os.listdir(os.path.dirname(target)), [])


def _unnamed_backbone(seed):
  """A backbone whose layers Keras names by a per-process counter (like InceptionV3's BN)."""
  import keras
  from k4p1.backbones import Backbone
  from k4p1.config import BackboneSpec
  keras.utils.set_random_seed(seed)
  inputs = keras.Input((32, 32, 3))
  x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
  x = keras.layers.BatchNormalization()(x)
  x = keras.layers.ReLU()(x)
  model = keras.Model(inputs, x)
  return Backbone(model, 32, "tf", BackboneSpec("custom"))


class PatchFileSitesTest(tf.test.TestCase):

  def test_load_survives_different_auto_generated_layer_names(self):
    first = TaskModels(_unnamed_backbone(seed=3))
    first.add(tiny_task("t", "scale_bias,last_layer"), 3)
    _train_a_little(first, "t")
    path = os.path.join(tempfile.mkdtemp(), "t.npz")
    export.save_patch(first, "t", path)
    second = TaskModels(_unnamed_backbone(seed=3))  # same weights, later layer numbers
    self.assertNotEqual(first.base.layers[2].name, second.base.layers[2].name)
    second.add(tiny_task("t", "scale_bias,last_layer"), 3)
    export.load_patch(second, "t", path)
    x = random_images(2)
    self.assertAllEqual(second.tasks["t"].model(x, training=False),
                        first.tasks["t"].model(x, training=False))


class SavedModelTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    backbone = calibrated_mobilenet_v2(seed=2)
    cls.models = TaskModels(backbone)
    cls.models.add(tiny_task("digits", "last_layer", train_base=True), 5)
    cls.models.add(tiny_task("letters", "scale_bias,last_layer"), 3)
    _train_a_little(cls.models, "letters")
    cls.dir = tempfile.mkdtemp()
    cls.path = os.path.join(cls.dir, "export_test_model")
    export.export_saved_model(cls.models, ["digits", "letters"], cls.path)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir, True)
    super().tearDownClass()

  def test_signatures_are_predict_signatures_with_named_io(self):
    saved = loader_impl.parse_saved_model(self.path)
    signatures = saved.meta_graphs[0].signature_def
    self.assertContainsSubset({"digits", "letters", "serving_default"}, set(signatures))
    for name in ("digits", "letters", "serving_default"):
      sig = signatures[name]
      self.assertEqual(sig.method_name, "tensorflow/serving/predict")
      self.assertEqual(set(sig.inputs), {"images"})
      self.assertEqual(sig.inputs["images"].dtype, tf.uint8.as_datatype_enum)
      self.assertEqual(set(sig.outputs), {"probabilities", "classes"})

  def test_each_signature_equals_the_keras_model(self):
    loaded = tf.saved_model.load(self.path)
    images = random_images(5).astype("uint8")
    for name, n in (("digits", 5), ("letters", 3)):
      out = loaded.signatures[name](images=tf.constant(images))
      expected = tf.nn.softmax(self.models.tasks[name].model(images.astype("float32"),
                                                             training=False)).numpy()
      self.assertEqual(out["probabilities"].shape, (5, n))
      # Grappler fuses ops in the SavedModel graph, so float rounding differs slightly.
      self.assertAllClose(out["probabilities"], expected, atol=1e-5, rtol=1e-4)
      self.assertAllEqual(out["classes"], expected.argmax(-1))
    default = loaded.signatures["serving_default"](images=tf.constant(images))
    self.assertAllClose(default["probabilities"],
                        loaded.signatures["digits"](images=tf.constant(images))["probabilities"])

  def test_any_image_size_is_resized_inside(self):
    loaded = tf.saved_model.load(self.path)
    big = np.random.RandomState(0).randint(0, 256, (2, 64, 48, 3)).astype("uint8")
    out = loaded.signatures["letters"](images=tf.constant(big))
    self.assertAllClose(tf.reduce_sum(out["probabilities"], -1), [1.0, 1.0], atol=1e-5)

  def test_unknown_task_is_refused_and_nothing_written(self):
    target = os.path.join(tempfile.mkdtemp(), "out")
    with self.assertRaisesRegex(ValueError, "Cannot export task 'cars'"):
      export.export_saved_model(self.models, ["cars"], target)
    self.assertEqual(os.listdir(os.path.dirname(target)), [])


class SignatureKindsTest(tf.test.TestCase):

  def test_registered_kinds_build_named_signatures(self):
    from k4p1.errors import ConfigError
    from k4p1.export import saved_model
    models = TaskModels(tiny_mobilenet_v2())
    models.add(tiny_task("a", "scale_bias,last_layer"), 3)
    models.add(tiny_task("b", "depthwise,last_layer"), 4)
    self.assertEqual(set(saved_model.SIGNATURE_KINDS.names()), {"task", "mixed", "cascade"})
    built = saved_model.signatures(models, {"task": ["b", "a"], "mixed": ["a", "b"]})
    self.assertEqual([s.name for s in built], ["b", "a", "mixed"])
    out = built[2].function(images=tf.zeros([2, 40, 40, 3], tf.uint8),
                            task_id=tf.constant([1, 0]))
    self.assertEqual(tuple(out["probabilities"].shape), (2, 4))
    with self.assertRaisesRegex(ConfigError, "Unknown signature kind 'cascad'"):
      saved_model.signatures(models, {"cascad": ["a"]})


if __name__ == "__main__":
  tf.test.main()
