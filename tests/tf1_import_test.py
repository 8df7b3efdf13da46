"""TF1 MobileNetV2 import: name map, checkpoints, clear errors, and parity with the real SSD graph.

The parity tests run the real SSDLite-MobileNetV2 detector graph from $K4P1_DATA_DIR
(../shared/data/ssdlite_mobilenet_v2_person/frozen_inference_graph.pb) with a TF1 session and
compare its featurizer tensors with the Keras MobileNetV2 k4p1 builds from it.
"""

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from k4p1.backbones import build_backbone
from k4p1.config import BackboneSpec, ConfigError
from k4p1.testing import random_images
from k4p1.backbones.tf1_import import (TF1ImportError, keras_to_tf1_tensors, load_mobilenet_v2,
                             read_frozen_graph, slim_names, write_tf1_checkpoint)

SSD_GRAPH = os.path.join(os.environ.get("K4P1_DATA_DIR", ""), "ssdlite_mobilenet_v2_person",
                         "frozen_inference_graph.pb")
SCOPE = "FeatureExtractor/MobilenetV2/"


def mobilenet(alpha=0.35, size=32, seed=0):
  keras.utils.set_random_seed(seed)
  return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                        include_top=False, weights=None)


def randomize(model, seed):
  """Random values in every weight (incl. BN statistics), so equal outputs mean equal weights."""
  rng = np.random.RandomState(seed)
  for v in model.weights:
    shape = tuple(v.shape)
    v.assign(rng.uniform(0.5, 1.5, shape).astype("float32") if "variance" in v.name
             else rng.normal(0, 0.3, shape).astype("float32"))


class NameMapTest(tf.test.TestCase):

  def test_names(self):
    self.assertEqual(slim_names("Conv1"), ("Conv/weights",))
    self.assertEqual(slim_names("expanded_conv_depthwise"),
                     ("expanded_conv/depthwise/depthwise_weights",))
    self.assertEqual(slim_names("block_16_project_BN")[3],
                     "expanded_conv_16/project/BatchNorm/moving_variance")
    self.assertEqual(slim_names("block_1_expand"), ("expanded_conv_1/expand/weights",))
    self.assertEqual(slim_names("Conv_1_bn")[0], "Conv_1/BatchNorm/gamma")
    self.assertIsNone(slim_names("block_1_pad"))

  def test_every_weight_has_one_distinct_name(self):
    tensors = keras_to_tf1_tensors(mobilenet(), scope=SCOPE)
    # 52 kernels (Conv, 17 depthwise, 17 project, 16 expand, Conv_1) + 52 BN layers x 4.
    self.assertLen(tensors, 52 + 52 * 4)
    self.assertLen(mobilenet().weights, len(tensors))


class CheckpointTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, True)
    self.source = mobilenet()
    randomize(self.source, 1)
    self.tensors = keras_to_tf1_tensors(self.source, scope=SCOPE)
    # What an OD API training checkpoint also holds: other heads, optimizer slots, a step.
    self.extra = {"BoxPredictor_0/ClassPredictor/weights": np.ones((1, 1, 8, 6), "float32"),
                  SCOPE + "Conv/weights/RMSProp": np.ones((3, 3, 3, 16), "float32")}

  def write(self, tensors, name="model.ckpt"):
    return write_tf1_checkpoint(tensors, os.path.join(self.dir, name))

  def test_round_trip_gives_the_same_outputs(self):
    prefix = self.write({**self.tensors, **self.extra})
    target = mobilenet(seed=5)
    report = load_mobilenet_v2(target, prefix)
    self.assertEqual((report.scope, report.assigned, report.ignored), (SCOPE, 260, 2))
    x = random_images(2) / 127.5 - 1
    self.assertAllClose(target(x, training=False), self.source(x, training=False), atol=1e-6)

  def test_checkpoint_folder_and_moving_averages(self):
    ema = {n + "/ExponentialMovingAverage": v + 1 for n, v in self.tensors.items()}
    self.write({**self.tensors, **ema})
    with open(os.path.join(self.dir, "checkpoint"), "w") as f:
      f.write('model_checkpoint_path: "model.ckpt"\n')
    plain, averaged = mobilenet(seed=5), mobilenet(seed=6)
    load_mobilenet_v2(plain, self.dir)
    load_mobilenet_v2(averaged, self.dir, use_moving_averages=True)
    self.assertAllEqual(plain.get_layer("Conv1").kernel, self.tensors[SCOPE + "Conv/weights"])
    self.assertAllEqual(averaged.get_layer("Conv1").kernel,
                        self.tensors[SCOPE + "Conv/weights"] + 1)

  def test_other_alpha_fails_before_assigning_anything(self):
    prefix = self.write(self.tensors)
    target = mobilenet(alpha=0.5, seed=5)
    before = [w.numpy().copy() for w in target.weights]
    with self.assertRaisesRegex(TF1ImportError,
                                r"other shapes.*alpha=0\.35.*backbone\.alpha"):
      load_mobilenet_v2(target, prefix)
    for b, w in zip(before, target.weights):
      self.assertAllEqual(b, w)

  def test_missing_tensors_are_named(self):
    tensors = dict(self.tensors)
    del tensors[SCOPE + "expanded_conv_7/depthwise/depthwise_weights"]
    with self.assertRaisesRegex(TF1ImportError,
                                r"1 missing.*expanded_conv_7/depthwise/depthwise_weights"):
      load_mobilenet_v2(mobilenet(), self.write(tensors))

  def test_not_a_mobilenet(self):
    prefix = self.write(self.extra)
    with self.assertRaisesRegex(TF1ImportError, "No MobileNetV2 found"):
      load_mobilenet_v2(mobilenet(), prefix)

  def test_bad_paths(self):
    junk = os.path.join(self.dir, "junk.pb")
    with open(junk, "wb") as f:
      f.write(b"\xff" * 64)
    with self.assertRaisesRegex(TF1ImportError, "is not a TensorFlow GraphDef"):
      load_mobilenet_v2(mobilenet(), junk)
    with self.assertRaisesRegex(TF1ImportError, "No TF1 checkpoint or frozen graph"):
      load_mobilenet_v2(mobilenet(), os.path.join(self.dir, "nothing"))
    with self.assertRaisesRegex(TF1ImportError, "without a `checkpoint` index file"):
      load_mobilenet_v2(mobilenet(), self.dir)

  def test_backbone_needs_a_weights_path(self):
    with self.assertRaisesRegex(ConfigError, "frozen_inference_graph.pb or TF1 checkpoint"):
      build_backbone(BackboneSpec("ssd_mobilenet_v2", weights="imagenet"))
    with self.assertRaisesRegex(ConfigError, "SSD weights not found"):
      build_backbone(BackboneSpec("ssd_mobilenet_v2", weights="/nonexistent/graph.pb"))

  def test_backbone_from_checkpoint(self):
    prefix = self.write(self.tensors)
    b = build_backbone(BackboneSpec("ssd_mobilenet_v2", alpha=0.35, input_size=32,
                                    weights=prefix))
    x = random_images(2) / 127.5 - 1
    self.assertAllClose(b.model(x, training=False), self.source(x, training=False), atol=1e-6)
    with self.assertRaisesRegex(ConfigError, "alpha=0.35"):
      build_backbone(BackboneSpec("ssd_mobilenet_v2", alpha=1.0, input_size=32, weights=prefix))

  def test_training_modes_on_the_ssd_backbone(self):
    from k4p1 import experiment
    from k4p1.testing import tiny_config
    config = tiny_config(steps=2, patch="scale_bias,depthwise,last_layer")
    config.backbone.update(name="ssd_mobilenet_v2", weights=self.write(self.tensors))
    config.tasks.base.update(patch="full,last_layer", train_base=False)
    config.export.enabled = False
    workdir = os.path.join(self.dir, "run")
    result = experiment.run(config, workdir, "train")
    for row in result["tasks"]:
      self.assertEqual(row["steps_done"], 2)
    patched = {r["task"]: r for r in result["tasks"]}["patched"]
    self.assertEqual(set(patched["components"]), {"scale_bias", "depthwise", "last_layer"})


class RealSSDGraphTest(tf.test.TestCase):
  """The real SSDLite-MobileNetV2 detector graph against the Keras featurizer built from it."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if not os.path.isfile(SSD_GRAPH):
      raise __import__("unittest").SkipTest(
          f"K4P1_DATA_DIR does not hold the SSD graph ({SSD_GRAPH!r} is missing); set "
          f"K4P1_DATA_DIR=../shared/data to run the parity tests.")
    cls.graph_def = tf.compat.v1.GraphDef()
    with open(SSD_GRAPH, "rb") as f:
      cls.graph_def.ParseFromString(f.read())
    cls.keras = build_backbone(BackboneSpec("ssd_mobilenet_v2", input_size=300,
                                            weights=SSD_GRAPH)).model

  def run_graph(self, fetches, feeds):
    graph = tf.Graph()
    with graph.as_default():
      tf.compat.v1.import_graph_def(self.graph_def, name="")
      with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetches, feeds)

  def test_featurizer_equals_graph(self):
    x = np.random.RandomState(0).uniform(-1, 1, (2, 300, 300, 3)).astype("float32")
    graph_out, graph_mid = self.run_graph(
        [SCOPE + "Conv_1/Relu6:0", SCOPE + "expanded_conv_15/expansion_output:0"],
        {SCOPE + "MobilenetV2/input:0": x})
    mid = keras.Model(self.keras.input, self.keras.get_layer("block_15_expand_relu").output)
    self.assertEqual(graph_out.shape, (2, 10, 10, 1280))
    self.assertAllClose(self.keras(x, training=False), graph_out, atol=1e-4, rtol=1e-4)
    self.assertAllClose(mid(x, training=False), graph_mid, atol=1e-4, rtol=1e-4)
    self.assertGreater(np.abs(graph_out).max(), 1.0)  # not a trivially zero featurizer

  def test_from_uint8_image_through_the_detector_preprocessor(self):
    from k4p1.frontends import ImageFrontend as Preprocess
    image = np.random.RandomState(1).randint(0, 256, (1, 300, 300, 3)).astype("uint8")
    graph_out = self.run_graph(SCOPE + "Conv_1/Relu6:0", {"image_tensor:0": image})
    ours = self.keras(Preprocess("tf")(image.astype("float32")), training=False)
    self.assertAllClose(ours, graph_out, atol=1e-4, rtol=1e-4)

  def test_checkpoint_of_the_same_model_loads_the_same_weights(self):
    tensors, _ = read_frozen_graph(SSD_GRAPH)
    prefix = write_tf1_checkpoint(tensors, os.path.join(tempfile.mkdtemp(), "model.ckpt"))
    self.addCleanup(shutil.rmtree, os.path.dirname(prefix), True)
    from_ckpt = build_backbone(BackboneSpec("ssd_mobilenet_v2", input_size=300,
                                             weights=prefix)).model
    for a, b in zip(from_ckpt.weights, self.keras.weights):
      self.assertAllEqual(a, b)


if __name__ == "__main__":
  tf.test.main()
