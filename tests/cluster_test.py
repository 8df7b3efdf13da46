"""k4p1.cluster: TF_CONFIG checks that run before TensorFlow loads."""

import json
import os
from unittest import mock

import tensorflow as tf

from k4p1 import cluster
from k4p1.errors import ConfigError

PS_CLUSTER = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"],
              "ps": ["127.0.0.1:4"]}


def _env(cluster_spec, task):
  return mock.patch.dict(os.environ, {"TF_CONFIG": json.dumps(
      {"cluster": cluster_spec, "task": task})})


class ClusterTest(tf.test.TestCase):

  def test_task_and_checks(self):
    with mock.patch.dict(os.environ, {}, clear=False):
      os.environ.pop("TF_CONFIG", None)
      self.assertIsNone(cluster.task())
      cluster.check("default")  # needs no cluster
      with self.assertRaisesRegex(ConfigError, "needs a cluster with chief, worker, ps tasks.*"
                                  "missing: chief, worker, ps.*k4p1.launch --workers=2 --ps=1"):
        cluster.check("parameter_server")
    with _env(PS_CLUSTER, {"type": "worker", "index": 1}):
      self.assertEqual(cluster.task(), ("worker", 1))
      self.assertEqual(cluster.num_workers(), 2)
      cluster.check("parameter_server")
      cluster.check_workers("parameter_server", (("a", 1), ("b", 1)))
      with self.assertRaisesRegex(ConfigError, "assigns 3 workers.*but the cluster has 2"):
        cluster.check_workers("parameter_server", (("a", 2), ("b", 1)))
    with _env({"worker": ["127.0.0.1:2"]}, {"type": "worker", "index": 0}):
      with self.assertRaisesRegex(ConfigError, r"missing: chief, ps"):
        cluster.check("parameter_server")
      cluster.check("multi_worker_mirrored")
    with _env(PS_CLUSTER, {"type": "worker", "index": 5}):
      with self.assertRaisesRegex(ConfigError, "is not a task of its cluster"):
        cluster.check("parameter_server")
    with mock.patch.dict(os.environ, {"TF_CONFIG": "{not json"}):
      with self.assertRaisesRegex(ConfigError, "TF_CONFIG is not valid JSON"):
        cluster.task()


if __name__ == "__main__":
  tf.test.main()
