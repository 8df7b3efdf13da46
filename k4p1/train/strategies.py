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


@STRATEGIES.register("parameter_server")
def _parameter_server(runtime):
  """Asynchronous training: variables on the parameter servers, steps scheduled on the workers
  by a `ClusterCoordinator` in the chief (the trainer creates it)."""
  from k4p1 import cluster
  cluster.check("parameter_server")
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  return tf.distribute.experimental.ParameterServerStrategy(resolver)


def serve_forever(job: str, index: int):
  """Runs this process's server of a parameter-server cluster (a worker or a ps) until killed.

  Workers get inter_op_parallelism_threads >= workers + 1: with TF's default on a small machine
  the first scheduled step never finishes (docs/parameter_server_notes.md).
  """
  from k4p1 import cluster
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  config = tf.compat.v1.ConfigProto()
  if job == "worker":
    config.inter_op_parallelism_threads = cluster.num_workers() + 1
  server = tf.distribute.Server(resolver.cluster_spec(), job_name=job, task_index=index,
                                protocol=resolver.rpc_layer or "grpc", config=config, start=True)
  print(f"{job} {index}: serving {server.target} for the chief's coordinator", flush=True)
  server.join()


def is_parameter_server(strategy) -> bool:
  return isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)


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
  """Whether this process writes checkpoints, summaries and exports: the chief, or worker 0 of a
  cluster without one."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if "chief" in resolver.cluster_spec().as_dict():
    return resolver.task_type == "chief"
  return resolver.task_type == "worker" and resolver.task_id == 0
