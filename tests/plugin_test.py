"""Plug-ins from outside k4p1 (k4p1.plugins): a backbone, a patch kind and a sampler registered
by a module under tests/ (tests/plugins/toy_plugin.py), named by the config field `plugins`,
drive --mode=params and a smoke training with no k4p1 file edited."""

import json
import os
import tempfile

import tensorflow as tf

from k4p1 import config as config_lib
from k4p1.testing import REPO_ROOT, run_binary

PLUGIN = os.path.join("tests", "plugins", "toy_plugin.py")
FLAGS = ("--config=configs/digits.py:smoke", f"--config.plugins={PLUGIN}",
         "--config.backbone.name=toy_cnn",
         "--config.tasks.digits_5_9_scale_bias.patch=toy_bn_bias,last_layer")


class PluginTest(tf.test.TestCase):

  def test_params_with_a_plugin_backbone_and_patch_kind(self):
    workdir = os.path.join(tempfile.mkdtemp(), "params")
    out = run_binary("train.py", *FLAGS, "--mode=params", f"--workdir={workdir}")
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn("toy_cnn", out.stdout)
    with open(os.path.join(workdir, "params.json")) as f:
      rows = {r["task"]: r for r in json.load(f)}
    toy = rows["digits_5_9_scale_bias"]
    # bn1 (8 channels) + bn2 (16): one learned bias per channel, plus the 16x5+5 classifier.
    self.assertEqual(toy["components"]["toy_bn_bias"]["learned"], 8 + 16)
    self.assertEqual(toy["trainable"], 8 + 16 + 16 * 5 + 5)

  def test_smoke_training_with_a_plugin_sampler(self):
    workdir = os.path.join(tempfile.mkdtemp(), "train")
    out = run_binary("train.py", *FLAGS, f"--workdir={workdir}",
                     "--config.multitask.tasks=digits_5_9_last_layer,digits_5_9_scale_bias",
                     "--config.multitask.step=sampled", "--config.multitask.steps=4",
                     "--config.multitask.sampler=toy_smallest_first")
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    with open(os.path.join(workdir, "metrics.json")) as f:
      rows = {r["task"]: r for r in json.load(f)["tasks"]}
    self.assertEqual(rows["digits_5_9_scale_bias"]["joint_steps"], 4)
    self.assertEqual(rows["digits_5_9_last_layer"]["steps_done"] +
                     rows["digits_5_9_scale_bias"]["steps_done"], 4)
    self.assertTrue(os.path.exists(os.path.join(workdir, "patches",
                                                "digits_5_9_scale_bias.k4p1.npz")))

  def test_names_are_checked_against_the_plugin_before_tensorflow(self):
    config = config_lib.load("configs/digits.py:smoke")
    with config.unlocked():
      config.backbone.name = "toy_cn"
      config.plugins = os.path.join(REPO_ROOT, PLUGIN)
    with self.assertRaisesRegex(config_lib.ConfigError, "Did you mean 'toy_cnn'"):
      config_lib.validate(config)
    config.plugins = "tests/plugins/no_such_plugin.py"
    with self.assertRaisesRegex(config_lib.ConfigError, "Plug-in file not found"):
      config_lib.validate(config)


if __name__ == "__main__":
  tf.test.main()
