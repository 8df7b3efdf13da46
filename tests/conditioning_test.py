"""clone_with_condition: a per-example condition input reaches layers inside a cloned model."""

import keras
import numpy as np
import tensorflow as tf

from k4p1.patches.conditioning import clone_with_condition

TASKS, CHANNELS = 3, 4


class TaskAffine(keras.layers.Layer):
  """y = x * gamma[task] + beta[task], per example: the layer a call_function puts in for BN."""

  def __init__(self, num_tasks, **kwargs):
    super().__init__(**kwargs)
    self.num_tasks = num_tasks

  def build(self, x_shape, task_shape):
    channels = x_shape[-1]
    self.gamma = self.add_weight(shape=(self.num_tasks, channels), name="gamma",
                                 initializer=keras.initializers.RandomUniform(0.5, 2.0, seed=1))
    self.beta = self.add_weight(shape=(self.num_tasks, channels), name="beta",
                                initializer=keras.initializers.RandomNormal(0.0, 1.0, seed=2))

  def call(self, x, task):
    gamma = keras.ops.take(self.gamma, task, axis=0)[:, None, None, :]
    beta = keras.ops.take(self.beta, task, axis=0)[:, None, None, :]
    return x * gamma + beta


def conv_bn_model():
  images = keras.Input((5, 5, 3), name="images")
  x = keras.layers.Conv2D(CHANNELS, 1, name="conv",
                          kernel_initializer=keras.initializers.RandomNormal(seed=0),
                          bias_initializer=keras.initializers.RandomNormal(seed=3))(images)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.ReLU(name="relu")(x)
  return keras.Model(images, x, name="tiny")


class CloneWithConditionTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.model = conv_bn_model()
    self.task_id = keras.Input(shape=(), dtype="int32", name="task_id")
    self.gates = []

    def call_function(layer, *args, **kwargs):
      if isinstance(layer, keras.layers.BatchNormalization):
        gate = TaskAffine(TASKS, name=f"{layer.name}_gate")
        self.gates.append(gate)
        return gate(args[0], self.task_id)
      return layer(*args, **kwargs)

    self.conditioned = clone_with_condition(self.model, self.task_id, call_function)
    rng = np.random.RandomState(0)
    self.images = rng.normal(0, 1, (6, 5, 5, 3)).astype("float32")
    self.ids = np.array([2, 0, 1, 1, 2, 0], np.int32)

  def expected(self, images, ids):
    conv = self.model.get_layer("conv")
    (gate,) = self.gates
    x = np.einsum("bhwc,cd->bhwd", images, conv.kernel.numpy()[0, 0]) + conv.bias.numpy()
    gamma, beta = gate.gamma.numpy(), gate.beta.numpy()
    return np.stack([np.maximum(x[i] * gamma[t] + beta[t], 0) for i, t in enumerate(ids)])

  def test_two_inputs_and_shared_layers(self):
    self.assertLen(self.conditioned.inputs, 2)
    self.assertEqual([t.name for t in self.conditioned.inputs], ["images", "task_id"])
    self.assertEqual(self.conditioned.inputs[1].dtype, "int32")
    self.assertIs(self.conditioned.get_layer("conv"), self.model.get_layer("conv"))
    self.assertNotIn("bn", [layer.name for layer in self.conditioned.layers])

  def test_outputs_per_example(self):
    out = self.conditioned([self.images, self.ids])
    self.assertAllClose(out, self.expected(self.images, self.ids), rtol=1e-5, atol=1e-5)
    # The condition matters: the same images under other task ids give other outputs.
    other = (self.ids + 1) % TASKS
    self.assertGreater(np.abs(self.conditioned([self.images, other]) - out).max(), 1e-2)

  def test_gradients_flow_through_the_condition_path(self):
    (gate,) = self.gates
    ids = np.array([0, 0, 2, 2, 0, 2], np.int32)  # task 1 absent
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(self.conditioned([self.images, ids], training=True) ** 2)
    grad_gamma, grad_beta = tape.gradient(loss, [gate.gamma, gate.beta])
    for g in (grad_gamma, grad_beta):
      g = tf.convert_to_tensor(g)  # take() gives IndexedSlices
      self.assertGreater(float(tf.reduce_max(tf.abs(g[0]))), 0.0)
      self.assertGreater(float(tf.reduce_max(tf.abs(g[2]))), 0.0)
      self.assertAllEqual(g[1], np.zeros(CHANNELS))

  def test_in_a_tf_function_with_input_signature(self):
    model = self.conditioned

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 5, 3], tf.float32),
                                  tf.TensorSpec([None], tf.int32)])
    def serve(images, task_id):
      return model([images, task_id], training=False)

    for n in (6, 2):
      self.assertAllClose(serve(self.images[:n], self.ids[:n]),
                          self.expected(self.images[:n], self.ids[:n]), rtol=1e-5, atol=1e-5)

  def test_errors(self):
    identity = lambda layer, *args, **kwargs: layer(*args, **kwargs)  # noqa: E731
    with self.assertRaisesRegex(ValueError, "must be a keras.Input.*Received: condition"):
      clone_with_condition(self.model, self.task_id + 1, identity)
    with self.assertRaisesRegex(ValueError, "named 'images' like an input"):
      clone_with_condition(self.model, keras.Input((), name="images"), identity)
    with self.assertRaisesRegex(ValueError, "needs a functional keras.Model"):
      clone_with_condition(keras.layers.Dense(2), self.task_id, identity)


if __name__ == "__main__":
  tf.test.main()
