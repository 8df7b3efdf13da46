"""The trainer: every task on one shared backbone, trained phase by phase in a custom loop
under a tf.distribute strategy (Keras 3 `fit` fails under multi-worker and parameter-server
strategies, so k4p1 never uses it).

A *phase* (k4p1.train.phase.Phase) trains an explicit list of variables of one task for a
number of steps, with its own step counter in the checkpoint. A task's default phase is named
after the task and trains what its spec says (k4p1.model.TaskModels.trainable_variables); the
methods (k4p1.plugins.METHODS) give the tasks they claim phases of their own: stages (a
super-net, then a policy), or one phase training several tasks at once with a loop body of its
own. The trainable flags, which pick whether a BatchNormalization uses batch statistics, are
set once per phase, never per step. Loss, accuracy and step counters stay on device and are
read every `log_every` steps.

The trainer restores, trains and evaluates what k4p1.assembly builds; writing patch files,
reports and exports is the experiment's job (k4p1.experiment), so nothing here imports the
deployment modules.

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
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from k4p1 import data as data_lib
from k4p1.assembly import assemble
from k4p1.config import ExperimentSpec
from k4p1.errors import ConfigError
from k4p1.model import recompute_batch_statistics
from k4p1.plugins import METHODS
from k4p1.train import evaluation, snapshots
from k4p1.train.optimizers import CounterSchedule, make_optimizer
from k4p1.train.phase import Phase
from k4p1.train.progress import Progress
from k4p1.train.steps import StepMetrics, make_train_step
from k4p1.train.strategies import is_chief, is_parameter_server, make_strategy

__all__ = ["Trainer", "Phase", "Progress", "replica_batches"]


def replica_batches(data, global_batch: int, seed: int, context: tf.distribute.InputContext):
  """This input pipeline's per-replica batches of `data`: with several pipelines, each takes
  every n-th per-replica batch of the same stream, so a step sees the examples one process's
  global batch would hold."""
  ds = data.train_batches(context.get_per_replica_batch_size(global_batch), seed=seed)
  if context.num_input_pipelines > 1:
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
  return ds


class Trainer:
  """Trains the task models a spec assembles, phase by phase, with optimizers and checkpoint.

  Args:
    spec: a checked ExperimentSpec (k4p1.experiment.resolve).
    workdir: where checkpoints and summaries go.
    with_data: read the datasets (needed for train/eval; not for params/export).
    phases: optional (trainer) -> [Phase]; default: each task's method's phases (one phase
      per task for a task no method claims), in task order.
  """

  def __init__(self, spec: ExperimentSpec, workdir: str, with_data: bool = True,
               phases: Optional[Callable] = None):
    self.spec = spec
    self.workdir = workdir
    self.with_data = with_data
    self.strategy = make_strategy(spec.runtime)
    self.is_chief = is_chief(self.strategy)
    # Parameter-server training: the chief schedules steps on the workers through a
    # coordinator; learning rates follow k4p1's own step counters (Keras's optimizer
    # `iterations` loses increments under concurrent workers: docs/parameter_server_notes.md).
    self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy) \
        if is_parameter_server(self.strategy) else None
    with self.strategy.scope():
      built = assemble(spec, with_data)
      self.backbone, self.models, self.data = built.backbone, built.models, built.data
      self.phases = phases(self) if phases else self._method_phases()
      names = [p.name for p in self.phases]
      if len(set(names)) != len(names):
        raise ValueError(f"Phase names must be unique. Received: {names}")
      self.steps = {name: tf.Variable(0, dtype=tf.int64, trainable=False, name=f"step_{name}")
                    for p in self.phases for name in p.counter_names()}
      self.metrics = StepMetrics.create()
      self.optimizers = {}
      self._stats_by_task = {}  # phase -> {task: stats}, for phases training several tasks
      if with_data:
        for phase in self.phases:
          if phase.optimizers is not None:
            self.optimizers.update(phase.optimizers(self, phase))
          else:
            self._build_optimizers(phase)
    root = tf.Module()
    root.base = self.models.base
    root.tasks = {k: t.model for k, t in self.models.tasks.items()}
    root.optimizers = self.optimizers
    root.steps = self.steps
    auxiliary = {k: dict(t.auxiliary) for k, t in self.models.tasks.items() if t.auxiliary}
    if auxiliary:  # training-only parts (e.g. a policy network); absent from other runs'
      root.auxiliary = auxiliary
    self.checkpoint = tf.train.Checkpoint(root=root)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not self.is_chief:  # other workers write throw-away copies (multi-worker protocol)
      ckpt_dir = os.path.join(workdir, "tmp_worker_checkpoints",
                              str(self.strategy.cluster_resolver.task_id))
    self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir,
                                              max_to_keep=spec.train.keep_checkpoints)

  def _method_phases(self) -> list:
    """Each task's phases in task order: its method's (k4p1.plugins.Method.phases), or one
    phase named after it."""
    claims = {t.name: [m for m in METHODS.values()
                       if m.claims is not None and m.claims(self.spec, t)]
              for t in self.spec.tasks}
    for task, methods in claims.items():
      if len(methods) > 1:
        raise ConfigError(
            f"Task {task!r}: the methods {', '.join(repr(m.name) for m in methods)} each train "
            f"it in phases of their own, so it cannot be trained jointly by them; train it "
            f"with one.")
    claimed = {}
    for t in self.spec.tasks:
      for m in claims[t.name]:
        claimed.setdefault(m.name, []).append(t.name)
    phases = []
    for t in self.spec.tasks:
      if claims[t.name]:
        method = claims[t.name][0]
        phases.extend(method.phases(self, t.name, claimed[method.name]))
      else:
        phases.append(Phase(t.name, t.name, self.total_steps(t.name) if self.with_data else 0))
    return phases

  def _build_optimizers(self, phase: Phase):
    """One optimizer per variable group of `phase` (keys as _variable_groups says)."""
    spec = self.spec
    for key, variables, rate in self._variable_groups(phase):
      if not variables:  # none: e.g. bn_stats without last_layer (statistics only)
        continue
      schedule = None
      if self.coordinator is not None:
        schedule = CounterSchedule(rate, spec.optimizer.decay_epochs *
                                   self.steps_per_epoch(phase.task),
                                   spec.optimizer.decay_rate, self.steps[phase.name])
      opt_spec = (dataclasses.replace(spec.optimizer, name=phase.optimizer)
                  if phase.optimizer else spec.optimizer)
      opt = make_optimizer(opt_spec, rate, self.steps_per_epoch(phase.task),
                           schedule=schedule, total_steps=phase.steps)
      opt.build(variables)
      self.optimizers[key] = opt

  def task_batch_size(self, name: str) -> int:
    """Task `name`'s global batch (its own `batch_size`, else train.batch_size)."""
    return self.spec.task(name).batch_size or self.spec.train.batch_size

  def write_snapshot(self, path: str, free_options: dict):
    """The training state and settings at `path` (k4p1.train.snapshots.write_snapshot)."""
    snapshots.write_snapshot(self, path, free_options)

  def distributed_batches(self, task: str, seed: int, global_batch: int = 0):
    """Per-replica batches of `task`'s training data, for this strategy (also PS-ready)."""
    global_batch = global_batch or self.spec.train.batch_size
    data = self.data[task]

    def dataset_fn(context: tf.distribute.InputContext):
      return replica_batches(data, global_batch, seed, context)

    return self.per_worker(self.strategy.distribute_datasets_from_function(dataset_fn))

  def per_worker(self, dataset):
    """A dataset as the step reads it: per worker under a parameter-server coordinator."""
    return self.coordinator.create_per_worker_dataset(dataset) if self.coordinator else dataset

  def schedule(self, step_fn, iterator):
    """Runs one step: here, or scheduled on a worker by the parameter-server coordinator."""
    if self.coordinator is not None:
      self.coordinator.schedule(step_fn, args=(iterator,))
    else:
      step_fn(iterator)

  def sync(self):
    """Waits for every scheduled step (before reading metrics or writing a checkpoint)."""
    if self.coordinator is not None:
      self.coordinator.join()

  def train_phase(self, phase: Phase) -> dict:
    """Trains `phase` from its step counter to its total; returns training stats (for a
    phase with a loop body of its own: {task: stats})."""
    if phase.run is not None:
      stats = phase.run(self, phase) or {}
      self._stats_by_task[phase.name] = stats
      return stats
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
    task = self.models.activate(name, None if phase.variables is None or phase.flags == "task"
                                else self.phase_variables(phase))
    train = self.spec.train
    groups = [(self.optimizers[key], variables)
              for key, variables, _ in self._variable_groups(phase) if variables]
    if not groups:  # nothing learned by gradient
      t0 = time.time()
      logging.info("Phase %s trains no variable by gradient: its BN statistics only.",
                   phase.name)
      self.recompute_statistics(name, train.seed)
      step_var.assign(total)
      self.manager.save(checkpoint_number=self.checkpoint_number())
      return {"train_steps": total, "train_seconds": round(time.time() - t0, 2),
              "train_images_per_second": 0.0}
    if start == 0:  # statistics=recompute: fitted to the target before gamma/beta learn
      if phase.start is not None:
        phase.start(self, phase)
      self.recompute_statistics(name, train.seed, self.models.recompute_first_layers(name))
    # Resumed runs reseed the shuffle from the step so they do not replay the same batches.
    iterator = iter(self.distributed_batches(name, seed=train.seed + start))
    (optimizer, variables), extra = groups[0], groups[1:]
    read_extra = dict
    if phase.step is not None:
      step_fn, read_extra = phase.step(self, phase, groups)
    else:
      step_fn = make_train_step(
          self.strategy, task.model, optimizer, variables, train.batch_size, task.num_classes,
          self.spec.optimizer.label_smoothing, metrics=self.metrics, counter=step_var,
          extra_groups=extra, penalty=lambda: self.models.penalty(name, step_var))
    writer = self.writer(name)
    self.metrics.read_and_reset()

    def log(step, first):
      loss, acc, _ = self.metrics.read_and_reset()  # the one host sync per log_every steps
      if not math.isfinite(loss):
        raise FloatingPointError(
            f"Task {name}: the loss became {loss} within steps {first}-{step}. Lower the "
            f"learning rate (--config.optimizer.lr, now {float(optimizer.learning_rate):.4g}).")
      extra_values = read_extra()
      with writer.as_default(step=step):
        tf.summary.scalar("train/loss", loss)
        tf.summary.scalar("train/accuracy", acc)
        tf.summary.scalar("train/learning_rate", float(optimizer.learning_rate))
        for key, value in extra_values.items():
          tf.summary.scalar(f"train/{phase.name}/{key}", value)
      return {"loss": loss, "acc": acc, **extra_values}

    def finish():
      if phase.finish is not None:
        phase.finish(self, phase)
      self.recompute_statistics(name, train.seed + start)

    t0 = time.time()
    self.loop(f"train {phase.name}", start, total, lambda step: self.schedule(step_fn, iterator),
              log, finish)
    seconds = time.time() - t0
    images = (total - start) * train.batch_size
    return {"train_steps": total, "train_seconds": round(seconds, 2),
            "train_images_per_second": round(images / max(seconds, 1e-9), 2)}

  def writer(self, name: str):
    """TensorBoard writer of `name` (per task), a no-op on other workers than the chief."""
    if not self.is_chief:
      return tf.summary.create_noop_writer()
    return tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard", name))

  def loop(self, title: str, start: int, total: int, run_step: Callable, log: Callable,
           finish: Callable):
    """The one training loop: steps start+1..total, a log every `log_every` steps, `finish`
    after the last step, a checkpoint every `checkpoint_every` steps and at the end.

    Args:
      run_step: (step) -> None, runs (or schedules) one step.
      log: (step, first step since the last log) -> values for the progress line; called
        after waiting for every scheduled step, so it may read the metrics.
      finish: () -> None, after the last step, before its checkpoint (statistics recompute).
    """
    train = self.spec.train
    progress = Progress(total, start, title, train.progress)
    log_every, ckpt_every = max(1, train.log_every), max(1, train.checkpoint_every)
    shown = {}
    for step in range(start + 1, total + 1):
      run_step(step)
      if step % log_every == 0 or step == total:
        self.sync()
        shown = log(step, max(start + 1, step - log_every + 1))
      progress.update(step, **shown)
      if step == total:
        finish()
      if step % ckpt_every == 0 or step == total:
        self.sync()
        self.manager.save(checkpoint_number=self.checkpoint_number())

  def train_task(self, name: str) -> dict:
    """Trains every phase of task `name` (a phase training several tasks trains them all
    together, once); returns the last phase's stats for this task."""
    stats = {}
    for phase in self.phases:
      if phase.tasks and name in phase.tasks:
        if phase.name not in self._stats_by_task:
          self.train_phase(phase)
        stats = self._stats_by_task.get(phase.name, {}).get(name, {}) or stats
      elif phase.task == name and not phase.tasks:
        stats = self.train_phase(phase) or stats
    return stats

  def recompute_batches(self, name: str) -> int:
    """How many batches recomputed statistics average over (train.bn_recompute_batches)."""
    n = self.spec.train.bn_recompute_batches
    if n >= 0:
      return n
    return min(200, max(1, math.ceil(self.data[name].train.size / self.spec.train.batch_size)))

  def recompute_statistics(self, name: str, seed: int, layers=None):
    n = self.recompute_batches(name)
    layers = self.models.batch_statistics_layers(name) if layers is None else layers
    if n > 0 and layers:
      # Un-augmented images, preprocessed as for evaluation: the statistics the model will meet.
      ds = self.data[name].statistics_batches(self.spec.train.batch_size, seed=seed)
      used = recompute_batch_statistics(self.models.tasks[name].model, layers, ds.take(n))
      logging.info("Task %s: recomputed statistics of %d BN layers over %d batches.",
                   name, len(layers), used)

  def checkpoint_number(self) -> int:
    return int(sum(int(v.numpy()) for v in self.steps.values()))

  def phase_done(self, phase: Phase) -> bool:
    return int(self.steps[phase.name].numpy()) >= phase.steps

  def phase_steps(self, task: str) -> int:
    """Steps done by the task's phases (in a phase of several tasks: the steps that trained
    it)."""
    return int(sum(int(self.steps[p.counter_of(task)].numpy())
                   for p in self.phases if p.trains(task)))

  def steps_per_epoch(self, name: str) -> int:
    return max(1, self.data[name].train.size // self.spec.train.batch_size)

  def total_steps(self, name: str) -> int:
    task = self.spec.task(name)
    return task.steps or max(1, int(math.ceil(task.epochs * self.steps_per_epoch(name))))

  def phase_variables(self, phase: Phase) -> list:
    if phase.variables is not None:
      return list(phase.variables(self.models))
    return self.models.trainable_variables(phase.task)

  def _variable_groups(self, phase: Phase) -> list[tuple[str, list, float]]:
    """[(optimizer key, variables, learning rate)]: the phase's variables at its rate; the
    classifier's at `head_lr` (key `<phase>__head`) when the task sets one; variables a patch
    kind trains at their own rate (`<phase>__<group>`, e.g. TAPS's scores at score_lr)."""
    task = self.spec.task(phase.task)
    variables = self.phase_variables(phase)
    claimed, groups = set(), []
    own = dict(self.models.rate_groups(phase.task))
    if task.head_lr:
      own["head"] = (self.models.tasks[phase.task].head.weights, task.head_lr)
    for group, members, rate in phase.rate_groups:
      own[group] = (list(members(self.models)), rate)
    for group, (members, rate) in own.items():
      ids = {id(v) for v in members}
      picked = [v for v in variables if id(v) in ids and id(v) not in claimed]
      claimed |= ids
      groups.append((f"{phase.name}__{group}", picked, rate))
    lr = phase.lr or task.lr or self.spec.optimizer.lr
    return [(phase.name, [v for v in variables if id(v) not in claimed], lr)] + groups

  def restore(self, require: bool = False) -> bool:
    """Restores the latest checkpoint, if any: the workdir's, else (unless `require`)
    train.init_from's. Returns whether one was restored.

    Raises:
      FileNotFoundError: `require` and the workdir has no checkpoint.
      ConfigError: train.init_from's checkpoint is missing or does not fit this run.
    """
    latest = self.manager.latest_checkpoint
    init_from = self.spec.train.init_from
    if latest is None and not require and init_from:
      return snapshots.restore_from(self, snapshots.find_checkpoint(init_from))
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
    if init_from and not require:
      print(f"Resuming from {latest}: {self.workdir} has checkpoints of its own, so "
            f"train.init_from is not read.", flush=True)
    return True

  def predict(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(softmax outputs [N, classes], labels [N]) of task `name` on its eval split."""
    return evaluation.predict(self, name)

  def evaluate(self, name: str) -> dict:
    """Accuracy, balanced and per-class accuracy and mean loss of task `name` on its eval
    split (k4p1.train.evaluation)."""
    return evaluation.evaluate(self, name)
