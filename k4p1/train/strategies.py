"""tf.distribute strategies by name (`runtime.strategy`).

Example:
  strategy = make_strategy(RuntimeSpec(strategy="mirrored", devices="/cpu:0,/cpu:1"))
"""

from __future__ import annotations

import tensorflow as tf

from k4p1.registry import Registry

STRATEGIES = Registry("strategy", field="runtime.strategy")


def _devices(runtime) -> list | None:
  return [d.strip() for d in runtime.devices.split(",") if d.strip()] or None


@STRATEGIES.register("default")
def _default(runtime):
  return tf.distribute.get_strategy()


@STRATEGIES.register("one_device")
def _one_device(runtime):
  return tf.distribute.OneDeviceStrategy((_devices(runtime) or ["/cpu:0"])[0])


@STRATEGIES.register("mirrored")
def _mirrored(runtime):
  return tf.distribute.MirroredStrategy(_devices(runtime))


@STRATEGIES.register("multi_worker_mirrored")
def _multi_worker_mirrored(runtime):
  return tf.distribute.MultiWorkerMirroredStrategy()


@STRATEGIES.register("tpu")
def _tpu(runtime):
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=runtime.tpu)
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def make_strategy(runtime) -> tf.distribute.Strategy:
  """The strategy named by `runtime.strategy` (RuntimeSpec or the config section)."""
  return STRATEGIES.lookup(runtime.strategy)(runtime)


def is_chief(strategy) -> bool:
  """Whether this process writes checkpoints, summaries and exports."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)
