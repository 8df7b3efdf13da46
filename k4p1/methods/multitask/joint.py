"""Joint multi-task training (the paper's section 5.3): K tasks at once on one shared backbone.

The shared weights learn from every task; each task's patch and classifier only from its own
loss. Two step schemes (`multitask.step`):

  summed   each step takes one batch of every task and sums their weighted losses (TF Model
           Garden's joint_train_step): one optimizer for the shared weights, one per task for
           its own variables.
  sampled  each step trains one task, drawn by a registered sampler (samplers.py: round
           robin, proportional to dataset size, annealed temperature as Model Garden's, or
           by workers per task): the task's own optimizer updates the shared weights and its
           own, as a worker of that task does against a parameter server.

Learning-rate balancing (`multitask.balance_lr`, the default): the paper keeps "the learning
rates for different tasks comparable at any given point in time". k4p1 does exactly that: every
task's rate follows the same staircase in *joint* steps, decaying every `decay_epochs` epochs of
the task whose epoch lasts the most joint steps (`JointSchedule`). Without balancing, each task
decays every `decay_epochs` of its own epochs, counted in its own steps.

The trainer runs it as one phase (`joint_phase`) with an optimizer set and a loop body of its
own (k4p1.train.phase.Phase.optimizers / run); everything else here is that phase's.

Example:
  phase = joint_phase(trainer, ["cifar10", "fashion"])
  trainer.train_phase(phase)      # {task: stats}
"""

from __future__ import annotations

import functools
import math
import time
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from k4p1.methods.multitask.samplers import TaskSampler
from k4p1.model import recompute_batch_statistics
from k4p1.train.optimizers import CounterSchedule, make_optimizer
from k4p1.train.phase import Phase
from k4p1.train.steps import (StepMetrics, apply_groups, classification_loss, count_correct,
                              extra_loss, make_train_step)
from k4p1.train.trainer import replica_batches


def epoch_in_joint_steps(size: int, batch: int, probability: float = 1.0) -> float:
  """Joint steps a task takes to see its training split once."""
  return size / (batch * probability)


JointSchedule = CounterSchedule  # every task's rate follows the joint step counter


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




# ---------------------------------------------------------------------------
# The joint phase: its optimizers, variables and loop body, on the trainer's services.


def joint_phase(trainer, tasks: list) -> Phase:
  """The one phase that trains `tasks` (multitask.tasks) at once."""
  steps = total_steps(trainer) if trainer.with_data else 0
  return Phase("joint", tasks[0], steps, tasks=tuple(tasks), optimizers=build_optimizers,
               run=train_joint)


def _sizes(trainer) -> dict:
  return {t: trainer.data[t].train.size for t in trainer.spec.multitask.tasks}


def sampler(trainer, total: int):
  """The run's sampler: by workers when multitask.workers assigns them, else multitask.sampler."""
  m = trainer.spec.multitask
  return TaskSampler("workers" if m.workers else m.sampler, _sizes(trainer),
                     seed=trainer.spec.train.seed, temperature=m.temperature,
                     total_steps=total, workers=dict(m.workers))


def probabilities(trainer) -> Optional[dict]:
  """Each joint task's share of the steps (None for `summed`: every step trains all)."""
  if trainer.spec.multitask.step == "summed":
    return None
  s = sampler(trainer, total=1)
  return dict(zip(s.tasks, s.probabilities(1)))


def total_steps(trainer) -> int:
  tasks = trainer.spec.multitask.tasks
  return total_joint_steps(trainer.spec, _sizes(trainer),
                           {t: trainer.task_batch_size(t) for t in tasks}, probabilities(trainer))


def joint_decay_steps(trainer, phase: Phase) -> dict:
  """{task: steps between learning-rate decays}: joint steps when balanced, else its own."""
  m, o = trainer.spec.multitask, trainer.spec.optimizer
  shares = probabilities(trainer) or {}
  size = {t: trainer.data[t].train.size for t in phase.tasks}
  if m.balance_lr:
    longest = max(epoch_in_joint_steps(size[t], trainer.task_batch_size(t), shares.get(t, 1.0))
                  for t in phase.tasks)
    return {t: max(1, int(round(o.decay_epochs * longest))) for t in phase.tasks}
  return {t: max(1, int(round(o.decay_epochs * size[t] / trainer.task_batch_size(t))))
          for t in phase.tasks}


def joint_variables(trainer, phase: Phase) -> tuple[list, dict, dict]:
  """(the shared weights some joint task trains, {task: the shared weights it uses},
  {task: its own learned variables}). A patched layer's base weights are nobody's: the
  tasks use their own (e.g. every base BN under scale-and-bias patches)."""
  models = trainer.models
  learnable = models.shared_learnable_variables()
  ids = {id(v) for v in learnable}
  used = {t: {id(v) for v in models.tasks[t].model.variables} for t in phase.tasks}
  shared_of = {t: [v for v in learnable if id(v) in used[t]] for t in phase.tasks}
  shared = [v for v in learnable if any(id(v) in used[t] for t in phase.tasks)]
  own = {t: [v for v in models.trainable_variables(t) if id(v) not in ids] for t in phase.tasks}
  return shared, shared_of, own


def variable_groups(trainer, phase: Phase) -> list:
  """[(optimizer key, variables, task or None for the shared group, learning rate)] of a
  joint phase. Summed steps: the shared weights once (`<phase>`), each task's own variables
  (`<phase>__<task>`); sampled steps: each task's shared and own variables together. Variables
  a patch kind trains at their own rate go to `<phase>__<task>__<group>` (TAPS's scores)."""
  spec = trainer.spec
  shared, shared_of, own = joint_variables(trainer, phase)
  summed = spec.multitask.step == "summed"
  groups = [(phase.name, shared, None, spec.optimizer.lr)] if summed else []
  for t in phase.tasks:
    rest, extra = list(own[t]), []
    for group, (members, lr) in trainer.models.rate_groups(t).items():
      ids = {id(v) for v in members}
      extra.append((f"{phase.name}__{t}__{group}", [v for v in rest if id(v) in ids], t, lr))
      rest = [v for v in rest if id(v) not in ids]
    mine = rest if summed else shared_of[t] + rest
    groups += [(f"{phase.name}__{t}", mine, t, spec.task(t).lr or spec.optimizer.lr)] + extra
  return groups


def build_optimizers(trainer, phase: Phase) -> dict:
  """{key: built optimizer} of the joint phase (the Phase.optimizers hook)."""
  spec, o = trainer.spec, trainer.spec.optimizer
  decay = joint_decay_steps(trainer, phase)
  step = trainer.steps[phase.name]

  def optimizer(task, lr):
    if spec.multitask.balance_lr:
      schedule = JointSchedule(lr, decay[task], o.decay_rate, step)
    elif trainer.coordinator is not None:  # the task's own steps, from k4p1's exact counter
      counter = step if spec.multitask.step == "summed" else \
          trainer.steps[f"{phase.name}__{task}"]
      schedule = JointSchedule(lr, decay[task], o.decay_rate, counter)
    else:
      schedule = keras.optimizers.schedules.ExponentialDecay(
          lr, decay_steps=decay[task], decay_rate=o.decay_rate, staircase=True)
    return make_optimizer(o, lr, 1, schedule=schedule)

  # The shared weights follow the longest-epoch task's schedule at the global rate.
  reference = max(phase.tasks, key=lambda t: decay[t])
  built = {}
  for key, variables, task, lr in variable_groups(trainer, phase):
    if variables:
      built[key] = optimizer(task or reference, lr)
      built[key].build(variables)
  return built


def _distributed_joint_batches(trainer, tasks, seed: int):
  """Per-replica tuples of one batch per task (a `summed` step's input)."""
  data = {t: trainer.data[t] for t in tasks}
  batches = {t: trainer.task_batch_size(t) for t in tasks}

  def dataset_fn(context: tf.distribute.InputContext):
    return tf.data.Dataset.zip(tuple(replica_batches(data[t], batches[t], seed, context)
                                     for t in tasks))

  return trainer.per_worker(trainer.strategy.distribute_datasets_from_function(dataset_fn))


def _recompute_shared_statistics(trainer, tasks, seed: int, layers: list):
  """BN layers several joint tasks share (an all-shared model): statistics averaged over
  `recompute_batches` batches of each task, taken in turn, each through its own model."""
  n = min(trainer.recompute_batches(t) for t in tasks)
  if n <= 0 or not layers:
    return
  batch = trainer.spec.train.batch_size
  streams = {t: iter(trainer.data[t].statistics_batches(batch, seed=seed))
             for t in tasks}  # repeated: never exhausted
  turns = ((t, next(streams[t])[0]) for _ in range(n) for t in tasks)
  models = {t: trainer.models.tasks[t].model for t in tasks}
  used = recompute_batch_statistics(models, layers, turns)
  logging.info("Joint tasks %s: recomputed statistics of %d shared BN layers over %d batches.",
               ", ".join(tasks), len(layers), used)


def train_joint(trainer, phase: Phase) -> dict:
  """Trains the joint phase from its step counter to its total (the Phase.run hook); returns
  {task: training stats}."""
  spec, train = trainer.spec, trainer.spec.train
  step_var = trainer.steps[phase.name]
  start, total = int(step_var.numpy()), phase.steps
  if start >= total:
    logging.info("Joint phase %s already trained (%d/%d steps).", phase.name, start, total)
    return {}
  if start:
    print(f"Resuming joint training of {', '.join(phase.tasks)} at step {start}/{total}",
          flush=True)
  print(sizes_text(joint_decay_steps(trainer, phase), spec.multitask.balance_lr), flush=True)
  models_lib = trainer.models
  for t in phase.tasks:  # flags once per phase: every joint task trains, and the shared base
    models_lib.activate(t)
  for layer in models_lib.base.layers:
    layer.trainable = True
  with trainer.strategy.scope():
    task_metrics = {t: StepMetrics.create(f"metrics_{t}") for t in phase.tasks}
  models = {t: models_lib.tasks[t].model for t in phase.tasks}
  classes = {t: models_lib.tasks[t].num_classes for t in phase.tasks}
  batches = {t: trainer.task_batch_size(t) for t in phase.tasks}
  task_counters = {t: trainer.steps[f"{phase.name}__{t}"] for t in phase.tasks}
  seed = train.seed + start
  penalties = {t: functools.partial(models_lib.penalty, t, task_counters[t])
               for t in phase.tasks}
  groups = [(trainer.optimizers[k], v, t) for k, v, t, _ in variable_groups(trainer, phase)
            if k in trainer.optimizers]
  if spec.multitask.step == "summed":
    step_fn = make_summed_step(
        trainer.strategy, models, [(o, v) for o, v, _ in groups], batches, classes,
        {t: spec.task(t).loss_weight for t in phase.tasks}, spec.optimizer.label_smoothing,
        task_metrics, [step_var] + list(task_counters.values()), penalties)
    iterator = iter(_distributed_joint_batches(trainer, phase.tasks, seed))
    run_step = lambda step: trainer.schedule(step_fn, iterator)  # noqa: E731
  else:
    draw = sampler(trainer, total)
    step_fns, iterators = {}, {}
    for t in phase.tasks:
      (optimizer, variables), *extra = [(o, v) for o, v, task in groups if task == t]
      step_fns[t] = make_train_step(
          trainer.strategy, models[t], optimizer, variables, batches[t], classes[t],
          spec.optimizer.label_smoothing, metrics=task_metrics[t],
          counter=[step_var, task_counters[t]], extra_groups=extra, penalty=penalties[t])
      iterators[t] = iter(trainer.distributed_batches(t, seed))
    run_step = lambda step: trainer.schedule(step_fns[draw.task(step)],  # noqa: E731
                                             iterators[draw.task(step)])
  writers = {t: trainer.writer(t) for t in phase.tasks}
  for m in task_metrics.values():
    m.read_and_reset()
  done_before = {t: int(c.numpy()) for t, c in task_counters.items()}
  shown = {}

  def log(step, first):
    for t in phase.tasks:
      loss, acc, n = task_metrics[t].read_and_reset()
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
      owned = {id(v) for v in models_lib.task_variables(t)}
      layers = models_lib.batch_statistics_layers(t)
      trainer.recompute_statistics(
          t, train.seed + start, [l for l in layers if l.weights and
                                  all(id(v) in owned for v in l.weights)])
      shared.update({id(l): l for l in layers if not any(id(v) in owned for v in l.weights)})
    # ... and those the tasks share, over every task's batches in turn.
    _recompute_shared_statistics(trainer, phase.tasks, train.seed + start, list(shared.values()))

  t0 = time.time()
  trainer.loop(f"train joint ({', '.join(phase.tasks)})", start, total, run_step, log, finish)
  seconds = time.time() - t0
  stats = {}
  for t in phase.tasks:
    done = int(task_counters[t].numpy())
    stats[t] = {"train_steps": done, "train_seconds": round(seconds, 2),
                "train_images_per_second": round(
                    (done - done_before[t]) * batches[t] / max(seconds, 1e-9), 2),
                "joint_steps": total}
  return stats
