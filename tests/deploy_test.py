"""Deployment: tasks assembled from patch files, and TFLite parity with Keras per signature."""

import os
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from k4p1.errors import DeployError
from k4p1.export.patch_files import assemble
from k4p1.export.tflite import run_tflite, tflite_model
from k4p1.export import PatchFileError, save_patch
from k4p1.model import TaskModels
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_task

SPEC = calibrated_mobilenet_v2().spec


def _trained_models():
  """Two tasks with moved patch values, as training would leave them, on a calibrated base."""
  models = TaskModels(calibrated_mobilenet_v2())
  rng = np.random.RandomState(0)
  for name, patch, classes in (("cars", "scale_bias,last_layer", 4),
                               ("birds", "scale_bias,depthwise,last_layer", 6)):
    models.add(tiny_task(name, patch), classes)
    for v in models.task_variables(name):
      if "variance" not in v.name:
        v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype("float32"))
  return models


class AssembleTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, True)

  def test_assembled_tasks_equal_the_trained_ones(self):
    models = _trained_models()
    base_weights = os.path.join(self.dir, "base.weights.h5")
    models.base.save_weights(base_weights)
    paths = [os.path.join(self.dir, f"{t}.k4p1.npz") for t in ("cars", "birds")]
    for t, p in zip(("cars", "birds"), paths):
      save_patch(models, t, p)
    # The base spec alone gives random weights (seed 0, uncalibrated): base_weights restores it.
    assembled = assemble(SPEC, paths, base_weights=base_weights)
    x = random_images(3)
    for t in ("cars", "birds"):
      self.assertAllEqual(assembled.tasks[t].model(x, training=False),
                          models.tasks[t].model(x, training=False))

  def test_patch_for_another_base_fails_clearly(self):
    models = _trained_models()
    path = os.path.join(self.dir, "cars.k4p1.npz")
    save_patch(models, "cars", path)
    with self.assertRaisesRegex(PatchFileError, "a base with other weights"):
      assemble(SPEC, [path])  # no base_weights: the uncalibrated base, other statistics
    other = SPEC.__class__(**{**SPEC.__dict__, "alpha": 0.5})
    with self.assertRaisesRegex(PatchFileError, "different base architecture"):
      assemble(other, [path])
    with self.assertRaisesRegex(PatchFileError, "already added"):
      models.base.save_weights(os.path.join(self.dir, "b.weights.h5"))
      assemble(SPEC, [path, path], base_weights=os.path.join(self.dir, "b.weights.h5"))
    with self.assertRaisesRegex(DeployError, "Base weights file not found"):
      assemble(SPEC, [path], base_weights=os.path.join(self.dir, "missing.weights.h5"))


class TFLiteTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.models = _trained_models()
    cls.x = random_images(3)

  def expected(self, task):
    return tf.nn.softmax(self.models.tasks[task].model(self.x, training=False)).numpy()

  def test_float32_one_file_with_a_signature_per_task(self):
    data = tflite_model(self.models, ["cars", "birds"])
    from ai_edge_litert.interpreter import Interpreter
    self.assertEqual(sorted(Interpreter(model_content=data).get_signature_list()),
                     ["birds", "cars"])
    for task in ("cars", "birds"):
      self.assertAllClose(run_tflite(data, task, self.x), self.expected(task), atol=1e-4, rtol=0)
    # Another image size: refused (a TFLite file has a fixed input), or resized as the
    # SavedModel resizes when asked.
    big = random_images(3, size=48)
    with self.assertRaisesRegex(DeployError, "takes 32x32 images; received 48x48.*resize=True"):
      run_tflite(data, "cars", big)
    resized = tf.image.resize(big, (32, 32), method="bilinear")
    want = tf.nn.softmax(self.models.tasks["cars"].model(resized, training=False)).numpy()
    self.assertAllClose(run_tflite(data, "cars", big, resize=True), want, atol=1e-4, rtol=0)

  @pytest.mark.large  # a second quantization; float32 TFLite stays in the fast tier
  def test_int8_per_task_file(self):
    representative = lambda task: [random_images(8, seed=i) for i in range(4)]
    data = tflite_model(self.models, ["birds"], "int8", representative)
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_content=data).get_signature_runner("birds")
    self.assertEqual(runner.get_input_details()["images"]["dtype"], np.uint8)
    probabilities = run_tflite(data, "birds", self.x)
    self.assertEqual(probabilities.shape, (3, 6))
    self.assertAllClose(probabilities.sum(axis=-1), np.ones(3), atol=0.02)

  def test_bad_requests(self):
    with self.assertRaisesRegex(DeployError, "needs representative data"):
      tflite_model(self.models, ["cars"], "int8")
    with self.assertRaisesRegex(DeployError, r"\['dogs'\] are not in this model"):
      tflite_model(self.models, ["cars", "dogs"])
    with self.assertRaisesRegex(DeployError, "quantization must be one of"):
      tflite_model(self.models, ["cars"], "int4")


class DeployBinaryTest(tf.test.TestCase):
  """deploy.py end to end on a smoke run of the embedded default."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import sys
    from k4p1.testing import REPO_ROOT, smoke_run_workdir
    cls.root = tempfile.mkdtemp()  # deploy.py's outputs; the shared workdir is only read
    cls.workdir = smoke_run_workdir()
    cls.env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cls.python, cls.repo = sys.executable, REPO_ROOT

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def deploy(self, *args):
    import subprocess
    return subprocess.run([self.python, os.path.join(self.repo, "deploy.py"), *args],
                          capture_output=True, text=True, env=self.env, timeout=900)

  @pytest.mark.large  # ~70 s (every format, TFLite conversions): the CI slow tier
  def test_every_format_from_a_workdir(self):
    out_dir = os.path.join(self.root, "out")
    result = self.deploy(f"--workdir={self.workdir}", f"--out={out_dir}",
                         "--formats=saved_model,serving,folded,tflite",
                         "--tasks=digits_5_9_scale_bias,digits_0_4",
                         "--mixed_tasks=digits_0_4,digits_5_9_scale_bias")
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    from k4p1.export.serving import signature_defs
    self.assertEqual(set(signature_defs(os.path.join(out_dir, "serving", "k4p1", "1"))),
                     {"digits_5_9_scale_bias", "digits_0_4", "mixed", "serving_default",
                      "__saved_model_init_op"})
    self.assertTrue(os.path.exists(os.path.join(out_dir, "serving", "models.config")))
    self.assertEqual(sorted(os.listdir(os.path.join(out_dir, "tflite"))),
                     ["all_tasks.float32.tflite", "digits_0_4.float32.tflite",
                      "digits_5_9_scale_bias.float32.tflite"])
    import keras
    folded = keras.models.load_model(os.path.join(out_dir, "folded", "digits_0_4.keras"))
    # The folded model equals the exported signature (same weights, BN folded).
    loaded = tf.saved_model.load(os.path.join(out_dir, "saved_model"))
    images = random_images(2)
    expected = loaded.signatures["digits_0_4"](images=tf.constant(images.astype("uint8")))
    self.assertAllClose(tf.nn.softmax(folded(images.astype("uint8").astype("float32"))),
                        expected["probabilities"], atol=1e-5, rtol=1e-4)

  def test_bad_requests(self):
    out_dir = os.path.join(self.root, "bad")
    result = self.deploy(f"--workdir={self.workdir}", f"--out={out_dir}", "--tasks=cats")
    self.assertEqual(result.returncode, 2)
    self.assertIn("Task 'cats' is not among the patch files' tasks", result.stderr)
    result = self.deploy(f"--out={out_dir}")
    self.assertIn("exactly one of --workdir", result.stderr)
    # The embedded default's base is trained by the run: a fresh base has other weights.
    config = os.path.join(self.repo, "configs", "digits.py")
    patch = os.path.join(self.workdir, "patches", "digits_5_9_scale_bias.k4p1.npz")
    result = self.deploy(f"--config={config}", f"--patches={patch}", f"--out={out_dir}")
    self.assertEqual(result.returncode, 2)
    self.assertIn("a base with other weights", result.stderr)
    self.assertFalse(os.path.exists(out_dir))


if __name__ == "__main__":
  tf.test.main()
