"""Optimizers by name (`optimizer.name`), with the paper's staircase learning-rate decay.

Example:
  opt = make_optimizer(OptimizerSpec(), lr=0.045, steps_per_epoch=100)   # TF-slim RMSProp
"""

from __future__ import annotations

import keras

from k4p1.registry import Registry

OPTIMIZERS = Registry("optimizer", field="optimizer.name")


@OPTIMIZERS.register("rmsprop")
def _rmsprop(spec, schedule):
  return keras.optimizers.RMSprop(schedule, rho=spec.rho, momentum=spec.momentum,
                                  epsilon=spec.epsilon)


@OPTIMIZERS.register("sgd")
def _sgd(spec, schedule):
  return keras.optimizers.SGD(schedule, momentum=spec.momentum)


@OPTIMIZERS.register("adam")
def _adam(spec, schedule):
  return keras.optimizers.Adam(schedule)


def make_optimizer(spec, lr: float, steps_per_epoch: int) -> keras.optimizers.Optimizer:
  """The optimizer named by `spec.name`, lr decayed by `decay_rate` every `decay_epochs`."""
  build = OPTIMIZERS.lookup(spec.name)
  schedule = keras.optimizers.schedules.ExponentialDecay(
      lr, decay_steps=max(1, int(round(spec.decay_epochs * steps_per_epoch))),
      decay_rate=spec.decay_rate, staircase=True)
  return build(spec, schedule)
