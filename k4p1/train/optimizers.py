"""Optimizers by name (`optimizer.name`), with the paper's staircase learning-rate decay.

  rmsprop        TF1 / TF-slim RMSProp, the paper's: the mean square starts at 1 (TF1RMSprop)
  rmsprop_keras  Keras's RMSprop: the mean square starts at 0, so its first steps are larger
                 (with rho 0.9, epsilon 1.0 and small gradients: 1.38x at step 1, 1.16x at
                 step 10, 1.02x at step 30)
  sgd, adam

Example:
  opt = make_optimizer(OptimizerSpec(), lr=0.045, steps_per_epoch=100)   # TF-slim RMSProp
"""

from __future__ import annotations

import keras
import tensorflow as tf

from k4p1.registry import Registry

OPTIMIZERS = Registry("optimizer", field="optimizer.name")


class CounterSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Staircase decay driven by a step variable of k4p1's (a phase's or a task's step counter),
  not the optimizer's own `iterations` (which loses increments under concurrent
  parameter-server workers: docs/parameter_server_notes.md).

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


@keras.saving.register_keras_serializable(package="k4p1")
class TF1RMSprop(keras.optimizers.RMSprop):
  """RMSProp as TF1's tf.train.RMSPropOptimizer and TF-slim compute it.

  The update is Keras's (mean square ms = rho ms + (1 - rho) g^2; mom = momentum mom +
  lr g / sqrt(ms + epsilon); w -= mom); only the start differs: TF1 initialises ms to 1,
  Keras to 0. With the paper's epsilon 1.0 and small gradients, a zero start makes the update
  at step k sqrt((1 + 0.9^k) / 1) larger: 1.38x at the first step, still 1.16x at the tenth,
  which matters in runs of under a hundred steps.

  Example:
    TF1RMSprop(0.045, rho=0.9, momentum=0.9, epsilon=1.0)
  """

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    for velocity in self._velocities:
      if velocity is not None:
        velocity.assign(keras.ops.ones_like(velocity))


@OPTIMIZERS.register("rmsprop")
def _rmsprop(spec, schedule):
  return TF1RMSprop(schedule, rho=spec.rho, momentum=spec.momentum, epsilon=spec.epsilon)


@OPTIMIZERS.register("rmsprop_keras")
def _rmsprop_keras(spec, schedule):
  return keras.optimizers.RMSprop(schedule, rho=spec.rho, momentum=spec.momentum,
                                  epsilon=spec.epsilon)


@OPTIMIZERS.register("sgd")
def _sgd(spec, schedule):
  return keras.optimizers.SGD(schedule, momentum=spec.momentum)


@OPTIMIZERS.register("adam")
def _adam(spec, schedule):
  return keras.optimizers.Adam(schedule)


SCHEDULES = ("staircase", "cosine")


def make_optimizer(spec, lr: float, steps_per_epoch: int, schedule=None,
                   total_steps: int = 0) -> keras.optimizers.Optimizer:
  """The optimizer named by `spec.name`, lr decayed by `decay_rate` every `decay_epochs`
  (`spec.schedule='staircase'`), or cosine-annealed to 0 over `total_steps` ('cosine': the
  SWR paper's Adam schedule); or following `schedule`, e.g. a joint-step schedule in
  multi-task training."""
  build = OPTIMIZERS.lookup(spec.name)
  if schedule is None and getattr(spec, "schedule", "staircase") == "cosine" and total_steps:
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=int(total_steps))
  schedule = schedule or keras.optimizers.schedules.ExponentialDecay(
      lr, decay_steps=max(1, int(round(spec.decay_epochs * steps_per_epoch))),
      decay_rate=spec.decay_rate, staircase=True)
  return build(spec, schedule)
