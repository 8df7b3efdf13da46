"""train.py end to end: tfds mock data, the embedded default, resume, modes, and bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.python.saved_model import loader_impl

from k4p1 import experiment
from k4p1.data import DataError
from k4p1.testing import REPO_ROOT, run_binary, tiny_config

TRAIN = os.path.join(REPO_ROOT, "train.py")
DIGITS = os.path.join(REPO_ROOT, "configs", "digits.py")


def _run(args, timeout=600):
  return run_binary("train.py", *args, timeout=timeout)


def _signatures(path):
  return set(loader_impl.parse_saved_model(path).meta_graphs[0].signature_def)


class InProcessTest(tf.test.TestCase):

  @pytest.mark.large  # ~30 s; the tfds source's offline errors are tested in the fast tier
  def test_tiny_config_on_tfds_mock_data(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, True)
    config = tiny_config(source="tfds", name="cifar100", steps=3, classes=("", ""))
    with tfds.testing.mock_data(num_examples=40):
      result = experiment.run(config, workdir, "train")
    rows = {r["task"]: r for r in result["tasks"]}
    self.assertEqual(set(rows), {"base", "patched"})
    for row in rows.values():
      self.assertEqual(row["steps_done"], 3)
      self.assertBetween(row["accuracy"], 0.0, 1.0)
      self.assertEqual(row["num_classes"], 100)
      self.assertTrue(os.path.exists(os.path.join(workdir, "patches", f"{row['task']}.k4p1.npz")))
    self.assertEqual(rows["patched"]["components"]["scale_bias"]["learned"],
                     rows["patched"]["components"]["scale_bias"]["fixed"])
    with open(os.path.join(workdir, "metrics.json")) as f:
      self.assertEqual(json.load(f)["tasks"][1]["task"], "patched")
    self.assertEqual(_signatures(os.path.join(workdir, "saved_model")),
                     {"base", "patched", "serving_default", "__saved_model_init_op"})
    self.assertTrue(os.listdir(os.path.join(workdir, "tensorboard", "patched")))

  def test_tfds_is_not_downloaded_unless_data_download_is_set(self):
    """What train.py does with a tfds dataset it does not have: tfds.load(download=False)."""
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, True)
    config = tiny_config(source="tfds", name="cifar100", steps=1, classes=("", ""))
    config.data.data_dir = workdir
    self.assertFalse(config.data.download)  # the default
    not_found = AssertionError("Dataset cifar100: could not find data in the data_dir")
    with mock.patch.object(tfds, "load", side_effect=not_found) as load:
      with self.assertRaisesRegex(DataError, "not prepared.*--config.data.download=True"):
        experiment.run(config, os.path.join(workdir, "run"), "train")
    self.assertTrue(load.call_args_list)
    self.assertIs(load.call_args_list[0].kwargs["download"], False)
    self.assertEqual({c.kwargs["download"] for c in load.call_args_list}, {False})
    config.data.download = True  # the switch reaches tfds.load
    with mock.patch.object(tfds, "load", side_effect=not_found) as load:
      with self.assertRaises(DataError):
        experiment.run(config, os.path.join(workdir, "run2"), "train")
    self.assertIs(load.call_args_list[0].kwargs["download"], True)


class BinaryTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = os.path.join(tempfile.mkdtemp(), "run")
    self.addCleanup(shutil.rmtree, os.path.dirname(self.workdir), True)

  def test_embedded_default_smoke_then_every_mode(self):
    out = _run([f"--config={DIGITS}:smoke", f"--workdir={self.workdir}"])
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn("digits_5_9_scale_bias", out.stdout)
    self.assertIn("accuracy", out.stdout)
    self.assertIn("signatures serving_default (= digits_0_4), digits_0_4, digits_5_9_scale_bias, "
                  "mixed (digits_0_4, digits_5_9_scale_bias)", out.stdout)
    self.assertEqual(_signatures(os.path.join(self.workdir, "saved_model")) - {
        "__saved_model_init_op"}, {"digits_0_4", "digits_5_9_scale_bias", "mixed",
                                  "serving_default"})
    with open(os.path.join(self.workdir, "metrics.json")) as f:
      metrics = json.load(f)
    self.assertEqual([r["steps_done"] for r in metrics["tasks"]], [3, 3, 3])

    # Again on the finished workdir: says so at once, retrains nothing, restores cleanly.
    out = _run([f"--config={DIGITS}:smoke", f"--workdir={self.workdir}", "--verbosity=1"])
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn("is already trained (3 phases complete)", out.stdout)
    self.assertNotIn("unrestored", out.stderr)
    self.assertNotIn("train digits_0_4 [", out.stderr)  # no progress bar: nothing trained

    out = _run([f"--config={DIGITS}:smoke", f"--workdir={self.workdir}", "--mode=eval"])
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    with open(os.path.join(self.workdir, "metrics.json")) as f:
      again = json.load(f)
    self.assertEqual(again["mode"], "eval")
    for a, b in zip(metrics["tasks"], again["tasks"]):
      self.assertAlmostEqual(a["accuracy"], b["accuracy"], places=6)

    shutil.rmtree(os.path.join(self.workdir, "saved_model"))
    out = _run([f"--config={DIGITS}:smoke", f"--workdir={self.workdir}", "--mode=export"])
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn("digits_0_4", _signatures(os.path.join(self.workdir, "saved_model")))

    out = _run([f"--config={DIGITS}", f"--workdir={self.workdir}", "--mode=params"])
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn("scale_bias", out.stdout)
    self.assertIn("trainable: 20,485", out.stdout)  # 14,080 S/B + 6,405 classifier (0.35 @32)

  def _own_data_run(self, data, name):
    transfer = os.path.join(REPO_ROOT, "configs", "transfer.py")
    out = _run([f"--config={transfer}:backbone=mobilenet_v2,data={data},"
                f"patch=scale_bias+last_layer,weights=none,size=32,steps=2,batch=8",
                "--config.backbone.alpha=0.35", "--config.train.bn_recompute_batches=1",
                f"--workdir={self.workdir}"])
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertRegex(out.stdout, rf"\n{name} +scale_bias\+last_layer")  # labelled by the data
    for noise in ("oneDNN", "absl::InitializeLog", "I0000", "cpu_feature_guard"):
      self.assertNotIn(noise, out.stderr)  # TensorFlow's start-up lines are hidden
    self.assertIn("k4p1: Task", out.stderr)  # k4p1's own info lines are not
    with open(os.path.join(self.workdir, "metrics.json")) as f:
      metrics = json.load(f)
    (row,) = metrics["tasks"]
    self.assertEqual(row["task"], name)
    self.assertGreater(metrics["wall_seconds"], 0)
    return row

  @pytest.mark.large  # ~18 s; the image_folder source itself is tested in data_test
  def test_own_image_folder(self):
    root = os.path.join(os.path.dirname(self.workdir), "signs")
    rng = np.random.RandomState(0)
    classes = ("0", "1", "2", "10")
    for split, n in (("train", 6), ("test", 3)):
      for c in classes:
        os.makedirs(os.path.join(root, split, c))
        for j in range(n):
          image = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
          tf.io.write_file(os.path.join(root, split, c, f"{j}.png"), tf.io.encode_png(image))
    row = self._own_data_run(f"image_folder:{root}", "signs")
    self.assertEqual((row["num_classes"], row["train_examples"], row["eval_examples"]),
                     (4, 24, 12))
    self.assertEqual(list(row["per_class_accuracy"]), list(classes))  # numeric order, by name
    self.assertEqual(row["eval_examples_per_class"], {c: 3 for c in classes})
    per_class = list(row["per_class_accuracy"].values())
    self.assertAllClose(row["balanced_accuracy"], np.mean(per_class))
    with open(os.path.join(self.workdir, "saved_model", "assets.extra", "k4p1_tasks.json")) as f:
      self.assertEqual(json.load(f)["signatures"]["signs"]["class_names"], list(classes))

  @pytest.mark.large  # ~30 s: the same as test_own_image_folder from an .npz
  def test_own_npz(self):
    rng = np.random.RandomState(0)
    path = os.path.join(os.path.dirname(self.workdir), "Traffic-Signs.npz")
    np.savez(path, train_images=rng.randint(0, 256, (40, 20, 20, 3)).astype(np.uint8),
             train_labels=np.arange(40) % 3, test_images=rng.randint(0, 256, (9, 20, 20, 3))
             .astype(np.uint8), test_labels=np.array([0, 0, 0, 0, 0, 0, 1, 1, 2]),
             class_names=np.array(["stop", "yield", "speed_30"]))
    row = self._own_data_run(f"arrays:{path}", "traffic_signs")
    self.assertEqual(list(row["per_class_accuracy"]), ["stop", "yield", "speed_30"])
    self.assertEqual(row["eval_examples_per_class"], {"stop": 6, "yield": 2, "speed_30": 1})
    per_class = np.array(list(row["per_class_accuracy"].values()))
    self.assertAllClose(row["accuracy"], (per_class * [6, 2, 1]).sum() / 9)
    self.assertAllClose(row["balanced_accuracy"], per_class.mean())

  @pytest.mark.large  # ~50 s: trains until a checkpoint, kills, trains again
  def test_resume_after_kill(self):
    args = [f"--config={DIGITS}:smoke", f"--workdir={self.workdir}",
            "--config.tasks.digits_0_4.steps=300", "--config.train.checkpoint_every=10",
            "--config.train.bn_recompute_batches=2", "--config.export.enabled=False"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, TRAIN, *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = os.path.join(self.workdir, "checkpoints", "checkpoint")
    deadline = time.time() + 300
    while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
      time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    self.assertTrue(os.path.exists(state), "no checkpoint was written before the deadline")
    out = _run(args)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    resumed = [l for l in out.stdout.splitlines() if l.startswith("Resuming task digits_0_4")]
    self.assertLen(resumed, 1, out.stdout)
    step = int(resumed[0].split("at step ")[1].split("/")[0])
    self.assertBetween(step, 10, 290)
    self.assertEqual(step % 10, 0)
    with open(os.path.join(self.workdir, "metrics.json")) as f:
      self.assertEqual([r["steps_done"] for r in json.load(f)["tasks"]], [300, 3, 3])

  @pytest.mark.large  # ~30 s on the shared data (real CIFAR-10 JPEGs)
  def test_random_weights_config_smoke_on_real_cifar10(self):
    data_dir = os.environ.get("K4P1_DATA_DIR", "")
    if not os.path.exists(os.path.join(data_dir, "cifar10", "cifar10_jpeg.tar.gz")):
      self.skipTest("K4P1_DATA_DIR does not hold cifar10/cifar10_jpeg.tar.gz (the shared data)")
    config = os.path.join(REPO_ROOT, "configs", "random_weights_cifar10.py")
    out = _run([f"--config={config}:smoke", f"--workdir={self.workdir}"])
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    with open(os.path.join(self.workdir, "metrics.json")) as f:
      rows = {r["task"]: r for r in json.load(f)["tasks"]}
    self.assertEqual(list(rows), ["last_layer", "scale_bias_only", "scale_bias_last_layer",
                                  "all_parameters"])
    self.assertEqual(rows["scale_bias_only"]["trainable"], 14_080)  # S/B of MobileNetV2 0.35
    for row in rows.values():
      self.assertEqual((row["num_classes"], row["eval_examples"]), (10, 128))

  def _assert_clean_failure(self, out, pattern):
    self.assertNotEqual(out.returncode, 0)
    self.assertRegex(out.stderr, pattern)
    self.assertNotIn("Traceback", out.stderr)
    self.assertFalse(os.path.exists(self.workdir), "a failed start left a workdir behind")

  def test_bad_input_is_a_clear_error_and_writes_nothing(self):
    base = [f"--config={DIGITS}:smoke", f"--workdir={self.workdir}"]
    out = _run(base + ["--config.optimizer.lrr=0.1"])
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("lrr", out.stderr)
    self.assertFalse(os.path.exists(self.workdir))
    self._assert_clean_failure(_run(base + ["--config.tasks.digits_0_4.patch=sb,last_layer"]),
                               "Unknown patch kind 'sb'")
    self._assert_clean_failure(_run(base + ["--config.backbone.weights=/nonexistent/w.h5"]),
                               "weights file not found")
    # Offline, a tfds dataset that is not prepared fails at once: no download is attempted
    # (download=False is what reaches tfds.load: InProcessTest.test_tfds_is_not_downloaded...).
    out = _run(base + [
        "--config.tasks.digits_0_4.dataset.source=tfds",
        "--config.tasks.digits_0_4.dataset.name=cifar100",
        f"--config.data.data_dir={tempfile.mkdtemp()}"])
    self._assert_clean_failure(out, "not prepared")
    self.assertIn("--config.data.download=True", out.stderr)
    self.assertNotIn("Downloading", out.stderr)
    self._assert_clean_failure(_run(base + ["--mode=eval"]), "No checkpoint")


if __name__ == "__main__":
  tf.test.main()
