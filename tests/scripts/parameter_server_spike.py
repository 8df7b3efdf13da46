"""Asynchronous parameter-server training spike: prints one JSON report on its last stdout line.

Run by tests/parameter_server_test.py as
`unshare --user --map-root-user --net python parameter_server_spike.py`. A `tf.distribute.Server`
listens on `[::]:port` (every interface) whatever host its ClusterSpec names, so the in-process
cluster (1 chief = this process as coordinator, 2 workers, 1 ps) lives in a private network
namespace whose only interface is loopback; the script refuses to start servers anywhere else.
In-process servers cannot be shut down in TensorFlow: ending this process is the teardown, and a
watchdog ends it if anything hangs.
"""

import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEADLINE_S = float(os.environ.get("PS_SPIKE_DEADLINE_S", "90"))
NUM_WORKERS = 2
STEPS = 20
COUNTER_STEPS = 100


def _watchdog():
  sys.stderr.write(f"parameter_server_spike: watchdog fired after {DEADLINE_S:.0f} s\n")
  sys.stderr.flush()
  os._exit(3)


def _private_loopback_only():
  """Checks that only `lo` exists (a fresh network namespace) and brings it up."""
  names = sorted(name for _, name in socket.if_nameindex())
  if names != ["lo"]:
    sys.stderr.write(f"refusing to start servers: interfaces {names}, expected only ['lo'] "
                     "(run under `unshare --user --map-root-user --net`)\n")
    sys.exit(2)
  siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    request = struct.pack("16sh", b"lo", 0)
    flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, request))[1]
    fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main():
  watchdog = threading.Timer(DEADLINE_S, _watchdog)
  watchdog.daemon = True  # fires only while the main thread is still running (hung)
  watchdog.start()
  _private_loopback_only()

  import numpy as np
  import tensorflow as tf
  import keras

  report = {}
  start = time.time()
  cluster = {"chief": [_free_port()], "worker": [_free_port() for _ in range(NUM_WORKERS)],
             "ps": [_free_port()]}
  cluster_spec = tf.train.ClusterSpec(
      {job: [f"127.0.0.1:{port}" for port in ports] for job, ports in cluster.items()})
  # Without inter_op_parallelism_threads >= num_workers + 1 on the workers (the default is the
  # number of cores: 2 here) the first scheduled step never finishes (TF's own
  # multi_worker_test_base sets the same, b/172296720).
  worker_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=NUM_WORKERS + 1,
                                           intra_op_parallelism_threads=1)
  ps_config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1)
  servers = [tf.distribute.Server(cluster_spec, job_name="worker", task_index=i,
                                  config=worker_config, protocol="grpc", start=True)
             for i in range(NUM_WORKERS)]
  servers.append(tf.distribute.Server(cluster_spec, job_name="ps", task_index=0,
                                      config=ps_config, protocol="grpc", start=True))
  # The chief's server is started by the strategy itself (eager `connect_to_cluster`).
  resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
      cluster_spec, task_type="chief", task_id=0, rpc_layer="grpc")
  strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
  coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
  report["cluster"] = cluster_spec.as_dict()
  report["cluster_start_s"] = time.time() - start

  def conv_model():
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, name="dense"),
    ])

  def random_dataset():
    x = tf.random.stateless_uniform((64, 8, 8, 3), seed=(1, 2))
    y = tf.random.stateless_uniform((64,), seed=(3, 4), maxval=2, dtype=tf.int32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True).repeat()

  random_iterator = iter(coordinator.create_per_worker_dataset(random_dataset))

  def snapshot(model):
    return {v.path: np.array(v.numpy()) for v in model.variables}

  def changed(before, model):
    return {v.path: bool(np.any(np.array(v.numpy()) != before[v.path])) for v in model.variables}

  def explicit_list(model):
    # Conv and Dense only: BatchNormalization gamma/beta stay out on purpose.
    return [v for v in model.trainable_variables if "/bn/" not in v.path]

  def classification_loss(model, x, y):
    logits = model(x, training=True)
    return tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))

  # 1. Placement of a Keras 3 model built under the strategy scope.
  with strategy.scope():
    model = conv_model()
  report["placement"] = [
      {"path": v.path, "device": v.value.device, "trainable": v.trainable,
       "keras_class": type(v).__name__, "tf_class": type(v.value).__name__}
      for v in model.variables]

  # 2. Recommended: raw-op RMSProp on an explicit variable list, own slots, own step counter.
  lr, rho, epsilon = 0.01, 0.9, 1e-7
  with strategy.scope():
    trained = [v.value for v in explicit_list(model)]  # the tf.Variables (CachingVariable)
    slots = []
    for var in trained:
      with strategy.extended.colocate_vars_with(var):
        slots.append((tf.Variable(tf.zeros_like(var), trainable=False, name="ms"),
                      tf.Variable(tf.zeros_like(var), trainable=False, name="mom")))
    steps_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_done")

  @tf.function
  def raw_rmsprop_step(iterator):
    def replica_fn(x, y):
      with tf.GradientTape() as tape:
        loss = classification_loss(model, x, y)
      grads = tape.gradient(loss, trained)
      for var, (ms, mom), grad in zip(trained, slots, grads):
        tf.raw_ops.ResourceApplyRMSProp(var=var.handle, ms=ms.handle, mom=mom.handle, lr=lr,
                                        rho=rho, momentum=0.0, epsilon=epsilon, grad=grad,
                                        use_locking=True)
      steps_done.assign_add(1)
      return loss

    x, y = next(iterator)
    return strategy.run(replica_fn, args=(x, y))

  before = snapshot(model)
  t = time.time()
  losses = [coordinator.schedule(raw_rmsprop_step, args=(random_iterator,)) for _ in range(STEPS)]
  coordinator.join()
  report["raw_rmsprop"] = {
      "scheduled": STEPS,
      "steps_done": int(steps_done.numpy()),
      "trained": [v.name for v in trained],
      "changed": changed(before, model),
      "slots_changed": all(bool(np.any(ms.numpy() != 0)) for ms, _ in slots),
      "losses_finite": bool(np.all(np.isfinite([l.fetch() for l in losses]))),
      "seconds": time.time() - t,
  }

  # 3. The Keras optimizer on the same kind of step: it runs, but its `iterations` loses counts.
  with strategy.scope():
    keras_model = conv_model()
    keras_trained = explicit_list(keras_model)
    optimizer = keras.optimizers.RMSprop(lr)
    optimizer.build(keras_trained)
    keras_steps_done = tf.Variable(0, dtype=tf.int64, trainable=False)

  @tf.function
  def keras_optimizer_step(iterator):
    def replica_fn(x, y):
      with tf.GradientTape() as tape:
        loss = classification_loss(keras_model, x, y)
      grads = tape.gradient(loss, keras_trained)
      optimizer.apply_gradients(zip(grads, keras_trained))  # needs strategy.run's replica context
      keras_steps_done.assign_add(1)
      return loss

    x, y = next(iterator)
    return strategy.run(replica_fn, args=(x, y))

  before = snapshot(keras_model)
  for _ in range(STEPS):
    coordinator.schedule(keras_optimizer_step, args=(random_iterator,))
  coordinator.join()
  report["keras_rmsprop"] = {
      "scheduled": STEPS,
      "steps_done": int(keras_steps_done.numpy()),
      "optimizer_iterations": int(optimizer.iterations.numpy()),
      "optimizer_variables": [
          {"path": v.path, "device": v.value.device, "aggregation": v.aggregation}
          for v in optimizer.variables],
      "changed": changed(before, keras_model),
  }

  # 4. Why `iterations` loses counts: keras.Variable.assign_add is `assign(self + value)`, a
  # read-modify-write; the tf.Variable underneath has an atomic AssignAddVariableOp.
  with strategy.scope():
    keras_counter = keras.Variable(0, dtype="int64", trainable=False)
    keras_value_counter = keras.Variable(0, dtype="int64", trainable=False)
    tf_counter = tf.Variable(0, dtype=tf.int64, trainable=False)

  @tf.function
  def count_step(iterator):
    def replica_fn(x):
      keras_counter.assign_add(1)
      keras_value_counter.value.assign_add(1)
      tf_counter.assign_add(1)
      return tf.reduce_sum(x)

    x, _ = next(iterator)
    return strategy.run(replica_fn, args=(x,))

  for _ in range(COUNTER_STEPS):
    coordinator.schedule(count_step, args=(random_iterator,))
  coordinator.join()
  report["counters"] = {
      "scheduled": COUNTER_STEPS,
      "keras_variable_assign_add": int(keras_counter.numpy()),
      "keras_variable_value_assign_add": int(keras_value_counter.numpy()),
      "tf_variable_assign_add": int(tf_counter.numpy()),
  }

  # 5. Exactly one scheduled SGD step on Dense(1) with a fixed batch, for a NumPy comparison. Both
  # workers see the same batch, so it does not matter which one runs it. (More than one step is
  # not reproducible: workers compute gradients on parameters other workers are updating.)
  x_fixed = np.random.RandomState(0).uniform(-1, 1, (4, 3)).astype("float32")
  y_fixed = np.random.RandomState(1).uniform(-1, 1, (4, 1)).astype("float32")
  fixed_iterator = iter(coordinator.create_per_worker_dataset(
      lambda: tf.data.Dataset.from_tensors((x_fixed, y_fixed)).repeat()))
  sgd_lr = 0.1

  def one_sgd_step(use_keras_optimizer):
    with strategy.scope():
      dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="dense")])
      variables = dense.trainable_variables
      if use_keras_optimizer:
        sgd = keras.optimizers.SGD(sgd_lr)
        sgd.build(variables)

    @tf.function
    def step(iterator):
      def replica_fn(x, y):
        with tf.GradientTape() as tape:
          loss = tf.reduce_mean(tf.square(dense(x) - y))
        grads = tape.gradient(loss, variables)
        if use_keras_optimizer:
          sgd.apply_gradients(zip(grads, variables))
        else:
          for var, grad in zip(variables, grads):
            tf.raw_ops.ResourceApplyGradientDescent(var=var.value.handle, alpha=sgd_lr,
                                                    delta=grad, use_locking=True)
        return loss

      x, y = next(iterator)
      return strategy.run(replica_fn, args=(x, y))

    before = [v.numpy().tolist() for v in variables]
    loss = coordinator.schedule(step, args=(fixed_iterator,))
    coordinator.join()
    return {"kernel_before": before[0], "bias_before": before[1],
            "kernel_after": variables[0].numpy().tolist(),
            "bias_after": variables[1].numpy().tolist(), "loss": float(loss.fetch()),
            "iterations": int(sgd.iterations.numpy()) if use_keras_optimizer else None}

  report["one_step"] = {"x": x_fixed.tolist(), "y": y_fixed.tolist(), "lr": sgd_lr,
                        "raw": one_sgd_step(False), "keras": one_sgd_step(True)}
  report["seconds"] = time.time() - start
  report["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__}

  print(json.dumps(report))
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)  # skip interpreter teardown: in-process servers and coordinator threads end here


if __name__ == "__main__":
  main()
