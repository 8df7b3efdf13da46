"""Trains one patched task under a given strategy and prints its variables' checksum (JSON).

Run by tests/distribute_test.py in a fresh process, because logical CPU devices must be set up
before TensorFlow initialises.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
from k4p1.model import recompute_batch_statistics  # noqa: E402
from k4p1.testing import random_images, tiny_config  # noqa: E402
from k4p1.experiment import resolve  # noqa: E402
from k4p1.train.trainer import Trainer  # noqa: E402


def main(strategy):
  config = tiny_config(patch=sys.argv[2], steps=5)
  config.tasks.patched.statistics = "frozen"
  del config.tasks["base"]
  config.task_order = "patched"
  config.runtime.strategy = strategy
  if strategy == "mirrored":
    config.runtime.devices = "/cpu:0,/cpu:1"
  config.train.bn_recompute_batches = 0
  trainer = Trainer(resolve(config), tempfile.mkdtemp())
  # Give the random base realistic BN statistics, identically for every strategy.
  base = trainer.models.base
  bns = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
  with trainer.strategy.scope():
    recompute_batch_statistics(base, bns, [(random_images(16, seed=i) / 127.5 - 1, None)
                                           for i in range(3)])
  before = [np.array(v.numpy()) for v in trainer.models.task_variables("patched")]
  trainer.train_task("patched")
  after = [np.array(v.numpy()) for v in trainer.models.task_variables("patched")]
  print(json.dumps({
      "replicas": trainer.strategy.num_replicas_in_sync,
      "moved": float(max(np.abs(a - b).max() for a, b in zip(after, before))),
      "values": [a.ravel().tolist() for a in after],
  }))


if __name__ == "__main__":
  main(sys.argv[1])
