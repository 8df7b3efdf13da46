"""Spike: asynchronous parameter-server training of Keras 3 layers with TF's coordinator.

tests/scripts/parameter_server_spike.py runs an in-process cluster (1 chief as coordinator,
2 workers, 1 ps) under `tf.distribute.experimental.ParameterServerStrategy` +
`tf.distribute.coordinator.ClusterCoordinator`, schedules custom tf.function steps and prints a
JSON report that these tests check. It runs in a subprocess inside a private network namespace
(`unshare --user --map-root-user --net`): a `tf.distribute.Server` listens on `[::]:port`, every
interface, whatever host the ClusterSpec names, and in-process servers cannot be shut down, so
ending the subprocess is the teardown. Findings: docs/parameter_server_notes.md.
"""

import json
import os
import signal
import subprocess
import sys
import unittest

import numpy as np
import tensorflow as tf

from k4p1.launch import PRIVATE_NETWORK, private_network_available

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts",
                      "parameter_server_spike.py")
TIMEOUT_S = 120  # the script takes ~6 s; its own watchdog ends it after 90 s
def _run_spike():
  proc = subprocess.Popen(list(PRIVATE_NETWORK) + [sys.executable, SCRIPT], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  try:
    out, err = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # the session this Popen created: only our process
    out, err = proc.communicate()
    raise AssertionError(f"spike timed out after {TIMEOUT_S} s:\n{err[-3000:]}")
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  if proc.returncode != 0:
    raise AssertionError(f"spike exited with {proc.returncode}:\n{err[-3000:]}")
  return json.loads(out.strip().splitlines()[-1])


def _numpy_sgd_step(x, y, kernel, bias, lr):
  """One SGD step on mean((x @ kernel + bias - y) ** 2), in float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
  d_pred = 2.0 * (x @ kernel + bias - y) / y.size
  return kernel - lr * x.T @ d_pred, bias - lr * d_pred.sum(axis=0)


class ParameterServerSpikeTest(tf.test.TestCase):
  """One ~6 s subprocess run shared by all cases."""

  report = None

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if not private_network_available(with_ip=False):
      raise unittest.SkipTest("needs `unshare --user --net` (a private network namespace): "
                              "tf.distribute.Server would otherwise listen on all interfaces")
    cls.report = _run_spike()

  def test_cluster_is_local(self):
    cluster = self.report["cluster"]
    self.assertEqual({job: len(tasks) for job, tasks in cluster.items()},
                     {"chief": 1, "worker": 2, "ps": 1})
    for tasks in cluster.values():
      for address in tasks:
        self.assertTrue(address.startswith("127.0.0.1:"), address)

  def test_keras_variables_live_on_the_parameter_server(self):
    placement = self.report["placement"]
    self.assertEqual(len(placement), 8)  # conv 2, BN 4 (incl. moving stats), dense 2
    for v in placement:
      self.assertEqual(v["device"], "/job:ps/replica:0/task:0/device:CPU:0", v["path"])
      self.assertEqual((v["keras_class"], v["tf_class"]), ("Variable", "CachingVariable"))
    for v in self.report["keras_rmsprop"]["optimizer_variables"]:
      self.assertEqual(v["device"], "/job:ps/replica:0/task:0/device:CPU:0", v["path"])

  def test_raw_op_training_counts_every_step_and_updates_only_the_explicit_list(self):
    run = self.report["raw_rmsprop"]
    self.assertEqual(run["steps_done"], run["scheduled"])  # own tf.Variable counter is exact
    self.assertTrue(run["losses_finite"])
    self.assertTrue(run["slots_changed"])
    changed = run["changed"]
    for path in ("conv/kernel", "conv/bias", "dense/kernel", "dense/bias"):
      self.assertTrue(changed["sequential/" + path], path)
    # BN gamma/beta are not in the explicit list; BN moving statistics are updated by the Keras
    # layer itself (training=True) from the workers.
    self.assertFalse(changed["sequential/bn/gamma"])
    self.assertFalse(changed["sequential/bn/beta"])
    self.assertTrue(changed["sequential/bn/moving_mean"])
    self.assertTrue(changed["sequential/bn/moving_variance"])

  def test_keras_optimizer_trains_but_its_iterations_are_not_exact(self):
    run = self.report["keras_rmsprop"]
    self.assertEqual(run["steps_done"], run["scheduled"])
    # Concurrent workers race on keras.Variable.assign_add (read, add, write): increments get
    # lost, usually (not always) some. Never more than the steps run.
    self.assertBetween(run["optimizer_iterations"], 1, run["scheduled"])
    changed = {path.split("/", 1)[1]: moved for path, moved in run["changed"].items()}
    self.assertTrue(changed["conv/kernel"] and changed["dense/kernel"])
    self.assertFalse(changed["bn/gamma"] or changed["bn/beta"])

  def test_tf_variable_assign_add_is_exact_under_concurrent_workers(self):
    counters = self.report["counters"]
    self.assertEqual(counters["tf_variable_assign_add"], counters["scheduled"])
    self.assertEqual(counters["keras_variable_value_assign_add"], counters["scheduled"])
    self.assertLessEqual(counters["keras_variable_assign_add"], counters["scheduled"])

  def test_one_scheduled_sgd_step_equals_numpy(self):
    one = self.report["one_step"]
    for name in ("raw", "keras"):
      run = one[name]
      kernel, bias = _numpy_sgd_step(one["x"], one["y"], run["kernel_before"],
                                     run["bias_before"], one["lr"])
      self.assertAllClose(run["kernel_after"], kernel, rtol=1e-5, atol=1e-6, msg=name)
      self.assertAllClose(run["bias_after"], bias, rtol=1e-5, atol=1e-6, msg=name)
      self.assertGreater(np.abs(np.subtract(run["kernel_after"], run["kernel_before"])).max(),
                         1e-3)
    self.assertEqual(one["keras"]["iterations"], 1)  # a single step cannot race


if __name__ == "__main__":
  tf.test.main()
