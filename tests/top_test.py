"""The `top` patch kind (k4p1/patches/top.py): fine-tune every layer from one on."""

import keras
import numpy as np
import tensorflow as tf

from k4p1 import patches
from k4p1.analysis.report import task_parameters
from k4p1.errors import ConfigError
from k4p1.export.fold import fold_task
from k4p1.model import TaskModels
from k4p1.testing import calibrated_mobilenet_v2, random_images, tiny_task


class TopKindTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.backbone = calibrated_mobilenet_v2()
    self.models = TaskModels(self.backbone)

  def test_copies_exactly_the_layers_from_start_and_equals_the_base(self):
    task = self.models.add(tiny_task("t", "top(start=block_15_expand),last_layer"), 3)
    names = [l.name for l in self.backbone.model.layers]
    tail = names[names.index("block_15_expand"):]
    copied = [base.name for _, base, _ in task.patched.patch_layers]
    self.assertEqual(copied, tail)
    weights = sum(int(np.prod(v.shape)) for n in tail
                  for v in self.backbone.model.get_layer(n).weights)
    row = task_parameters(self.models, "t")["components"]["top"]
    self.assertEqual(row["learned"] + row["fixed"], weights)
    plain = self.models.add(tiny_task("p", "last_layer"), 3)
    plain.head.set_weights(task.head.get_weights())
    x = random_images(2)
    self.assertAllClose(task.model(x, training=False), plain.model(x, training=False),
                        rtol=1e-5, atol=1e-5)

  def test_one_step_moves_only_the_copies_and_it_folds(self):
    task = self.models.add(tiny_task("t", "top(start=block_16_expand),last_layer"), 3)
    self.models.activate("t")
    variables = self.models.trainable_variables("t")
    shared = [v.numpy().copy() for v in self.backbone.model.variables]
    images, labels = random_images(8), np.arange(8) % 3
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          labels, task.model(images, training=True), from_logits=True))
    keras.optimizers.SGD(0.1).apply_gradients(zip(tape.gradient(loss, variables), variables))
    for v, before in zip(self.backbone.model.variables, shared):
      self.assertAllEqual(v.numpy(), before)
    expected = task.model(images, training=False).numpy()
    folded = fold_task(self.models, "t")
    self.assertAllClose(folded(images), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

  def test_bad_input(self):
    with self.assertRaisesRegex(ConfigError, "Did you mean 'block_15_expand'"):
      self.models.add(tiny_task("t", "top(start=block_15_expnd),last_layer"), 3)
    with self.assertRaisesRegex(ConfigError, "top needs start=LAYER"):
      patches.parse_patch("top,last_layer")
    with self.assertRaisesRegex(ConfigError, "either 'scale_bias' or 'top'|either 'top' or"):
      patches.parse_patch("top(start=Conv_1),scale_bias")


if __name__ == "__main__":
  tf.test.main()
