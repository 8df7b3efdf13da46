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
import functools
import json
import math
import os
import shutil
import sys
import time
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from k4p1 import data as data_lib
from k4p1.backbones import build_backbone, for_sizes
from k4p1.config import ExperimentSpec
from k4p1.errors import ConfigError
from k4p1.files import atomic_write_text
from k4p1.model import TaskModels, recompute_batch_statistics
from k4p1.registry import Registry
from k4p1.train.optimizers import make_optimizer
from k4p1.train.steps import StepMetrics, make_train_step
from k4p1.train.strategies import is_chief, is_parameter_server, make_strategy


# Patch kinds whose tasks train in stages: kind name -> (trainer, task, the kind's options,
# the task's steps) -> [Phase]. k4p1/train/swr.py registers 'swr' (super-net, policy,
# reparametrization).
STAGED_KINDS = Registry("staged patch kind")


SNAPSHOT_SETTINGS = "settings.json"
# Fields a run started from a snapshot may change: how it logs, checkpoints, exports, runs.
_FREE_SECTIONS = ("runtime", "export", "cascade", "report")
_FREE_TRAIN = ("init_from", "progress", "log_every", "checkpoint_every", "keep_checkpoints")


def _find_checkpoint(path: str) -> str:
  """train.init_from's checkpoint prefix: `path` itself, or a folder's latest checkpoint (a
  workdir's checkpoints/ too; a snapshot stopped while being replaced, its previous copy).

  Raises:
    ConfigError: none there.
  """
  for folder in (path, os.path.join(path, "checkpoints"), f"{path}.old"):
    if os.path.isdir(folder):
      latest = tf.train.latest_checkpoint(folder)
      if latest:
        return latest
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise ConfigError(f"train.init_from={path!r}: no checkpoint there. Give a checkpoint prefix "
                    f"(.../ckpt-12), a folder holding checkpoints, or a workdir.")


def run_settings(spec: ExperimentSpec, free_options: dict) -> dict:
  """The spec as JSON, less what a run from a snapshot may change (`_FREE_*`, and each patch
  kind's `free_options`, e.g. {'swr': ['c']})."""
  def plain(x):
    if isinstance(x, (frozenset, set)):
      return sorted(x)
    raise TypeError(type(x).__name__)

  d = json.loads(json.dumps(dataclasses.asdict(spec), default=plain))
  for section in _FREE_SECTIONS:
    d.pop(section, None)
  for key in _FREE_TRAIN:
    d["train"].pop(key, None)
  for task in d["tasks"]:
    task["patch"]["options"] = [
        [kind, [kv for kv in values if kv[0] not in free_options.get(kind, ())]]
        for kind, values in task["patch"]["options"]]
  return d


def _differences(a, b, where=""):
  """['tasks.0.dataset.fold: 1 != 0', ...] between two JSON values."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b), key=str)
            for d in _differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))]
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}.{i}")]
  return [] if a == b else [f"{where}: {_short(a)} != {_short(b)}"]


def _short(value, width: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= width else text[:width - 3] + "..."


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
    tasks: for a joint phase (multi-task training, k4p1.train.joint), every task it trains at
      once; `task` is then the first of them.
    flags: 'auto': with `variables`, exactly the layers owning them are trainable (every
      other layer, BN included, runs in inference mode); 'task': the task's own flags (its
      patch's BN layers use batch statistics) whatever `variables` says.
    start: optional (trainer, phase) -> None, run once when the phase begins (not on resume:
      what it changes is in the checkpoint), e.g. SWR binarizing its policy.
    finish: optional (trainer, phase) -> None, after the last step, before statistics are
      recomputed and the checkpoint written.
    step: optional (trainer, phase, [(optimizer, variables)]) -> (step_fn(iterator),
      read_extra() -> {name: value}): a step of its own (SWR's policy step); it must add to
      trainer.metrics and increment the phase's step counter, as make_train_step does.
    rate_groups: ((group, (models) -> variables, learning rate), ...): variables the phase
      trains with their own optimizer and rate (key `<phase>__<group>`).
    optimizer: a registered optimizer name for this phase ('' = optimizer.name), e.g. SWR's
      policy always trains with Adam, as its paper.
  """
  name: str
  task: str
  steps: int
  variables: Optional[Callable] = None
  lr: float = 0.0
  tasks: tuple = ()
  flags: str = "auto"
  start: Optional[Callable] = None
  finish: Optional[Callable] = None
  step: Optional[Callable] = None
  rate_groups: tuple = ()
  optimizer: str = ""


def _replica_batches(data, global_batch: int, seed: int, context: tf.distribute.InputContext):
  """This input pipeline's per-replica batches of `data`: with several pipelines, each takes
  every n-th per-replica batch of the same stream, so a step sees the examples one process's
  global batch would hold."""
  ds = data.train_batches(context.get_per_replica_batch_size(global_batch), seed=seed)
  if context.num_input_pipelines > 1:
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
  return ds


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
    # Parameter-server training: the chief schedules steps on the workers through a
    # coordinator; learning rates follow k4p1's own step counters (Keras's optimizer
    # `iterations` loses increments under concurrent workers: docs/parameter_server_notes.md).
    self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy) \
        if is_parameter_server(self.strategy) else None
    self.data: dict[str, data_lib.TaskData] = {}
    d = spec.data
    with self.strategy.scope():
      self.backbone = for_sizes(build_backbone(spec.backbone),
                                [t.input_size for t in spec.tasks])
      self.models = TaskModels(self.backbone)
      for i, task in enumerate(spec.tasks):
        if with_data:
          self.data[task.name] = data_lib.load_task_data(
              task.dataset, self.models.input_spec(task), d.data_dir,
              d.download, d.cache, d.shuffle_buffer)
          n = self.data[task.name].num_classes
          names = self.data[task.name].class_names
        else:
          n, names = data_lib.num_classes_of(task.dataset, d.data_dir), ()
        self.models.add(task, n, seed=spec.train.seed + i, class_names=names)
      self.phases = phases(self) if phases else self._default_phases(with_data)
      names = [p.name for p in self.phases]
      if len(set(names)) != len(names):
        raise ValueError(f"Phase names must be unique. Received: {names}")
      self.steps = {p.name: tf.Variable(0, dtype=tf.int64, trainable=False,
                                        name=f"step_{p.name}") for p in self.phases}
      for phase in self.phases:  # a joint phase also counts each task's own steps
        for t in phase.tasks:
          self.steps[f"{phase.name}__{t}"] = tf.Variable(0, dtype=tf.int64, trainable=False,
                                                         name=f"step_{phase.name}__{t}")
      self.metrics = StepMetrics.create()
      self.task_metrics = {t.name: StepMetrics.create(f"metrics_{t.name}")
                           for t in spec.tasks if t.name in spec.multitask.tasks}
      self.optimizers = {}
      self._joint_stats = {}
      if with_data:
        for phase in self.phases:
          if phase.tasks:
            self._build_joint_optimizers(phase)
            continue
          for key, variables, rate in self._variable_groups(phase):
            if variables:  # none: e.g. bn_stats without last_layer (statistics only)
              schedule = None
              if self.coordinator is not None:
                from k4p1.train.joint import JointSchedule
                schedule = JointSchedule(rate, spec.optimizer.decay_epochs *
                                         self.steps_per_epoch(phase.task),
                                         spec.optimizer.decay_rate, self.steps[phase.name])
              opt_spec = (dataclasses.replace(spec.optimizer, name=phase.optimizer)
                          if phase.optimizer else spec.optimizer)
              opt = make_optimizer(opt_spec, rate, self.steps_per_epoch(phase.task),
                                   schedule=schedule, total_steps=phase.steps)
              opt.build(variables)
              self.optimizers[key] = opt
    root = tf.Module()
    root.base = self.models.base
    root.tasks = {k: t.model for k, t in self.models.tasks.items()}
    root.optimizers = self.optimizers
    root.steps = self.steps
    auxiliary = {k: dict(t.auxiliary) for k, t in self.models.tasks.items() if t.auxiliary}
    if auxiliary:  # training-only parts (SWR's policy); absent from other runs' checkpoints
      root.auxiliary = auxiliary
    self.checkpoint = tf.train.Checkpoint(root=root)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not self.is_chief:  # other workers write throw-away copies (multi-worker protocol)
      ckpt_dir = os.path.join(workdir, "tmp_worker_checkpoints",
                              str(self.strategy.cluster_resolver.task_id))
    self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir,
                                              max_to_keep=spec.train.keep_checkpoints)

  def _default_phases(self, with_data: bool) -> list:
    """One phase per task in task order; the multitask tasks share one joint phase."""
    from k4p1 import patches
    joint = self.spec.multitask.tasks
    phases = []
    for t in self.spec.tasks:
      staged = [k for k in patches.kinds_of(t.patch) if k.name in STAGED_KINDS]
      steps = self.total_steps(t.name) if with_data else 0
      if t.name in joint and staged:
        raise ConfigError(f"Task {t.name!r}: '{staged[0].name}' trains in stages of its own and "
                          f"cannot be trained jointly (multitask.tasks); train it alone.")
      if t.name not in joint and staged:  # a kind with stages of its own (SWR)
        stages = STAGED_KINDS.lookup(staged[0].name)
        phases.extend(stages(self, t.name, patches.options(t.patch, staged[0].name), steps))
      elif t.name not in joint:
        phases.append(Phase(t.name, t.name, steps))
      elif t.name == joint[0]:
        steps = self._joint_total_steps() if with_data else 0
        phases.append(Phase("joint", joint[0], steps, tasks=tuple(joint)))
    return phases

  # -------------------------------------------------------------------------
  # Joint multi-task training (k4p1.train.joint)

  def task_batch_size(self, name: str) -> int:
    return self.spec.task(name).batch_size or self.spec.train.batch_size

  def _joint_probabilities(self) -> Optional[dict]:
    """Each joint task's share of the steps (None for `summed`: every step trains all)."""
    m = self.spec.multitask
    if m.step == "summed":
      return None
    sampler = self._sampler(total=1)
    return dict(zip(sampler.tasks, sampler.probabilities(1)))

  def _sampler(self, total: int):
    from k4p1.train.joint import TaskSampler
    m = self.spec.multitask
    return TaskSampler("workers" if m.workers else m.sampler,
                       {t: self.data[t].train.size for t in m.tasks},
                       seed=self.spec.train.seed, temperature=m.temperature, total_steps=total,
                       workers=dict(m.workers))

  def _joint_total_steps(self) -> int:
    from k4p1.train.joint import total_joint_steps
    m = self.spec.multitask
    return total_joint_steps(self.spec, {t: self.data[t].train.size for t in m.tasks},
                             {t: self.task_batch_size(t) for t in m.tasks},
                             self._joint_probabilities())

  def joint_decay_steps(self, phase: Phase) -> dict:
    """{task: steps between learning-rate decays}: joint steps when balanced, else its own."""
    from k4p1.train.joint import epoch_in_joint_steps
    m, o = self.spec.multitask, self.spec.optimizer
    probabilities = self._joint_probabilities() or {}
    if m.balance_lr:
      longest = max(epoch_in_joint_steps(self.data[t].train.size, self.task_batch_size(t),
                                         probabilities.get(t, 1.0)) for t in phase.tasks)
      return {t: max(1, int(round(o.decay_epochs * longest))) for t in phase.tasks}
    return {t: max(1, int(round(o.decay_epochs * self.data[t].train.size /
                                self.task_batch_size(t)))) for t in phase.tasks}

  def joint_variables(self, phase: Phase) -> tuple[list, dict, dict]:
    """(the shared weights some joint task trains, {task: the shared weights it uses},
    {task: its own learned variables}). A patched layer's base weights are nobody's: the
    tasks use their own (e.g. every base BN under scale-and-bias patches)."""
    learnable = self.models.shared_learnable_variables()
    ids = {id(v) for v in learnable}
    used = {t: {id(v) for v in self.models.tasks[t].model.variables} for t in phase.tasks}
    shared_of = {t: [v for v in learnable if id(v) in used[t]] for t in phase.tasks}
    shared = [v for v in learnable if any(id(v) in used[t] for t in phase.tasks)]
    own = {t: [v for v in self.models.trainable_variables(t) if id(v) not in ids]
           for t in phase.tasks}
    return shared, shared_of, own

  def _build_joint_optimizers(self, phase: Phase):
    from k4p1.train.joint import JointSchedule
    spec, o = self.spec, self.spec.optimizer
    decay = self.joint_decay_steps(phase)
    step = self.steps[phase.name]

    def optimizer(task, lr):
      if spec.multitask.balance_lr:
        schedule = JointSchedule(lr, decay[task], o.decay_rate, step)
      elif self.coordinator is not None:  # the task's own steps, from k4p1's exact counter
        counter = step if spec.multitask.step == "summed" else \
            self.steps[f"{phase.name}__{task}"]
        schedule = JointSchedule(lr, decay[task], o.decay_rate, counter)
      else:
        schedule = keras.optimizers.schedules.ExponentialDecay(
            lr, decay_steps=decay[task], decay_rate=o.decay_rate, staircase=True)
      return make_optimizer(o, lr, 1, schedule=schedule)

    # The shared weights follow the longest-epoch task's schedule at the global rate.
    reference = max(phase.tasks, key=lambda t: decay[t])
    for key, variables, task, lr in self._joint_groups(phase):
      if variables:
        opt = optimizer(task or reference, lr)
        opt.build(variables)
        self.optimizers[key] = opt

  def _joint_groups(self, phase: Phase) -> list:
    """[(optimizer key, variables, task or None for the shared group, learning rate)] of a
    joint phase. Summed steps: the shared weights once (`<phase>`), each task's own variables
    (`<phase>__<task>`); sampled steps: each task's shared and own variables together. Variables
    a patch kind trains at their own rate go to `<phase>__<task>__<group>` (TAPS's scores)."""
    spec = self.spec
    shared, shared_of, own = self.joint_variables(phase)
    summed = spec.multitask.step == "summed"
    groups = [(phase.name, shared, None, spec.optimizer.lr)] if summed else []
    for t in phase.tasks:
      rest, extra = list(own[t]), []
      for group, (members, lr) in self.models.rate_groups(t).items():
        ids = {id(v) for v in members}
        extra.append((f"{phase.name}__{t}__{group}", [v for v in rest if id(v) in ids], t, lr))
        rest = [v for v in rest if id(v) not in ids]
      mine = rest if summed else shared_of[t] + rest
      groups += [(f"{phase.name}__{t}", mine, t, spec.task(t).lr or spec.optimizer.lr)] + extra
    return groups

  def _train_joint(self, phase: Phase) -> dict:
    from k4p1.train.joint import make_summed_step, sizes_text
    spec, train = self.spec, self.spec.train
    step_var = self.steps[phase.name]
    start, total = int(step_var.numpy()), phase.steps
    if start >= total:
      logging.info("Joint phase %s already trained (%d/%d steps).", phase.name, start, total)
      self._joint_stats[phase.name] = {}
      return {}
    if start:
      print(f"Resuming joint training of {', '.join(phase.tasks)} at step {start}/{total}",
            flush=True)
    print(sizes_text(self.joint_decay_steps(phase), spec.multitask.balance_lr), flush=True)
    for t in phase.tasks:  # flags once per phase: every joint task trains, and the shared base
      self.models.activate(t)
    for layer in self.models.base.layers:
      layer.trainable = True
    models = {t: self.models.tasks[t].model for t in phase.tasks}
    classes = {t: self.models.tasks[t].num_classes for t in phase.tasks}
    batches = {t: self.task_batch_size(t) for t in phase.tasks}
    task_counters = {t: self.steps[f"{phase.name}__{t}"] for t in phase.tasks}
    seed = train.seed + start
    penalties = {t: functools.partial(self.models.penalty, t, task_counters[t])
                 for t in phase.tasks}
    groups = [(self.optimizers[k], v, t) for k, v, t, _ in self._joint_groups(phase)
              if k in self.optimizers]
    if spec.multitask.step == "summed":
      step_fn = make_summed_step(
          self.strategy, models, [(o, v) for o, v, _ in groups], batches, classes,
          {t: spec.task(t).loss_weight for t in phase.tasks}, spec.optimizer.label_smoothing,
          self.task_metrics, [step_var] + list(task_counters.values()), penalties)
      iterator = iter(self._distributed_joint_batches(phase.tasks, seed))
      run_step = lambda step: self._run(step_fn, iterator)  # noqa: E731
    else:
      sampler = self._sampler(total)
      step_fns, iterators = {}, {}
      for t in phase.tasks:
        (optimizer, variables), *extra = [(o, v) for o, v, task in groups if task == t]
        step_fns[t] = make_train_step(
            self.strategy, models[t], optimizer, variables, batches[t], classes[t],
            spec.optimizer.label_smoothing, metrics=self.task_metrics[t],
            counter=[step_var, task_counters[t]], extra_groups=extra, penalty=penalties[t])
        iterators[t] = iter(self._distributed_batches(t, seed))
      run_step = lambda step: self._run(step_fns[sampler.task(step)],  # noqa: E731
                                        iterators[sampler.task(step)])
    writers = {t: self._writer(t) for t in phase.tasks}
    for m in self.task_metrics.values():
      m.read_and_reset()
    done_before = {t: int(c.numpy()) for t, c in task_counters.items()}
    shown = {}

    def log(step, first):
      for t in phase.tasks:
        loss, acc, n = self.task_metrics[t].read_and_reset()
        if n and not math.isfinite(loss):
          raise FloatingPointError(
              f"Joint training: task {t}'s loss became {loss} within steps {first}-{step}. "
              f"Lower its learning rate.")
        if n:
          shown[f"{t}.loss"] = loss
          with writers[t].as_default(step=step):
            tf.summary.scalar("train/loss", loss)
            tf.summary.scalar("train/accuracy", acc)
      return shown

    def finish():
      shared = {}
      for t in phase.tasks:  # each task's own BN statistics ...
        owned = {id(v) for v in self.models.task_variables(t)}
        layers = self.models.batch_statistics_layers(t)
        self._recompute_statistics(
            t, train.seed + start, [l for l in layers if l.weights and
                                    all(id(v) in owned for v in l.weights)])
        shared.update({id(l): l for l in layers if not any(id(v) in owned for v in l.weights)})
      # ... and those the tasks share, over every task's batches in turn.
      self._recompute_shared_statistics(phase.tasks, train.seed + start, list(shared.values()))

    t0 = time.time()
    self._loop(f"train joint ({', '.join(phase.tasks)})", start, total, run_step, log, finish)
    seconds = time.time() - t0
    stats = {}
    for t in phase.tasks:
      done = int(task_counters[t].numpy())
      stats[t] = {"train_steps": done, "train_seconds": round(seconds, 2),
                  "train_images_per_second": round(
                      (done - done_before[t]) * batches[t] / max(seconds, 1e-9), 2),
                  "joint_steps": total}
    self._joint_stats[phase.name] = stats
    return stats

  def _distributed_joint_batches(self, tasks, seed: int):
    """Per-replica tuples of one batch per task (a `summed` step's input)."""
    data = {t: self.data[t] for t in tasks}
    batches = {t: self.task_batch_size(t) for t in tasks}

    def dataset_fn(context: tf.distribute.InputContext):
      return tf.data.Dataset.zip(tuple(_replica_batches(data[t], batches[t], seed, context)
                                       for t in tasks))

    return self._per_worker(self.strategy.distribute_datasets_from_function(dataset_fn))

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
      return self._restore_init(_find_checkpoint(init_from))
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

  def _restore_init(self, path: str) -> bool:
    """Starts from train.init_from's checkpoint `path`: a state between phases of a run with
    the same settings (but those its snapshot lists as free)."""
    where = f"train.init_from={self.spec.train.init_from!r}"
    settings_file = os.path.join(os.path.dirname(path), SNAPSHOT_SETTINGS)
    if os.path.exists(settings_file):
      with open(settings_file) as f:
        stored = json.load(f)
      diff = _differences(stored["settings"], run_settings(self.spec, stored["free_options"]))
      if diff:
        free = ", ".join(f"{k}({', '.join(v)})" for k, v in stored["free_options"].items())
        raise ConfigError(
            f"{where} was trained with other settings: {'; '.join(diff[:6])}"
            f"{' ...' if len(diff) > 6 else ''}. A run may start from it only with the same "
            f"settings" + (f", but for {free}" if free else "") + ".")
    try:
      self.checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise ConfigError(
          f"{where}: its checkpoint does not fit this run's model ({first[:300]}). It must "
          f"come from a run with the same backbone, tasks, patches and phases (e.g. an SWR "
          f"run at another target cost).") from e
    counts = {p.name: (int(self.steps[p.name].numpy()), p.steps) for p in self.phases}
    midway = [f"{n} {k}/{total}" for n, (k, total) in counts.items() if k and k != total]
    if midway:
      raise ConfigError(f"{where}: a state in the middle of phases ({', '.join(midway)}), "
                        f"not between them. Start from a snapshot taken between phases (an SWR "
                        f"run's WORKDIR/swr_stage1/<task>), or resume that run's own workdir.")
    if all(k for k, _ in counts.values()):
      raise ConfigError(f"{where}: every phase is already trained there; nothing is left to "
                        f"train. Start from a snapshot taken between phases (an SWR run's "
                        f"WORKDIR/swr_stage1/<task>).")
    done = [f"{n} ({k}/{total})" for n, (k, total) in counts.items() if k]
    print(f"Starting from {path}" + (f": phases done {', '.join(done)}" if done else ""),
          flush=True)
    return True

  def write_snapshot(self, path: str, free_options: dict):
    """Writes the whole training state (a checkpoint) and the run's settings to the folder
    `path`, for `train.init_from=path` in another run with the same settings except
    `free_options` ({kind: [option, ...]}). Replaces an earlier snapshot: written beside it,
    then swapped in by renames (a stop midway leaves the old one readable as `path`.old).
    Workers other than the chief write a throw-away copy (every worker takes part in a save)."""
    if not self.is_chief:
      tmp = os.path.join(self.workdir, "tmp_worker_checkpoints",
                         str(self.strategy.cluster_resolver.task_id), "snapshot")
      self.checkpoint.write(tmp)
      return
    tmp, old = f"{path}.tmp", f"{path}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.train.CheckpointManager(self.checkpoint, tmp, max_to_keep=1).save(
        checkpoint_number=self._checkpoint_number())
    atomic_write_text(os.path.join(tmp, SNAPSHOT_SETTINGS), json.dumps(
        {"settings": run_settings(self.spec, free_options),
         "free_options": {k: list(v) for k, v in free_options.items()}}, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(path):
      os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)

  def _distributed_batches(self, task: str, seed: int):
    """Per-replica batches of `task`'s training data, for this strategy (also PS-ready)."""
    global_batch = self.spec.train.batch_size
    data = self.data[task]

    def dataset_fn(context: tf.distribute.InputContext):
      return _replica_batches(data, global_batch, seed, context)

    return self._per_worker(self.strategy.distribute_datasets_from_function(dataset_fn))

  def _per_worker(self, dataset):
    """A dataset as the step reads it: per worker under a parameter-server coordinator."""
    return self.coordinator.create_per_worker_dataset(dataset) if self.coordinator else dataset

  def _run(self, step_fn, iterator):
    """Runs one step: here, or scheduled on a worker by the parameter-server coordinator."""
    if self.coordinator is not None:
      self.coordinator.schedule(step_fn, args=(iterator,))
    else:
      step_fn(iterator)

  def _sync(self):
    """Waits for every scheduled step (before reading metrics or writing a checkpoint)."""
    if self.coordinator is not None:
      self.coordinator.join()

  def train_phase(self, phase: Phase) -> dict:
    """Trains `phase` from its step counter to its total; returns training stats."""
    if phase.tasks:
      return self._train_joint(phase)
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
      self._recompute_statistics(name, train.seed)
      step_var.assign(total)
      self.manager.save(checkpoint_number=self._checkpoint_number())
      return {"train_steps": total, "train_seconds": round(time.time() - t0, 2),
              "train_images_per_second": 0.0}
    if start == 0:  # statistics=recompute: fitted to the target before gamma/beta learn
      if phase.start is not None:
        phase.start(self, phase)
      self._recompute_statistics(name, train.seed, self.models.recompute_first_layers(name))
    # Resumed runs reseed the shuffle from the step so they do not replay the same batches.
    iterator = iter(self._distributed_batches(name, seed=train.seed + start))
    (optimizer, variables), extra = groups[0], groups[1:]
    read_extra = dict
    if phase.step is not None:
      step_fn, read_extra = phase.step(self, phase, groups)
    else:
      step_fn = make_train_step(
          self.strategy, task.model, optimizer, variables, train.batch_size, task.num_classes,
          self.spec.optimizer.label_smoothing, metrics=self.metrics, counter=step_var,
          extra_groups=extra, penalty=lambda: self.models.penalty(name, step_var))
    writer = self._writer(name)
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
      self._recompute_statistics(name, train.seed + start)

    t0 = time.time()
    self._loop(f"train {phase.name}", start, total, lambda step: self._run(step_fn, iterator),
               log, finish)
    seconds = time.time() - t0
    images = (total - start) * train.batch_size
    return {"train_steps": total, "train_seconds": round(seconds, 2),
            "train_images_per_second": round(images / max(seconds, 1e-9), 2)}

  def _writer(self, name: str):
    """TensorBoard writer of `name` (per task), a no-op on other workers than the chief."""
    if not self.is_chief:
      return tf.summary.create_noop_writer()
    return tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard", name))

  def _loop(self, title: str, start: int, total: int, run_step: Callable, log: Callable,
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
        self._sync()
        shown = log(step, max(start + 1, step - log_every + 1))
      progress.update(step, **shown)
      if step == total:
        finish()
      if step % ckpt_every == 0 or step == total:
        self._sync()
        self.manager.save(checkpoint_number=self._checkpoint_number())

  def train_task(self, name: str) -> dict:
    """Trains every phase of task `name` (a joint phase trains all its tasks together);
    returns the last phase's stats for this task."""
    stats = {}
    for phase in self.phases:
      if phase.tasks and name in phase.tasks:
        if phase.name not in self._joint_stats:  # trained once, for all of its tasks
          self.train_phase(phase)
        stats = self._joint_stats.get(phase.name, {}).get(name, {}) or stats
      elif phase.task == name and not phase.tasks:
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

  def _recompute_shared_statistics(self, tasks, seed: int, layers: list):
    """BN layers several joint tasks share (an all-shared model): statistics averaged over
    `recompute_batches` batches of each task, taken in turn, each through its own model."""
    n = min(self.recompute_batches(t) for t in tasks)
    if n <= 0 or not layers:
      return
    streams = {t: iter(self.data[t].statistics_batches(self.spec.train.batch_size, seed=seed))
               for t in tasks}  # repeated: never exhausted
    turns = ((t, next(streams[t])[0]) for _ in range(n) for t in tasks)
    models = {t: self.models.tasks[t].model for t in tasks}
    used = recompute_batch_statistics(models, layers, turns)
    logging.info("Joint tasks %s: recomputed statistics of %d shared BN layers over %d batches.",
                 ", ".join(tasks), len(layers), used)

  def _checkpoint_number(self) -> int:
    return int(sum(int(v.numpy()) for v in self.steps.values()))

  def phase_done(self, phase: Phase) -> bool:
    return int(self.steps[phase.name].numpy()) >= phase.steps

  def phase_steps(self, task: str) -> int:
    """Steps done by the task's phases (in a joint phase: the steps that trained it)."""
    return int(sum(int(self.steps[f"{p.name}__{task}" if p.tasks else p.name].numpy())
                   for p in self.phases if (task in p.tasks if p.tasks else p.task == task)))

  def predict(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(softmax outputs [N, classes], labels [N]) of task `name` on its eval split, in the
    split's order (inference mode)."""
    task = self.models.tasks[name]
    model = task.model

    @tf.function(input_signature=[task.input_spec.tensor_spec()])
    def probabilities(images):
      return tf.nn.softmax(model(images, training=False), axis=-1)

    outputs, labels = [], []
    for images, y in self.data[name].eval_batches(self.spec.train.eval_batch_size):
      outputs.append(probabilities(images).numpy())
      labels.append(y.numpy())
    if not outputs:
      raise data_lib.DataError(f"Task {name}: the eval split is empty.")
    return np.concatenate(outputs), np.concatenate(labels)

  def evaluate(self, name: str) -> dict:
    """Accuracy, balanced accuracy, per-class accuracy and mean loss of task `name` on its eval
    split (inference mode); per-class figures are keyed by class name."""
    task = self.models.tasks[name]
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


from k4p1.train import swr as _swr  # noqa: E402,F401  (registers the SWR stages)
