"""Joint multi-task training (the paper's section 5.3): K tasks at once on one shared backbone.

The shared weights learn from every task; each task's patch and classifier only from its own
loss. Two step schemes (`multitask.step`):

  summed   each step takes one batch of every task and sums their weighted losses (TF Model
           Garden's joint_train_step): one optimizer for the shared weights, one per task for
           its own variables.
  sampled  each step trains one task, drawn by a `TaskSampler` (round robin, proportional to
           dataset size, or annealed temperature as Model Garden's samplers): the task's own
           optimizer updates the shared weights and its own, as a worker of that task does
           against a parameter server.

Learning-rate balancing (`multitask.balance_lr`, the default): the paper keeps "the learning
rates for different tasks comparable at any given point in time". k4p1 does exactly that: every
task's rate follows the same staircase in *joint* steps, decaying every `decay_epochs` epochs of
the task whose epoch lasts the most joint steps (`JointSchedule`). Without balancing, each task
decays every `decay_epochs` of its own epochs, counted in its own steps.

Example:
  sampler = TaskSampler("proportional", {"cifar10": 50000, "fashion": 60000}, seed=0)
  sampler.task(step=7)   # the same task for the same step in every process and on resume
"""

from __future__ import annotations

import math
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from k4p1.train.steps import (StepMetrics, apply_groups, classification_loss, count_correct,
                             extra_loss)


class TaskSampler:
  """Which task a `sampled` step trains; a pure function of (seed, step), so resumable.

  Args:
    kind: 'round_robin', 'proportional' (to `sizes`), 'annealed' (probabilities proportional
      to size ** (1 / T), T falling linearly from `temperature` to 1 over `total_steps`) or
      'workers' (a weighted round robin: each task gets steps in proportion to `workers`).
    sizes: {task: training examples}, in task order.
    workers: {task: workers assigned to it}, for 'workers'.
  """

  def __init__(self, kind: str, sizes: dict, seed: int = 0, temperature: float = 2.0,
               total_steps: int = 1, workers: Optional[dict] = None):
    self.kind, self.tasks = kind, list(sizes)
    self.sizes = np.array([float(sizes[t]) for t in self.tasks])
    # One cycle of the weighted round robin: every task as many times as it has workers.
    self.cycle = [t for t in self.tasks for _ in range((workers or {}).get(t, 1))]
    self.seed, self.temperature, self.total_steps = seed, temperature, max(1, total_steps)

  def probabilities(self, step: int = 1) -> np.ndarray:
    if self.kind == "round_robin":
      return np.full(len(self.tasks), 1.0 / len(self.tasks))
    if self.kind == "workers":
      return np.array([self.cycle.count(t) / len(self.cycle) for t in self.tasks])
    power = 1.0
    if self.kind == "annealed":
      t = self.temperature + (1.0 - self.temperature) * min(1.0, (step - 1) / self.total_steps)
      power = 1.0 / t
    weights = self.sizes ** power
    return weights / weights.sum()

  def task(self, step: int) -> str:
    """The task of joint step `step` (1-based)."""
    if self.kind == "round_robin":
      return self.tasks[(step - 1) % len(self.tasks)]
    if self.kind == "workers":
      return self.cycle[(step - 1) % len(self.cycle)]
    u = np.random.RandomState([self.seed % (2 ** 31), step]).uniform()
    return self.tasks[int(np.searchsorted(np.cumsum(self.probabilities(step)), u, side="right")
                          .clip(0, len(self.tasks) - 1))]


def epoch_in_joint_steps(size: int, batch: int, probability: float = 1.0) -> float:
  """Joint steps a task takes to see its training split once."""
  return size / (batch * probability)


class JointSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Staircase decay driven by a step variable (the joint step), not the optimizer's own count.

  lr(step) = initial * decay_rate ** floor(step / decay_steps)
  """

  def __init__(self, initial: float, decay_steps: int, decay_rate: float, step: tf.Variable):
    self.initial, self.decay_steps, self.decay_rate = initial, max(1, int(decay_steps)), decay_rate
    self.step = step

  def __call__(self, _):
    k = tf.math.floordiv(tf.cast(self.step, tf.float32), float(self.decay_steps))
    return self.initial * tf.pow(self.decay_rate, k)

  def get_config(self):
    return {"initial": self.initial, "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate}


def make_summed_step(strategy, task_models: dict, groups: list, batch_sizes: dict,
                     num_classes: dict, loss_weights: dict, label_smoothing: float,
                     metrics: dict, counters: list, penalties: Optional[dict] = None):
  """tf.function(iterator) -> None: one summed joint step under `strategy`.

  Args:
    task_models: {task: keras model (images -> logits)}, in the order of the iterator's tuple.
    groups: [(optimizer, variables)]: each optimizer applies the total loss's gradient to its
      variables (the shared weights once, each task's own variables once).
    batch_sizes, num_classes, loss_weights: per task (global batch sizes).
    metrics: {task: StepMetrics}, accumulated on device.
    counters: step variables incremented by one per step.
    penalties: optional {task: () -> scalar or None}, added to that task's loss (TAPS's L1).
  """
  tasks = list(task_models)
  variables = [v for _, group in groups for v in group]

  def replica_step(batches):
    losses, corrects = [], []
    with tf.GradientTape() as tape:
      total = 0.0
      for task, (images, labels) in zip(tasks, batches):
        logits = task_models[task](images, training=True)
        loss = classification_loss(logits, labels, num_classes[task], batch_sizes[task],
                                   label_smoothing)
        loss += extra_loss(task_models[task], (penalties or {}).get(task), strategy)
        total += loss_weights[task] * loss
        losses.append(loss)
        corrects.append(count_correct(logits, labels))
    apply_groups(groups, tape.gradient(total, variables))
    return losses, corrects

  @tf.function
  def step(iterator):
    batches = next(iterator)
    losses, corrects = strategy.run(replica_step, args=(batches,))
    for task, loss, correct in zip(tasks, losses, corrects):
      loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
      correct = strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
      metrics[task].add(loss, correct / batch_sizes[task])
    for counter in counters:
      counter.assign_add(1)

  return step


def sizes_text(decay_steps: dict, balanced: bool) -> str:
  """One line per task: its learning-rate decay period (printed at the start of a joint run)."""
  how = "balanced: every task's rate decays at the same joint steps" if balanced else \
      "unbalanced: every task decays every decay_epochs of its own epochs"
  return "\n".join([f"Learning-rate decay ({how}):"] + [
      f"  {task}: x decay_rate every {steps:,} {'joint' if balanced else 'own'} steps"
      for task, steps in decay_steps.items()])


def total_joint_steps(spec, sizes: dict, batches: dict, probabilities: Optional[dict]) -> int:
  """`multitask.steps`, else enough joint steps for every task's `epochs` (or `steps`)."""
  if spec.multitask.steps:
    return spec.multitask.steps
  longest = 0.0
  for name in spec.multitask.tasks:
    task = spec.task(name)
    p = probabilities[name] if probabilities else 1.0
    longest = max(longest, task.steps / p if task.steps else
                  task.epochs * epoch_in_joint_steps(sizes[name], batches[name], p))
  return max(1, int(math.ceil(longest)))


__all__ = ["TaskSampler", "JointSchedule", "make_summed_step", "StepMetrics"]
