"""The training step: one tf.function under a tf.distribute strategy, metrics kept on device.

The step trains an explicit list of variables (never "whatever is trainable now"), adds the
model's own losses (`model.losses`) and the patch kinds' penalties (TAPS's L1 on its gate
scores), and
accumulates loss, correct predictions and its step counter in variables, so that a training
loop reads the host only every `log_every` steps (a parameter-server coordinator needs exactly
that). No XLA: on CPU `jit_compile` is 5-11x slower.

Example:
  metrics = StepMetrics.create()                     # under strategy.scope()
  step = make_train_step(strategy, model, optimizer, variables, 32, 10, metrics=metrics,
                         counter=step_variable)
  step(iterator)                                      # no host sync
  loss, accuracy = metrics.read_and_reset()           # every log_every steps
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import tensorflow as tf


@dataclasses.dataclass
class StepMetrics:
  """Sums over the steps since the last read, on device."""
  loss_sum: tf.Variable
  accuracy_sum: tf.Variable
  count: tf.Variable

  @classmethod
  def create(cls, name: str = "metrics") -> "StepMetrics":
    """Call under the strategy's scope."""
    def var(n, dtype):
      return tf.Variable(tf.zeros((), dtype), trainable=False, name=f"{name}_{n}",
                         synchronization=tf.VariableSynchronization.ON_WRITE,
                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return cls(var("loss_sum", tf.float32), var("accuracy_sum", tf.float32),
               var("count", tf.int64))

  def add(self, loss, accuracy):
    self.loss_sum.assign_add(loss)
    self.accuracy_sum.assign_add(accuracy)
    self.count.assign_add(1)

  def read_and_reset(self) -> tuple[float, float, int]:
    """(mean loss, mean accuracy, steps) since the last read: three reads, once per log."""
    n = int(self.count.numpy())
    loss, acc = float(self.loss_sum.numpy()), float(self.accuracy_sum.numpy())
    for v in (self.loss_sum, self.accuracy_sum):
      v.assign(0.0)
    self.count.assign(0)
    return (loss / n, acc / n, n) if n else (float("nan"), float("nan"), 0)


def classification_loss(logits, labels, num_classes: int, global_batch_size: int,
                        label_smoothing: float = 0.0):
  """Softmax cross-entropy summed over the replica's examples / the global batch size."""
  per_example = keras.losses.categorical_crossentropy(
      tf.one_hot(labels, num_classes), logits, from_logits=True, label_smoothing=label_smoothing)
  return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)


def extra_loss(model, penalty, strategy):
  """The model's own losses (regularizers) plus the penalty, counted once per global step."""
  terms = list(model.losses)
  extra = penalty() if penalty is not None else None
  if extra is not None:
    terms.append(extra)
  if not terms:
    return 0.0
  return tf.add_n([tf.cast(t, tf.float32) for t in terms]) / strategy.num_replicas_in_sync


def apply_groups(groups, grads):
  """Applies `grads` (in the order of the groups' variables) with each group's optimizer.

  Variables without a gradient (None: not on this step's path, e.g. a task's variables a joint
  step's batch did not reach) are left out; a group with none left is skipped.

  Raises:
    ValueError: no variable has a gradient (the loss does not depend on what is trained).
  """
  if grads and all(g is None for g in grads):
    names = [v.path if hasattr(v, "path") else v.name for _, group in groups for v in group]
    raise ValueError(f"No gradient reaches any trained variable ({len(names)} of them, e.g. "
                     f"{names[:3]}): the loss does not depend on them. Check the patch and "
                     f"which variables the phase trains.")
  start = 0
  for optimizer, group in groups:
    pairs = [(g, v) for g, v in zip(grads[start:start + len(group)], group) if g is not None]
    if pairs:
      optimizer.apply_gradients(pairs)
    start += len(group)


def count_correct(logits, labels):
  """How many arg-max predictions equal the labels (float32)."""
  return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                        tf.cast(labels, tf.int32)), tf.float32))


def make_train_step(strategy, model, optimizer, variables: list, global_batch_size: int,
                    num_classes: int, label_smoothing: float = 0.0,
                    metrics: Optional[StepMetrics] = None, counter: Optional[tf.Variable] = None,
                    extra_groups=(), penalty=None):
  """A tf.function(iterator) -> (loss, accuracy) running one step under `strategy`.

  Args:
    strategy: the tf.distribute strategy the model's variables were created under.
    model: logits = model(images, training=True).
    optimizer: built for `variables`.
    variables: exactly what this step trains (e.g. TaskModels.trainable_variables(task)).
    global_batch_size, num_classes, label_smoothing: the loss.
    metrics: if given, loss and accuracy are accumulated on device.
    counter: if given, a variable (or a list of them) incremented by one per step on device.
    extra_groups: more (optimizer, variables) pairs trained by the same step, each with its own
      optimizer (e.g. a classifier at its own learning rate).
    penalty: optional () -> scalar or None, added to the loss once per global step (the
      task's patch-kind terms, e.g. TaskModels.penalty: TAPS's L1 on its gate scores).

  The returned tensors need not be read: reading them syncs with the host.
  """
  groups = [(optimizer, list(variables))] + [(o, list(v)) for o, v in extra_groups]
  groups = [(o, v) for o, v in groups if v]
  variables = [v for _, group in groups for v in group]
  if not variables:
    raise ValueError("make_train_step: nothing to train (the variable list is empty).")

  def replica_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = classification_loss(logits, labels, num_classes, global_batch_size,
                                 label_smoothing)
      loss += extra_loss(model, penalty, strategy)
    apply_groups(groups, tape.gradient(loss, variables))
    return loss, count_correct(logits, labels)

  @tf.function
  def step(iterator):
    images, labels = next(iterator)
    loss, correct = strategy.run(replica_step, args=(images, labels))
    loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
    accuracy = strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None) / global_batch_size
    if metrics is not None:
      metrics.add(loss, accuracy)
    for c in (counter if isinstance(counter, (list, tuple)) else [counter]):
      if c is not None:
        c.assign_add(1)
    return loss, accuracy

  return step
