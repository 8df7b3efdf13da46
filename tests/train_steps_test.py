"""The training step: explicit variables, the model's own losses, metrics kept on device."""

import keras
import numpy as np
import tensorflow as tf

from k4p1.train.steps import StepMetrics, make_train_step


def _model(l2=0.0):
  inputs = keras.Input((3,))
  reg = keras.regularizers.L2(l2) if l2 else None
  hidden = keras.layers.Dense(4, name="hidden", kernel_initializer="glorot_uniform")(inputs)
  logits = keras.layers.Dense(2, name="out", kernel_regularizer=reg)(hidden)
  return keras.Model(inputs, logits)


def _data(n=8):
  rng = np.random.RandomState(0)
  x = rng.normal(size=(n, 3)).astype("float32")
  y = (rng.uniform(size=n) > 0.5).astype("int32")
  return x, y


class StepTest(tf.test.TestCase):

  def test_includes_model_losses_and_trains_only_the_given_variables(self):
    keras.utils.set_random_seed(1)
    l2, lr = 0.3, 0.1
    model = _model(l2)
    out = model.get_layer("out")
    x, y = _data()
    w0, b0 = out.kernel.numpy().astype(np.float64), out.bias.numpy().astype(np.float64)
    hidden_before = model.get_layer("hidden").kernel.numpy().copy()
    h = model.get_layer("hidden")(x).numpy().astype(np.float64)
    # NumPy: softmax cross-entropy averaged over the batch + l2 * sum(w^2), one SGD step.
    logits = h @ w0 + b0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dlogits = (p - np.eye(2)[y]) / len(y)
    expected_w = w0 - lr * (h.T @ dlogits + 2 * l2 * w0)
    expected_b = b0 - lr * dlogits.sum(0)

    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.SGD(lr)
    variables = [out.kernel, out.bias]
    optimizer.build(variables)
    metrics = StepMetrics.create()
    counter = tf.Variable(0, dtype=tf.int64)
    step = make_train_step(strategy, model, optimizer, variables, len(y), 2, metrics=metrics,
                           counter=counter)
    step(iter(tf.data.Dataset.from_tensors((x, y))))
    self.assertAllClose(out.kernel.numpy(), expected_w, rtol=1e-5, atol=1e-6)
    self.assertAllClose(out.bias.numpy(), expected_b, rtol=1e-5, atol=1e-6)
    self.assertAllEqual(model.get_layer("hidden").kernel.numpy(), hidden_before)
    self.assertEqual(int(counter.numpy()), 1)
    ce = float(np.mean(-np.log(p[np.arange(len(y)), y])))
    loss, accuracy, n = metrics.read_and_reset()
    self.assertEqual(n, 1)
    self.assertAllClose(loss, ce + l2 * np.sum(w0 ** 2), rtol=1e-5)
    self.assertAllClose(accuracy, np.mean(logits.argmax(1) == y), rtol=1e-6)
    self.assertEqual(metrics.read_and_reset()[2], 0)  # reset

  def test_metrics_accumulate_on_device_until_read(self):
    model = _model()
    x, y = _data()
    variables = model.trainable_variables
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(variables)
    metrics = StepMetrics.create()
    counter = tf.Variable(0, dtype=tf.int64)
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer, variables, len(y), 2,
                           metrics=metrics, counter=counter)
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    losses = [float(step(iterator)[0]) for _ in range(5)]
    loss, _, n = metrics.read_and_reset()
    self.assertEqual((n, int(counter.numpy())), (5, 5))
    self.assertAllClose(loss, np.mean(losses), rtol=1e-6)

  def test_tf1_rmsprop_matches_a_numpy_tf1_update(self):
    from k4p1.train.optimizers import TF1RMSprop
    rng = np.random.RandomState(0)
    w0 = rng.randn(5).astype(np.float64)
    grads = [rng.randn(5) * 0.3 for _ in range(4)]
    lr, rho, momentum, eps = 0.045, 0.9, 0.9, 1.0
    w = tf.Variable(w0.astype(np.float32))
    opt = TF1RMSprop(lr, rho=rho, momentum=momentum, epsilon=eps)
    for g in grads:
      opt.apply_gradients([(tf.constant(g, tf.float32), w)])
    # tf.compat.v1.train.RMSPropOptimizer's documented update, in float64: ms starts at 1.
    ms, mom, ref = np.ones(5), np.zeros(5), w0.copy()
    for g in grads:
      ms = rho * ms + (1 - rho) * g * g
      mom = momentum * mom + lr * g / np.sqrt(ms + eps)
      ref -= mom
    self.assertAllClose(w.numpy(), ref, rtol=1e-5, atol=1e-6)
    # Keras's RMSprop starts at 0: its first step is larger (1.38x for small gradients).
    keras_w = tf.Variable(w0.astype(np.float32))
    keras.optimizers.RMSprop(lr, rho=rho, momentum=momentum, epsilon=eps).apply_gradients(
        [(tf.constant(grads[0], tf.float32), keras_w)])
    tf1_w = tf.Variable(w0.astype(np.float32))
    TF1RMSprop(lr, rho=rho, momentum=momentum, epsilon=eps).apply_gradients(
        [(tf.constant(grads[0], tf.float32), tf1_w)])
    ratio = (keras_w.numpy() - w0) / (tf1_w.numpy() - w0)
    self.assertAllClose(ratio, np.sqrt((rho + eps + (1 - rho) * grads[0] ** 2) /
                                       (eps + (1 - rho) * grads[0] ** 2)), rtol=1e-4)

  def test_empty_variable_list_is_an_error(self):
    model = _model()
    with self.assertRaisesRegex(ValueError, "nothing to train"):
      make_train_step(tf.distribute.get_strategy(), model, keras.optimizers.SGD(0.1), [], 8, 2)


if __name__ == "__main__":
  tf.test.main()


def test_apply_groups_refuses_a_step_without_any_gradient():
  import pytest
  from k4p1.train.steps import apply_groups
  v = tf.Variable([1.0, 2.0], name="w")
  opt = keras.optimizers.SGD(0.1)
  with pytest.raises(ValueError, match="No gradient reaches any trained variable"):
    apply_groups([(opt, [v])], [None])
  apply_groups([(opt, [v]), (keras.optimizers.SGD(0.1), [tf.Variable(0.0)])],
               [tf.constant([1.0, 1.0]), None])  # a group without gradients is skipped
  np.testing.assert_allclose(v.numpy(), [0.9, 1.9])
