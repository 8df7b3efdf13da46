"""Workdirs written before the methods moved into k4p1/methods/ still restore, evaluate and
export the same signatures and outputs (tests/fixtures/compat: written by k4p1 at b09ea64).

One small run per method family: SWR (its stage-1 snapshot too), joint multi-task training
with a TAPS task (sampled steps), and two resolutions with a cascade.
"""

import dataclasses
import glob
import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from k4p1 import config as config_lib
from k4p1 import experiment
from k4p1.testing import REPO_ROOT

FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures", "compat")
sys.path.insert(0, FIXTURES)
import make as fixture_lib  # noqa: E402  (the fixture's own input generator)


def _copy(run: str) -> str:
  workdir = os.path.join(tf.compat.v1.test.get_temp_dir(), f"compat_{run}")
  shutil.rmtree(workdir, ignore_errors=True)
  shutil.copytree(os.path.join(FIXTURES, run), workdir)
  return workdir


def _config(workdir: str):
  config = config_lib.from_json(os.path.join(workdir, "config.json"))
  with config.unlocked():
    config.train.progress = False
  return config


class CompatibilityTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters("swr", "joint", "multires")
  def test_old_workdir_evaluates_and_exports_the_same(self, run):
    workdir = _copy(run)
    with open(os.path.join(workdir, "metrics.json")) as f:
      before = {row["task"]: row for row in json.load(f)["tasks"]}
    expected = dict(np.load(os.path.join(workdir, "expected.npz")))
    config = _config(workdir)

    after = {row["task"]: row for row in experiment.run(config, workdir, "eval")["tasks"]}
    self.assertEqual(sorted(after), sorted(before))
    for task, row in after.items():
      self.assertEqual(row["accuracy"], before[task]["accuracy"], task)
      self.assertAllClose(row["eval_loss"], before[task]["eval_loss"], rtol=1e-4, atol=1e-5)
      self.assertEqual(row["steps_done"], before[task]["steps_done"], task)
      self.assertEqual(row["patch_file_bytes"], before[task]["patch_file_bytes"], task)
      for key in ("taps", "swr"):  # what the methods recorded of the task
        self.assertEqual(key in row, key in before[task], (task, key))
        if key in row:
          self.assertEqual(row[key]["layers"], before[task][key]["layers"])
          self.assertEqual(row[key].get("active", row[key].get("selected")),
                           before[task][key].get("active", before[task][key].get("selected")))

    experiment.run(config, workdir, "export")
    saved_model = os.path.join(workdir, "saved_model")
    with open(os.path.join(saved_model, "assets.extra", "k4p1_tasks.json")) as f:
      index = json.load(f)
    outputs = fixture_lib.signature_outputs(saved_model)
    self.assertEqual(sorted(outputs), sorted(expected))  # the same signatures and outputs
    for key in expected:
      self.assertAllClose(outputs[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    self.assertIn("input_size", index)

  def test_old_patch_files_assemble_onto_the_base(self):
    from k4p1.export import patch_files
    from k4p1.export.saved_model import serving_function
    workdir = _copy("joint")
    spec = experiment.resolve(_config(workdir))
    models = patch_files.assemble(spec.backbone, sorted(glob.glob(os.path.join(
        workdir, "patches", "*.k4p1.npz"))), os.path.join(workdir, "base.weights.h5"))
    expected = dict(np.load(os.path.join(workdir, "expected.npz")))
    x = fixture_lib.inputs_for({"input": {"modality": "audio"}})
    for task in ("low", "high"):
      got = serving_function(models, task)(tf.constant(x["waveforms"]))["probabilities"]
      self.assertAllClose(got, expected[f"{task}/probabilities"], rtol=1e-4, atol=1e-5)

  def test_old_swr_stage1_snapshot_starts_a_run_at_another_cost(self):
    from k4p1.train.trainer import Trainer
    fixture = _copy("swr")
    config = _config(fixture)
    with config.unlocked():
      config.tasks.kws.patch = config.tasks.kws.patch.replace("c=0.3", "c=0.5")
      config.train.init_from = os.path.join(fixture, "swr_stage1", "kws")
    spec = experiment.resolve(config)
    trainer = Trainer(spec, os.path.join(fixture, "new_run"))
    self.assertTrue(trainer.restore())
    done = {p.name: trainer.phase_done(p) for p in trainer.phases}
    self.assertEqual(done, {"kws.supernet": True, "kws.policy": True, "kws.reparam": False})
    other = dataclasses.replace(spec, train=dataclasses.replace(spec.train, seed=5))
    with self.assertRaisesRegex(config_lib.ConfigError, "other settings: train.seed"):
      Trainer(other, os.path.join(fixture, "other_run")).restore()


if __name__ == "__main__":
  tf.test.main()
