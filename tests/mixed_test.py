"""Mixed-task serving: routing each example to its task's graph equals its own task signature."""

import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from k4p1.errors import DeployError
from k4p1.export import TASK_INDEX, export_saved_model, serving_function
from k4p1.export.mixed import mixed_model, mixed_serving_function
from k4p1.model import TaskModels
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_task

# name, patch, statistics, classes
TASKS = (("cars", "scale_bias,last_layer", "batch", 4),
         ("birds", "scale_bias,last_layer", "frozen", 7),
         ("stats", "bn_stats,last_layer", "batch", 3),
         ("head", "last_layer", "batch", 5),
         ("dw", "depthwise,last_layer", "batch", 2),
         ("full", "full,last_layer", "batch", 3))
COUNTS = {name: classes for name, _, _, classes in TASKS}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def look_trained(models, name, rng, calibration):
  """Moves task `name`'s patch away from the base and gives it a head whose outputs vary.

  A random head on random weights gives a near-uniform softmax, which would hide a task
  answered with another task's graph. The patch is perturbed by ~10%; the head is whitened on
  the task's own pooled features, so its logits spread by ~3 and depend on the image.
  """
  task = models.tasks[name]
  head = {id(v) for v in task.head.weights}
  for v in models.task_variables(name):
    if id(v) in head:
      continue
    x = v.numpy()
    if "variance" in v.name:
      x = x * rng.uniform(0.8, 1.25, x.shape)
    elif "moving_mean" in v.name:
      x = x + rng.normal(0, 0.1, x.shape)
    else:
      x = x * (1 + rng.normal(0, 0.1, x.shape))
    v.assign(x.astype("float32"))
  features = keras.Model(task.model.input, task.head.input).predict(calibration, verbose=0)
  kernel = (rng.normal(0, 1, (features.shape[1], task.num_classes)) * 3
            / (features.std(0)[:, None] + 1e-3) / np.sqrt(features.shape[1]))
  task.head.kernel.assign(kernel.astype("float32"))
  task.head.bias.assign((-features.mean(0) @ kernel).astype("float32"))


class MixedServingTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.models = TaskModels(calibrated_mobilenet_v2())
    rng = np.random.RandomState(0)
    calibration = random_images(32, seed=7)
    for name, patch, statistics, classes in TASKS:
      cls.models.add(tiny_task(name, patch, statistics), classes)
      look_trained(cls.models, name, rng, calibration)
    cls.tasks = ["cars", "birds", "stats", "head"]
    cls.serve = staticmethod(mixed_serving_function(cls.models, cls.tasks))  # tf.function binds
    cls.images = random_images(8, size=40).astype("uint8")  # any size: resized inside
    # Each task's own signature on the same batch, to compare row by row.
    cls.alone = {name: serving_function(cls.models, name)(images=tf.constant(cls.images))
                 for name in COUNTS}

  def assert_equals_per_task(self, out, ids, tasks):
    width = max(COUNTS[t] for t in tasks)
    self.assertEqual(out["probabilities"].shape, (len(ids), width))
    for i, task_id in enumerate(ids):
      task = tasks[task_id]
      n = COUNTS[task]
      self.assertEqual(int(out["num_classes"][i]), n)
      self.assertAllClose(out["probabilities"][i, :n], self.alone[task]["probabilities"][i],
                          **TOLERANCE)
      self.assertAllEqual(out["probabilities"][i, n:], np.zeros(width - n))
      self.assertEqual(int(out["classes"][i]), int(self.alone[task]["classes"][i]))

  def test_equals_per_task_signatures(self):
    ids = np.array([0, 1, 2, 3, 3, 1, 0, 2], np.int32)
    out = self.serve(images=tf.constant(self.images), task_id=tf.constant(ids))
    self.assertEqual(out["probabilities"].dtype, tf.float32)
    self.assertEqual(out["classes"].dtype, tf.int64)
    self.assertEqual(out["num_classes"].dtype, tf.int32)
    self.assert_equals_per_task(out, ids, self.tasks)

  def test_the_tasks_really_differ(self):
    # The per-task outputs are far from uniform, depend on the image, and differ between tasks:
    # a task answered with another task's graph (or the base's) could not pass the tests above.
    for name, n in COUNTS.items():
      p = self.alone[name]["probabilities"].numpy()
      self.assertGreater(p.max(axis=1).mean() - 1 / n, 0.2, msg=name)
      self.assertGreater(p.std(axis=0).max(), 0.1, msg=name)
    names = sorted(COUNTS)
    for a in names:
      for b in names:
        if a < b:
          n = min(COUNTS[a], COUNTS[b])
          diff = np.abs(self.alone[a]["probabilities"][:, :n] - self.alone[b]["probabilities"][:, :n])
          self.assertGreater(float(np.max(diff)), 0.1, msg=f"{a} vs {b}")
    images = tf.constant(np.repeat(self.images[:1], 2, axis=0))
    out = self.serve(images=images, task_id=tf.constant([0, 1], tf.int32))
    self.assertGreater(np.abs(out["probabilities"][0, :4] - out["probabilities"][1, :4]).max(),
                       1e-2)

  def test_tasks_without_examples(self):
    ids = np.array([1, 3, 3, 1, 1, 3, 3, 1], np.int32)  # cars and stats have none
    out = self.serve(images=tf.constant(self.images), task_id=tf.constant(ids))
    self.assert_equals_per_task(out, ids, self.tasks)
    ids = np.full(8, 2, np.int32)  # a single task
    out = self.serve(images=tf.constant(self.images), task_id=tf.constant(ids))
    self.assert_equals_per_task(out, ids, self.tasks)
    empty = self.serve(images=tf.zeros([0, 40, 40, 3], tf.uint8),
                       task_id=tf.zeros([0], tf.int32))
    self.assertEqual(empty["probabilities"].shape, (0, 7))
    self.assertEqual(empty["classes"].shape, (0,))

  def test_every_patch_kind_mixes(self):
    # Depthwise and full fine-tuning have weights outside BN: each example runs its own task's
    # graph, so they mix like the others.
    tasks = ["dw", "full", "cars"]
    serve = mixed_serving_function(self.models, tasks)
    ids = np.array([0, 1, 2, 1, 0, 0, 1, 2], np.int32)
    out = serve(images=tf.constant(self.images), task_id=tf.constant(ids))
    self.assert_equals_per_task(out, ids, tasks)

  def test_keras_model_with_task_id_input(self):
    model = mixed_model(self.models, self.tasks)
    self.assertIsInstance(model, keras.Model)
    self.assertLen(model.inputs, 2)
    self.assertEqual([t.name for t in model.inputs], ["images", "task_id"])
    self.assertEqual(model.inputs[1].dtype, "int32")
    self.assertEqual(tuple(model.inputs[1].shape), (None,))
    self.assertEqual(tuple(model.output.shape), (None, 7))
    # Nothing copied: its variables are the task models' own.
    own = {id(v) for t in self.tasks for v in self.models.tasks[t].model.variables}
    self.assertEqual({id(v) for v in model.variables}, own)
    # Called eagerly, it equals each task model called eagerly (the signatures above are
    # graphs that Grappler rewrites, e.g. BN folded into the convolution: not bit for bit).
    x = tf.image.resize(tf.cast(self.images, tf.float32), (32, 32), method="bilinear")
    ids = np.array([3, 2, 1, 0, 0, 1, 2, 3], np.int32)
    out = model([x, tf.constant(ids)], training=False)
    for i, task_id in enumerate(ids):
      task = self.models.tasks[self.tasks[task_id]]
      alone = tf.nn.softmax(task.model(x, training=False), axis=-1)
      self.assertAllClose(out[i, :task.num_classes], alone[i], **TOLERANCE)

  def test_in_the_saved_model(self):
    path = export_saved_model(self.models, ["cars"], os.path.join(tempfile.mkdtemp(), "sm"),
                              mixed=mixed_serving_function(self.models, self.tasks))
    with open(os.path.join(path, TASK_INDEX)) as f:
      index = json.load(f)
    self.assertEqual(index["mixed"]["task_ids"], {"cars": 0, "birds": 1, "stats": 2, "head": 3})
    signature = tf.saved_model.load(path).signatures["mixed"]
    images = tf.constant(self.images[:4])
    ids = tf.constant([3, 2, 1, 0], tf.int32)
    self.assertAllClose(signature(images=images, task_id=ids)["probabilities"],
                        self.serve(images=images, task_id=ids)["probabilities"], atol=1e-6)

  def test_bad_task_ids(self):
    images = tf.constant(self.images[:2])
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"task_id must be < 4"):
      self.serve(images=images, task_id=tf.constant([0, 4], tf.int32))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"task_id must be >= 0"):
      self.serve(images=images, task_id=tf.constant([-1, 0], tf.int32))
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, r"same batch size"):
      self.serve(images=images, task_id=tf.constant([0, 1, 2], tf.int32))

  def test_bad_task_lists(self):
    with self.assertRaisesRegex(DeployError, r"at least one task"):
      mixed_serving_function(self.models, [])
    with self.assertRaisesRegex(DeployError, r"'dogs' is not in this model"):
      mixed_serving_function(self.models, ["cars", "dogs"])
    with self.assertRaisesRegex(DeployError, r"\['cars'\] are listed more than once"):
      mixed_model(self.models, ["cars", "birds", "cars"])


if __name__ == "__main__":
  tf.test.main()
