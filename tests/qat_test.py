"""Quantization-aware training in a tf_keras subprocess (k4p1.export.qat)."""

import importlib.util

import numpy as np
import pytest
import tensorflow as tf

from k4p1.backbones import Backbone
from k4p1.config import BackboneSpec
from k4p1.export.tflite import interpreter, run_tflite
from k4p1.model import TaskModels
from k4p1.export.qat import QATError, quantization_aware_int8
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_task

HAVE_TFMOT = all(importlib.util.find_spec(m) for m in ("tf_keras",
                                                       "tensorflow_model_optimization"))


class QATTest(tf.test.TestCase):

  @pytest.mark.large  # ~110 s: QAT fine-tuning in a tf_keras subprocess
  def test_qat_int8_file(self):
    if not HAVE_TFMOT:
      self.skipTest("tf-keras / tensorflow-model-optimization not installed "
                    "(pip install --no-deps -r requirements-qat.txt)")
    models = TaskModels(calibrated_mobilenet_v2())
    models.add(tiny_task("cars", "scale_bias,last_layer"), 4)
    images = random_images(32).astype("uint8")
    labels = np.random.RandomState(0).randint(0, 4, 32)
    # The subprocess also checks that its tf_keras rebuild computes the Keras 3 logits (1e-3).
    data = quantization_aware_int8(models, "cars", images, labels, steps=2, batch_size=8)
    runner = interpreter(data).get_signature_runner("cars")
    self.assertEqual(runner.get_input_details()["images"]["dtype"], np.uint8)
    probabilities = run_tflite(data, "cars", random_images(3))
    self.assertEqual(probabilities.shape, (3, 4))
    self.assertAllClose(probabilities.sum(-1), np.ones(3), atol=0.02)

  def test_other_backbones_are_refused(self):
    import keras
    inputs = keras.Input((8, 8, 3))
    base = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="tiny_convnet")
    models = TaskModels(Backbone(base, 8, "tf", BackboneSpec("custom")))
    models.add(tiny_task("t", "last_layer"), 3)
    with self.assertRaisesRegex(QATError, "rebuilds keras.applications MobileNetV2"):
      quantization_aware_int8(models, "t", random_images(4, 8).astype("uint8"), np.zeros(4))


if __name__ == "__main__":
  tf.test.main()
