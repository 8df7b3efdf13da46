"""TF Serving contract: versioned layout, model config, signature defs, README REST bodies."""

import json
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from k4p1.export import DeployError
from k4p1.export.mixed import mixed_serving_function
from k4p1.model import TaskModels
from k4p1.export.serving import (PREDICT_METHOD, load_like_tf_serving, rest_predict, signature_defs,
                          write_serving_layout)
from k4p1.testing import REPO_ROOT, calibrated_mobilenet_v2, tiny_task

# The README documents the embedded default's export: these tasks and class counts.
TASKS = (("digits_0_4", "last_layer", 5), ("digits_5_9_scale_bias", "scale_bias,last_layer", 5))


def readme_examples():
  """{(kind, signature): parsed JSON} for every `<!-- rest-KIND: SIGNATURE -->` block."""
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    text = f.read()
  found = {}
  for kind, name, body in re.findall(
      r"<!-- rest-(request|response): (\w+) -->\s*```json\n(.*?)```", text, re.S):
    found[(kind, name)] = json.loads(body)
  return found


class ServingTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tempfile.mkdtemp()
    models = TaskModels(calibrated_mobilenet_v2())
    for name, patch, classes in TASKS:
      models.add(tiny_task(name, patch), classes)
    tasks = [t[0] for t in TASKS]
    cls.version_dir = write_serving_layout(models, tasks, cls.dir, name="k4p1", version=1,
                                           mixed=mixed_serving_function(models, tasks))
    cls.models = models

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.dir, ignore_errors=True)
    super().tearDownClass()

  def test_layout_and_model_config(self):
    self.assertEqual(self.version_dir, os.path.join(self.dir, "k4p1", "1"))
    self.assertTrue(os.path.exists(os.path.join(self.version_dir, "saved_model.pb")))
    with open(os.path.join(self.dir, "models.config")) as f:
      config = f.read()
    self.assertIn('name: "k4p1"', config)
    self.assertIn('base_path: "/models/k4p1"', config)
    self.assertIn('model_platform: "tensorflow"', config)
    with self.assertRaisesRegex(DeployError, "versions are immutable. Use version 2"):
      write_serving_layout(self.models, ["digits_0_4"], self.dir, name="k4p1", version=1)
    with self.assertRaisesRegex(DeployError, "positive integer"):
      write_serving_layout(self.models, ["digits_0_4"], self.dir, version=0)

  def test_signature_defs_as_tf_serving_reads_them(self):
    defs = signature_defs(self.version_dir)
    self.assertEqual(set(defs) - {"__saved_model_init_op"},
                     {"digits_0_4", "digits_5_9_scale_bias", "mixed", "serving_default"})
    for name in ("digits_0_4", "digits_5_9_scale_bias", "serving_default", "mixed"):
      sig = defs[name]
      self.assertEqual(sig.method_name, PREDICT_METHOD)
      images = sig.inputs["images"]
      self.assertEqual(images.dtype, tf.uint8.as_datatype_enum)
      self.assertEqual([d.size for d in images.tensor_shape.dim], [-1, -1, -1, 3])
      self.assertEqual(sig.outputs["probabilities"].dtype, tf.float32.as_datatype_enum)
      self.assertEqual([d.size for d in sig.outputs["probabilities"].tensor_shape.dim], [-1, 5])
      self.assertEqual(sig.outputs["classes"].dtype, tf.int64.as_datatype_enum)
    self.assertEqual(set(defs["mixed"].inputs), {"images", "task_id"})
    self.assertEqual(defs["mixed"].inputs["task_id"].dtype, tf.int32.as_datatype_enum)
    self.assertEqual(defs["mixed"].outputs["num_classes"].dtype, tf.int32.as_datatype_enum)

  def test_readme_rest_examples(self):
    examples = readme_examples()
    names = {"serving_default", "digits_0_4", "digits_5_9_scale_bias", "mixed"}
    self.assertEqual({n for k, n in examples if k == "request"}, names)
    self.assertEqual({n for k, n in examples if k == "response"}, names)
    signatures = load_like_tf_serving(self.version_dir)
    for name in names:
      response = rest_predict(signatures, examples[("request", name)])
      documented = examples[("response", name)]
      # Values depend on the trained weights; the structure is the contract.
      self.assertEqual(len(response["predictions"]), len(documented["predictions"]))
      for got, doc in zip(response["predictions"], documented["predictions"]):
        self.assertEqual(set(got), set(doc))
        self.assertLen(got["probabilities"], len(doc["probabilities"]))
        self.assertIsInstance(got["classes"], int)
        self.assertAlmostEqual(sum(got["probabilities"]), 1.0, places=4)
        self.assertAlmostEqual(sum(doc["probabilities"]), 1.0, places=2)
        self.assertEqual(got["classes"], int(np.argmax(got["probabilities"])))
        self.assertEqual(doc["classes"], int(np.argmax(doc["probabilities"])))

  def test_rest_errors(self):
    signatures = load_like_tf_serving(self.version_dir)
    with self.assertRaisesRegex(DeployError, "No signature 'cats'"):
      rest_predict(signatures, {"signature_name": "cats", "instances": []})


if __name__ == "__main__":
  tf.test.main()
