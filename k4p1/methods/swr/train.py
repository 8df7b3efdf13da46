"""SWR's training: the policy network, hard Gumbel-softmax gates, the cost loss and the stages.

The patch kind (kind.py) declares the layers; this module trains them, as phases of the one
trainer (k4p1.train.trainer):

  <task>.supernet  every gate 1: the deltas and the classifier learn the task (the trainer's
                   ordinary step; BN as the task's other kinds say).
  <task>.policy    the super-net frozen (inference mode); the policy network learns, with c
                   drawn each step from [c_min, c_max], gates sampled by a hard Gumbel-softmax
                   (temperature cosine-annealed t_start -> t_end over the phase) and passed to
                   the layers as a graph input, loss = task loss + beta * cost loss. The cost
                   loss (Eq. 2) is an expectation over c: each step averages it over
                   `cost_samples` drawn costs (the first drives the task loss); it needs the
                   policy network only, so the extra costs are nearly free, and without them
                   the policy learned the average c, not its dependence on c.
  <task>.reparam   first keeps stage 1's end state in WORKDIR/swr_stage1/<task> (a checkpoint;
                   the policy is conditioned on c, so a run at another target cost with
                   train.init_from=that folder skips stage 1), then binarizes the policy at
                   the target c (softmax(z)[0] >= 0.5) into each layer's `gate` and zeroes
                   every delta (init=zero); then the trainer's ordinary step: only the
                   selected deltas (and the classifier) move.
                   A gated-off delta gets an exactly-zero gradient, so Adam leaves it at zero.

Not staged (`swr(staged=false)`): one phase `<task>.joint` trains the policy, the deltas and
the classifier together, then binarizes at c.

Example:
  logits = build_policy(units=43, hidden=64)(np.array([[0.3]], np.float32))[0]   # [43, 2]
  gates = hard_gumbel_gates(logits, temperature=1.0, seed=[0, 1])   # 43 values, each 0 or 1
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from k4p1.errors import ConfigError
from k4p1.patches.conditioning import clone_with_condition
from k4p1.methods.swr.kind import (SwrOptions, SwrPatch, apply_decisions, base_size,
                                   decisions, layer_weights, options_of,
                                   reparametrize_probability, swr_layers, task_layers,
                                   unit_sizes)
from k4p1.train.steps import apply_groups, classification_loss, count_correct, extra_loss
from k4p1.train.phase import Phase


def hard_gumbel_gates(logits, temperature, seed):
  """Hard Gumbel-softmax over each unit's two logits: the first element of the one-hot sample,
  exactly 0 or 1 forward, the relaxed softmax's gradient backward (straight-through).

  Args:
    logits: [units, 2].
    temperature: the softmax temperature (a scalar tensor or float).
    seed: int [2], the stateless seed of the Gumbel noise.
  """
  u = tf.random.stateless_uniform(tf.shape(logits), seed, minval=1e-10, maxval=1.0)
  soft = tf.nn.softmax((logits - tf.math.log(-tf.math.log(u))) / temperature, axis=-1)
  hard = tf.one_hot(tf.argmax(soft, axis=-1), 2, dtype=soft.dtype)
  return (hard + (soft - tf.stop_gradient(soft)))[:, 0]  # exactly 0 or 1 forward


def cost_loss(logits, c, weights):
  """Eq. 2: (sum_l w_l q_l - c)^2, q_l = softmax(z_l)[0], `weights` w_l summing to 1.

  Batched: logits [k, units, 2] and c [k] give the mean over the k target costs."""
  expected = tf.reduce_sum(tf.cast(weights, logits.dtype) * reparametrize_probability(logits),
                           axis=-1)
  return tf.reduce_mean(tf.square(expected - tf.cast(c, logits.dtype)))


def temperature_at(step, steps: int, t_start: float, t_end: float):
  """Cosine annealing from t_start (step 0) to t_end (step `steps`)."""
  progress = tf.minimum(tf.cast(step, tf.float32) / float(max(1, steps)), 1.0)
  return t_end + 0.5 * (t_start - t_end) * (1.0 + tf.cos(math.pi * progress))


def conditioned_model(models, task: str) -> keras.Model:
  """Task `task`'s model with a `gates` input [units] the SWR layers read: inputs [x, gates]
  -> logits. Shares every layer (and so every weight) with the task's model."""
  t = models.tasks[task]
  layers = swr_layers(task_layers(models, task))
  index = 0
  for layer in layers:
    layer.gate_index = index
    index += len(layer.deltas)
  gates = keras.Input(batch_shape=(index,), name="gates")

  def call_function(layer, *args, **kwargs):
    if isinstance(layer, SwrPatch):
      return layer(*args, gates=gates, **kwargs)
    return layer(*args, **kwargs)

  backbone = clone_with_condition(t.patched.model, gates, call_function,
                                  name=f"{t.patched.model.name}_gated")
  inputs = t.input_spec.keras_input()
  x = t.frontend(inputs)
  x = backbone([x, gates])
  if len(x.shape) == 4:
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  return keras.Model([inputs, gates], t.head(x), name=f"k4p1_{task}_gated")


def make_policy_step(trainer, phase, groups, train_deltas: bool):
  """The policy phase's step (and the not-staged joint step, `train_deltas`): returns
  (step_fn(iterator), read_extra() -> {cost, ratio, temperature})."""
  models, spec = trainer.models, trainer.spec
  task = models.tasks[phase.task]
  options = options_of(models, phase.task)
  policy = task.auxiliary["policy"]
  model = conditioned_model(models, phase.task)
  weights = tf.constant(layer_weights(models, phase.task, options.weighting), tf.float32)
  sizes = tf.constant(np.array(unit_sizes(models, phase.task), np.float32))
  base = float(base_size(models))
  strategy, batch = trainer.strategy, spec.train.batch_size
  counter = trainer.steps[phase.name]
  metrics = trainer.metrics
  seed = spec.train.seed
  with strategy.scope():
    sums = [tf.Variable(0.0, trainable=False, name=f"swr_{n}",
                        synchronization=tf.VariableSynchronization.ON_WRITE,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for n in ("cost", "ratio", "target")]
  variables = [v for _, vs in groups for v in vs]

  def replica_step(images, labels, c, temperature, noise_seed):
    with tf.GradientTape() as tape:
      all_logits = policy(tf.reshape(c, [-1, 1]), training=True)   # [cost_samples, units, 2]
      gates = hard_gumbel_gates(all_logits[0], temperature, noise_seed)
      logits = model([images, gates], training=True)
      loss = classification_loss(logits, labels, task.num_classes, batch,
                                 spec.optimizer.label_smoothing)
      cost = cost_loss(all_logits, c, weights)
      total = loss + (options.beta * cost + extra_loss(model, None, strategy)
                      ) / strategy.num_replicas_in_sync
    apply_groups(groups, tape.gradient(total, variables))
    ratio = tf.reduce_sum(gates * sizes) / base
    return loss, count_correct(logits, labels), cost, ratio

  @tf.function
  def step(iterator):
    images, labels = next(iterator)
    k = tf.cast(counter, tf.int32)
    # The task loss runs at c[0]; the cost loss averages over every c (policy-only: cheap).
    c = tf.random.stateless_uniform([options.cost_samples], [seed, 7919 + k], options.c_min,
                                    options.c_max)
    temperature = temperature_at(counter, phase.steps, options.t_start, options.t_end)
    noise_seed = tf.stack([tf.constant(seed + 1, tf.int32), k])
    loss, correct, cost, ratio = strategy.run(
        replica_step, args=(images, labels, c, temperature, noise_seed))
    loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
    accuracy = strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None) / batch
    cost = strategy.reduce(tf.distribute.ReduceOp.MEAN, cost, axis=None)
    ratio = strategy.reduce(tf.distribute.ReduceOp.MEAN, ratio, axis=None)
    metrics.add(loss, accuracy)
    for v, value in zip(sums, (cost, ratio, c[0])):
      v.assign_add(value)
    counter.assign_add(1)
    return loss, accuracy

  last = {"count": int(counter.numpy())}

  def read_extra():
    now = int(counter.numpy())
    n = max(1, now - last["count"])
    last["count"] = now
    values = [float(v.numpy()) / n for v in sums]
    for v in sums:
      v.assign(0.0)
    t = float(temperature_at(now, phase.steps, options.t_start, options.t_end))
    return {"cost": values[0], "ratio": values[1], "c": values[2], "T": t}

  return step, read_extra


STAGE1_DIR = "swr_stage1"


def stage1_path(workdir: str, task: str) -> str:
  """Where an SWR run keeps its task's stage-1 checkpoint (written as stage 2 begins)."""
  return os.path.join(workdir, STAGE1_DIR, task)


def swr_phases(trainer, task: str, options: SwrOptions, steps: int) -> list:
  """The task's SWR stages as trainer phases (module docstring).

  Raises:
    ConfigError: under the parameter-server strategy (the policy step reads its counters on
      the host; run SWR under the default, mirrored or multi_worker_mirrored strategies).
  """
  if trainer.coordinator is not None:
    raise ConfigError(f"Task {task!r}: SWR's policy phase does not run under the "
                      f"parameter_server strategy; use runtime.strategy=default, mirrored or "
                      f"multi_worker_mirrored.")

  def stage(share):
    return max(1, int(round(share * steps))) if steps else 0

  def policy_variables(models):
    return list(models.tasks[task].auxiliary["policy"].trainable_variables)

  if not options.staged:
    def joint_variables(models):
      return policy_variables(models) + models.trainable_variables(task)

    def finish(trainer_, phase):
      apply_decisions(trainer_.models, task, decisions(trainer_.models, task, options.c),
                      zero_deltas="unselected")

    return [Phase(f"{task}.joint", task, stage(options.supernet + options.policy),
                  variables=joint_variables, flags="task",
                  step=lambda tr, ph, groups: make_policy_step(tr, ph, groups, True),
                  finish=finish, rate_groups=(("policy", policy_variables, options.policy_lr),))]

  def begin_reparam(trainer_, phase):
    # Stage 1's end state (super-net, policy, BN statistics, classifier): another target cost
    # starts from it (train.init_from) and trains only its own stage 2.
    trainer_.write_snapshot(stage1_path(trainer_.workdir, task), {"swr": ["c"]})
    chosen = decisions(trainer_.models, task, options.c)
    apply_decisions(trainer_.models, task, chosen,
                    zero_deltas="all" if options.init == "zero" else "unselected")

  phases = []
  if options.supernet > 0:
    phases.append(Phase(f"{task}.supernet", task, stage(options.supernet)))
  phases.append(Phase(f"{task}.policy", task, stage(options.policy), variables=policy_variables,
                      lr=options.policy_lr, optimizer="adam",
                      flags="task" if options.policy_bn == "batch" else "auto",
                      step=lambda tr, ph, groups: make_policy_step(tr, ph, groups, False)))
  phases.append(Phase(f"{task}.reparam", task, stage(options.reparam), start=begin_reparam))
  return phases


__all__ = ["STAGE1_DIR", "stage1_path", "hard_gumbel_gates", "cost_loss", "temperature_at",
           "conditioned_model", "make_policy_step", "swr_phases"]
