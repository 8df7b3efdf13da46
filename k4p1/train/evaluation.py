"""Evaluating a trainer's task on its eval split: predictions, accuracy (plain, balanced and per
class) and mean loss, in inference mode.

Example:
  evaluate(trainer, "flowers")["balanced_accuracy"]
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from k4p1 import data as data_lib


def predict(trainer, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(softmax outputs [N, classes], labels [N]) of task `name` on its eval split, in the
  split's order (inference mode)."""
  task = trainer.models.tasks[name]
  model = task.model

  @tf.function(input_signature=[task.input_spec.tensor_spec()])
  def probabilities(images):
    return tf.nn.softmax(model(images, training=False), axis=-1)

  outputs, labels = [], []
  for images, y in trainer.data[name].eval_batches(trainer.spec.train.eval_batch_size):
    outputs.append(probabilities(images).numpy())
    labels.append(y.numpy())
  if not outputs:
    raise data_lib.DataError(f"Task {name}: the eval split is empty.")
  return np.concatenate(outputs), np.concatenate(labels)


def evaluate(trainer, name: str) -> dict:
  """Accuracy, balanced accuracy, per-class accuracy and mean loss of task `name` on its eval
  split (inference mode); per-class figures are keyed by class name."""
  task = trainer.models.tasks[name]
  model, n = task.model, task.num_classes
  loss_total = tf.Variable(0.0, dtype=tf.float64)
  per_class = [tf.Variable(tf.zeros([n], tf.float64)) for _ in range(2)]  # correct, seen

  @tf.function(input_signature=[task.input_spec.tensor_spec(),
                                tf.TensorSpec([None], tf.int32)])
  def eval_step(images, labels):
    logits = model(images, training=False)
    loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    labels = tf.cast(labels, tf.int32)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float64)
    loss_total.assign_add(tf.cast(tf.reduce_sum(loss), tf.float64))
    per_class[0].assign_add(tf.math.unsorted_segment_sum(correct, labels, n))
    per_class[1].assign_add(tf.math.unsorted_segment_sum(tf.ones_like(correct), labels, n))

  for images, labels in trainer.data[name].eval_batches(trainer.spec.train.eval_batch_size):
    eval_step(images, labels)
  correct, seen = (v.numpy() for v in per_class)
  if seen.sum() == 0:
    raise data_lib.DataError(f"Task {name}: the eval split is empty.")
  names = list(trainer.data[name].class_names) or [str(i) for i in range(n)]
  present = seen > 0  # balanced accuracy averages the classes the eval split has
  result = {"accuracy": float(correct.sum() / seen.sum()),
            "balanced_accuracy": float(np.mean(correct[present] / seen[present])),
            "eval_loss": float(loss_total.numpy() / seen.sum()),
            "eval_examples": int(seen.sum()),
            "train_examples": trainer.data[name].train.size,
            "num_classes": n,
            "per_class_accuracy": {c: (float(k / m) if m else None)
                                   for c, k, m in zip(names, correct, seen)},
            "eval_examples_per_class": {c: int(m) for c, m in zip(names, seen)}}
  if trainer.is_chief:
    writer = tf.summary.create_file_writer(os.path.join(trainer.workdir, "tensorboard", name))
    with writer.as_default(step=trainer.phase_steps(name)):
      tf.summary.scalar("eval/accuracy", result["accuracy"])
      tf.summary.scalar("eval/balanced_accuracy", result["balanced_accuracy"])
      tf.summary.scalar("eval/loss", result["eval_loss"])
  return result
