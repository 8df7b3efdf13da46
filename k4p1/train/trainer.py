"""The trainer: every task on one shared backbone, trained phase by phase in a custom loop
under a tf.distribute strategy (Keras 3 `fit` fails under multi-worker and parameter-server
strategies, so k4p1 never uses it).

A *phase* trains an explicit list of variables of one task for a number of steps, with its own
step counter in the checkpoint. A task's default phase is named after the task and trains what
its spec says (k4p1.model.TaskModels.trainable_variables); systems with several stages (a
warm-up, a super-net then a policy) give a task several phases. The trainable flags, which pick
whether a BatchNormalization uses batch statistics, are set once per phase, never per step.
Loss, accuracy and step counters stay on device and are read every `log_every` steps.

The trainer builds, restores, trains and evaluates; writing patch files, reports and exports is
the experiment's job (k4p1.experiment), so nothing here imports the deployment modules.

Example:
  trainer = Trainer(spec, workdir)
  trainer.restore()
  for phase in trainer.phases:
    trainer.train_phase(phase)
  trainer.evaluate("flowers")
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from k4p1 import data as data_lib
from k4p1.backbones import build_backbone
from k4p1.config import ExperimentSpec
from k4p1.model import TaskModels, recompute_batch_statistics
from k4p1.train.optimizers import make_optimizer
from k4p1.train.steps import StepMetrics, make_train_step
from k4p1.train.strategies import is_chief, make_strategy


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of training one task.

  Attributes:
    name: unique in the run; names the step counter and optimizer in the checkpoint (a task's
      default phase is named after the task).
    task: the task it trains.
    steps: how many steps it runs.
    variables: optional (models) -> the variables it trains; default: what the task's spec
      trains (TaskModels.trainable_variables).
    lr: its initial learning rate (0: the task's, else the optimizer's).
  """
  name: str
  task: str
  steps: int
  variables: Optional[Callable] = None
  lr: float = 0.0


class Progress:
  """A progress bar on stderr (plain lines every 10% when stderr is not a terminal)."""

  def __init__(self, total: int, start: int, title: str, enabled: bool = True):
    self.total, self.step, self.title, self.enabled = total, start, title, enabled
    self.tty = sys.stderr.isatty()
    self.t0, self.s0 = time.time(), start
    self._last_decile = -1

  def update(self, step: int, **values):
    self.step = step
    if not self.enabled:
      return
    frac = step / max(self.total, 1)
    rate = (step - self.s0) / max(time.time() - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    stats = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
    line = (f"{self.title} [{bar}] {step}/{self.total} {rate:.1f} steps/s "
            f"eta {eta:.0f}s {stats}")
    if self.tty:
      sys.stderr.write("\r" + line + ("\n" if step >= self.total else ""))
      sys.stderr.flush()
    elif int(10 * frac) > self._last_decile or step >= self.total:
      self._last_decile = int(10 * frac)
      sys.stderr.write(line + "\n")


class Trainer:
  """Builds the shared backbone, every task model, their phases, optimizers and checkpoint.

  Args:
    spec: a checked ExperimentSpec (k4p1.experiment.resolve).
    workdir: where checkpoints and summaries go.
    with_data: read the datasets (needed for train/eval; not for params/export).
    phases: optional (trainer) -> [Phase]; default one phase per task, in task order.
  """

  def __init__(self, spec: ExperimentSpec, workdir: str, with_data: bool = True,
               phases: Optional[Callable] = None):
    self.spec = spec
    self.workdir = workdir
    self.strategy = make_strategy(spec.runtime)
    self.is_chief = is_chief(self.strategy)
    self.data: dict[str, data_lib.TaskData] = {}
    d = spec.data
    with self.strategy.scope():
      self.backbone = build_backbone(spec.backbone)
      size = self.backbone.input_size
      self.models = TaskModels(self.backbone)
      for i, task in enumerate(spec.tasks):
        if with_data:
          self.data[task.name] = data_lib.load_task_data(
              task.dataset, size, d.data_dir, d.download, d.cache, d.shuffle_buffer)
          n = self.data[task.name].num_classes
          names = self.data[task.name].class_names
        else:
          n, names = data_lib.num_classes_of(task.dataset, d.data_dir), ()
        self.models.add(task, n, seed=spec.train.seed + i, class_names=names)
      self.phases = phases(self) if phases else [
          Phase(t.name, t.name, self.total_steps(t.name) if with_data else 0)
          for t in spec.tasks]
      names = [p.name for p in self.phases]
      if len(set(names)) != len(names):
        raise ValueError(f"Phase names must be unique. Received: {names}")
      self.steps = {p.name: tf.Variable(0, dtype=tf.int64, trainable=False,
                                        name=f"step_{p.name}") for p in self.phases}
      self.metrics = StepMetrics.create()
      self.optimizers = {}
      if with_data:
        for phase in self.phases:
          task = spec.task(phase.task)
          body, head = self._variable_groups(phase)
          lr = phase.lr or task.lr or spec.optimizer.lr
          for key, variables, rate in ((phase.name, body, lr),
                                       (f"{phase.name}__head", head, task.head_lr)):
            if variables:  # none: e.g. bn_stats without last_layer (statistics only)
              opt = make_optimizer(spec.optimizer, rate, self.steps_per_epoch(phase.task))
              opt.build(variables)
              self.optimizers[key] = opt
    root = tf.Module()
    root.base = self.models.base
    root.tasks = {k: t.model for k, t in self.models.tasks.items()}
    root.optimizers = self.optimizers
    root.steps = self.steps
    self.checkpoint = tf.train.Checkpoint(root=root)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not self.is_chief:  # other workers write throw-away copies (multi-worker protocol)
      ckpt_dir = os.path.join(workdir, "tmp_worker_checkpoints",
                              str(self.strategy.cluster_resolver.task_id))
    self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir,
                                              max_to_keep=spec.train.keep_checkpoints)

  # -------------------------------------------------------------------------

  def steps_per_epoch(self, name: str) -> int:
    return max(1, self.data[name].train.size // self.spec.train.batch_size)

  def total_steps(self, name: str) -> int:
    task = self.spec.task(name)
    return task.steps or max(1, int(math.ceil(task.epochs * self.steps_per_epoch(name))))

  def phase_variables(self, phase: Phase) -> list:
    if phase.variables is not None:
      return list(phase.variables(self.models))
    return self.models.trainable_variables(phase.task)

  def _variable_groups(self, phase: Phase) -> tuple[list, list]:
    """(variables at the phase's rate, the classifier's at `head_lr`): the second is empty
    unless the task sets head_lr and the phase trains its classifier."""
    variables = self.phase_variables(phase)
    if not self.spec.task(phase.task).head_lr:
      return variables, []
    head = {id(v) for v in self.models.tasks[phase.task].head.trainable_variables}
    return ([v for v in variables if id(v) not in head],
            [v for v in variables if id(v) in head])

  def restore(self, require: bool = False) -> bool:
    """Restores the latest checkpoint, if any. Returns whether one was restored."""
    latest = self.manager.latest_checkpoint
    if latest is None:
      if require:
        raise FileNotFoundError(
            f"No checkpoint in {os.path.join(self.workdir, 'checkpoints')}: run --mode=train "
            f"with this --workdir first.")
      return False
    # restore (not read): the manager's save() also wrote save_counter, which read() would
    # leave unmatched (and TensorFlow would warn about it at exit).
    status = self.checkpoint.restore(latest)
    status.assert_existing_objects_matched()
    logging.info("Restored %s", latest)
    return True

  def _distributed_batches(self, task: str, seed: int):
    """Per-replica batches of `task`'s training data, for this strategy (also PS-ready)."""
    global_batch = self.spec.train.batch_size
    data = self.data[task]

    def dataset_fn(context: tf.distribute.InputContext):
      per_replica = context.get_per_replica_batch_size(global_batch)
      ds = data.train_batches(per_replica, seed=seed)
      return ds.shard(context.num_input_pipelines, context.input_pipeline_id) \
          if context.num_input_pipelines > 1 else ds

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def train_phase(self, phase: Phase) -> dict:
    """Trains `phase` from its step counter to its total; returns training stats."""
    name, total = phase.task, phase.steps
    step_var = self.steps[phase.name]
    start = int(step_var.numpy())
    if start >= total:
      logging.info("Phase %s already trained (%d/%d steps).", phase.name, start, total)
      return {}
    if start:
      logging.info("Resuming phase %s at step %d/%d.", phase.name, start, total)
      where = name if phase.name == name else f"{name} (phase {phase.name})"
      print(f"Resuming task {where} at step {start}/{total}", flush=True)
    # Flags once per phase: they pick BN's mode (a phase with its own variable list runs every
    # other layer in inference mode).
    task = self.models.activate(name, None if phase.variables is None
                                else self.phase_variables(phase))
    train = self.spec.train
    body, head = self._variable_groups(phase)
    if not body and not head:  # nothing learned by gradient
      t0 = time.time()
      logging.info("Phase %s trains no variable by gradient: its BN statistics only.",
                   phase.name)
      self._recompute_statistics(name, train.seed)
      step_var.assign(total)
      self.manager.save(checkpoint_number=self._checkpoint_number())
      return {"train_steps": total, "train_seconds": round(time.time() - t0, 2),
              "train_images_per_second": 0.0}
    if start == 0:  # statistics=recompute: fitted to the target before gamma/beta learn
      self._recompute_statistics(name, train.seed, self.models.recompute_first_layers(name))
    # Resumed runs reseed the shuffle from the step so they do not replay the same batches.
    iterator = iter(self._distributed_batches(name, seed=train.seed + start))
    groups = [(self.optimizers[key], variables) for key, variables in
              ((phase.name, body), (f"{phase.name}__head", head)) if variables]
    (optimizer, variables), extra = groups[0], groups[1:]
    step_fn = make_train_step(
        self.strategy, task.model, optimizer, variables, train.batch_size, task.num_classes,
        self.spec.optimizer.label_smoothing, metrics=self.metrics, counter=step_var,
        extra_groups=extra)
    writer = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard", name)) \
        if self.is_chief else tf.summary.create_noop_writer()
    progress = Progress(total, start, f"train {phase.name}", train.progress)
    self.metrics.read_and_reset()
    t0 = time.time()
    log_every = max(1, train.log_every)
    ckpt_every = max(1, train.checkpoint_every)
    shown = {}
    for step in range(start + 1, total + 1):
      step_fn(iterator)
      if step % log_every == 0 or step == total:
        loss, acc, _ = self.metrics.read_and_reset()  # the one host sync per log_every steps
        if not math.isfinite(loss):
          raise FloatingPointError(
              f"Task {name}: the loss became {loss} within steps {step - log_every + 1}-{step}. "
              f"Lower the learning rate (--config.optimizer.lr, now "
              f"{float(optimizer.learning_rate):.4g}).")
        shown = {"loss": loss, "acc": acc}
        with writer.as_default(step=step):
          tf.summary.scalar("train/loss", loss)
          tf.summary.scalar("train/accuracy", acc)
          tf.summary.scalar("train/learning_rate", float(optimizer.learning_rate))
      progress.update(step, **shown)
      if step == total:
        self._recompute_statistics(name, train.seed + start)
      if step % ckpt_every == 0 or step == total:
        self.manager.save(checkpoint_number=self._checkpoint_number())
    seconds = time.time() - t0
    images = (total - start) * train.batch_size
    return {"train_steps": total, "train_seconds": round(seconds, 2),
            "train_images_per_second": round(images / max(seconds, 1e-9), 2)}

  def train_task(self, name: str) -> dict:
    """Trains every phase of task `name`; returns the last phase's stats."""
    stats = {}
    for phase in self.phases:
      if phase.task == name:
        stats = self.train_phase(phase) or stats
    return stats

  def recompute_batches(self, name: str) -> int:
    """How many batches recomputed statistics average over (train.bn_recompute_batches)."""
    n = self.spec.train.bn_recompute_batches
    if n >= 0:
      return n
    return min(200, max(1, math.ceil(self.data[name].train.size / self.spec.train.batch_size)))

  def _recompute_statistics(self, name: str, seed: int, layers=None):
    n = self.recompute_batches(name)
    layers = self.models.batch_statistics_layers(name) if layers is None else layers
    if n > 0 and layers:
      # Un-augmented images, preprocessed as for evaluation: the statistics the model will meet.
      ds = self.data[name].statistics_batches(self.spec.train.batch_size, seed=seed)
      used = recompute_batch_statistics(self.models.tasks[name].model, layers, ds.take(n))
      logging.info("Task %s: recomputed statistics of %d BN layers over %d batches.",
                   name, len(layers), used)

  def _checkpoint_number(self) -> int:
    return int(sum(int(v.numpy()) for v in self.steps.values()))

  def phase_done(self, phase: Phase) -> bool:
    return int(self.steps[phase.name].numpy()) >= phase.steps

  def phase_steps(self, task: str) -> int:
    """Steps done by the task's phases."""
    return int(sum(int(self.steps[p.name].numpy()) for p in self.phases if p.task == task))

  def evaluate(self, name: str) -> dict:
    """Accuracy, balanced accuracy, per-class accuracy and mean loss of task `name` on its eval
    split (inference mode); per-class figures are keyed by class name."""
    task = self.models.tasks[name]
    model, n = task.model, task.num_classes
    loss_total = tf.Variable(0.0, dtype=tf.float64)
    per_class = [tf.Variable(tf.zeros([n], tf.float64)) for _ in range(2)]  # correct, seen

    @tf.function(input_signature=[self.backbone.input_spec.tensor_spec(),
                                  tf.TensorSpec([None], tf.int32)])
    def eval_step(images, labels):
      logits = model(images, training=False)
      loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
      labels = tf.cast(labels, tf.int32)
      correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float64)
      loss_total.assign_add(tf.cast(tf.reduce_sum(loss), tf.float64))
      per_class[0].assign_add(tf.math.unsorted_segment_sum(correct, labels, n))
      per_class[1].assign_add(tf.math.unsorted_segment_sum(tf.ones_like(correct), labels, n))

    for images, labels in self.data[name].eval_batches(self.spec.train.eval_batch_size):
      eval_step(images, labels)
    correct, seen = (v.numpy() for v in per_class)
    if seen.sum() == 0:
      raise data_lib.DataError(f"Task {name}: the eval split is empty.")
    names = list(self.data[name].class_names) or [str(i) for i in range(n)]
    present = seen > 0  # balanced accuracy averages the classes the eval split has
    result = {"accuracy": float(correct.sum() / seen.sum()),
              "balanced_accuracy": float(np.mean(correct[present] / seen[present])),
              "eval_loss": float(loss_total.numpy() / seen.sum()),
              "eval_examples": int(seen.sum()),
              "train_examples": self.data[name].train.size,
              "num_classes": n,
              "per_class_accuracy": {c: (float(k / m) if m else None)
                                     for c, k, m in zip(names, correct, seen)},
              "eval_examples_per_class": {c: int(m) for c, m in zip(names, seen)}}
    if self.is_chief:
      writer = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard", name))
      with writer.as_default(step=self.phase_steps(name)):
        tf.summary.scalar("eval/accuracy", result["accuracy"])
        tf.summary.scalar("eval/balanced_accuracy", result["balanced_accuracy"])
        tf.summary.scalar("eval/loss", result["eval_loss"])
    return result
