"""Input pipelines: every source, class filtering, preprocessing, and clear errors."""

import gzip
import os
import shutil
import tarfile
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from k4p1 import data
from k4p1.config import DatasetSpec

SHARED_DATA = os.environ.get("K4P1_DATA_DIR", "")


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _write_png(path, value):
  image = np.full((10, 12, 3), value, np.uint8)
  tf.io.write_file(path, tf.io.encode_png(image))


def _image_folder(root, splits=("train", "test"), classes=("cat", "dog", "emu"), per_class=3):
  for split in splits:
    for i, c in enumerate(classes):
      os.makedirs(os.path.join(root, split, c))
      for j in range(per_class):
        _write_png(os.path.join(root, split, c, f"{j}.png"), 40 * i + j)


class SourcesTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, True)

  def test_digits_split_and_class_filter(self):
    d = data.load_task_data(DatasetSpec(source="digits", classes=(5, 6, 7, 8, 9)), 32)
    self.assertEqual(d.num_classes, 5)
    from sklearn.datasets import load_digits
    self.assertEqual(d.train.size + d.eval.size, int((load_digits().target >= 5).sum()))
    labels = np.concatenate([y.numpy() for _, y in d.train.dataset.batch(1000)])
    self.assertEqual(set(labels.tolist()), {0, 1, 2, 3, 4})
    images, labels = next(iter(d.train_batches(16, seed=0)))
    self.assertEqual(images.shape, (16, 32, 32, 3))
    self.assertEqual(images.dtype, tf.float32)
    self.assertBetween(float(tf.reduce_max(images)), 200.0, 255.0)
    self.assertGreaterEqual(float(tf.reduce_min(images)), 0.0)

  def test_fashion_mnist_idx(self):
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
      _write_idx(os.path.join(self.dir, f"{prefix}-images-idx3-ubyte.gz"),
                 rng.randint(0, 256, (n, 28, 28)))
      _write_idx(os.path.join(self.dir, f"{prefix}-labels-idx1-ubyte.gz"), np.arange(n) % 10)
    d = data.load_task_data(DatasetSpec(source="fashion_mnist", path=self.dir,
                                        train_examples=15), 32)
    self.assertEqual((d.train.size, d.eval.size, d.num_classes), (15, 8, 10))
    image, label = next(iter(d.eval_batches(8)))
    self.assertEqual(image.shape, (8, 32, 32, 3))
    self.assertAllEqual(label, np.arange(8))

  def test_image_folder(self):
    _image_folder(self.dir)
    d = data.load_task_data(DatasetSpec(source="image_folder", path=self.dir, classes=(2, 0),
                                        augment="inception_crop"), 24)
    self.assertEqual((d.num_classes, d.train.size, d.eval.size), (2, 6, 6))
    images, labels = next(iter(d.eval_batches(6)))
    self.assertEqual(images.shape, (6, 24, 24, 3))
    # Class 2 ("emu", pixel 80..82) became label 0; class 0 ("cat", 0..2) label 1.
    means = {int(l): float(tf.reduce_mean(i)) for i, l in zip(images, labels)}
    self.assertGreater(means[0], 70.0)
    self.assertLess(means[1], 5.0)
    images, _ = next(iter(d.train_batches(4, seed=1)))
    self.assertEqual(images.shape, (4, 24, 24, 3))

  def test_cifar10_tarball_extracts_once(self):
    src = os.path.join(self.dir, "src")
    _image_folder(src, classes=("airplane", "bird"), per_class=2)
    tarball = os.path.join(self.dir, "c.tar.gz")
    with tarfile.open(tarball, "w:gz") as tar:
      for split in ("train", "test"):
        tar.add(os.path.join(src, split), arcname=split)
    os.environ[data.CACHE_DIR_ENV] = os.path.join(self.dir, "cache")
    self.addCleanup(os.environ.pop, data.CACHE_DIR_ENV)
    d = data.load_task_data(DatasetSpec(source="cifar10_tarball", path=tarball), 32)
    self.assertEqual((d.num_classes, d.train.size), (2, 4))
    self.assertEqual(os.listdir(os.path.join(self.dir, "cache")), ["cifar10_jpeg"])

  def test_missing_split_folder(self):
    _image_folder(self.dir, splits=("train",))
    with self.assertRaisesRegex(data.DataError, "no split folder 'test'"):
      data.load_task_data(DatasetSpec(source="image_folder", path=self.dir), 32)

  def test_missing_local_path(self):
    with self.assertRaisesRegex(data.DataError, "does not exist"):
      data.load_task_data(DatasetSpec(source="fashion_mnist", path="/nonexistent/fm"), 32)

  def test_classes_out_of_range(self):
    with self.assertRaisesRegex(data.DataError, r"classes \[12\] are outside 0..9"):
      data.load_task_data(DatasetSpec(source="digits", classes=(1, 12)), 32)


class TfdsTest(tf.test.TestCase):

  def test_missing_dataset_offline_fails_fast_and_clearly(self):
    # Fast by construction: tfds is asked not to download (no wall-clock bound: machines vary).
    with mock.patch.object(tfds, "load", wraps=tfds.load) as load:
      with self.assertRaisesRegex(data.DataError, "not prepared.*--config.data.download=True"):
        data.load_task_data(DatasetSpec(source="tfds", name="cifar100"), 32,
                            data_dir=tempfile.mkdtemp())
    self.assertTrue(load.call_args_list)
    self.assertEqual({c.kwargs["download"] for c in load.call_args_list}, {False})

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(data.DataError, "no dataset 'cifar1000'"):
      data.load_task_data(DatasetSpec(source="tfds", name="cifar1000"), 32,
                          data_dir=tempfile.mkdtemp())

  def test_mock_data(self):
    with tfds.testing.mock_data(num_examples=12):
      d = data.load_task_data(DatasetSpec(source="tfds", name="cifar100", classes=(),
                                          train_examples=10), 32)
      self.assertEqual((d.num_classes, d.train.size), (100, 10))
      images, labels = next(iter(d.train_batches(4, seed=0)))
      self.assertEqual(images.shape, (4, 32, 32, 3))
    self.assertEqual(data.num_classes_of(DatasetSpec(source="tfds", name="oxford_flowers102")),
                     102)


class SharedDataTest(tf.test.TestCase):
  """The real files in ../shared/data (skipped where K4P1_DATA_DIR is not set)."""

  def setUp(self):
    super().setUp()
    if not SHARED_DATA or not os.path.isdir(SHARED_DATA):
      self.skipTest("K4P1_DATA_DIR is not set to the shared data folder")

  def test_real_fashion_mnist(self):
    d = data.load_task_data(DatasetSpec(source="fashion_mnist"), 32)
    self.assertEqual((d.train.size, d.eval.size, d.num_classes), (60000, 10000, 10))


if __name__ == "__main__":
  tf.test.main()
