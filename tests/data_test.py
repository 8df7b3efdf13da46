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
    self.assertAllEqual(np.sort(label), np.arange(8))  # every example, in a shuffled order
    self.assertEqual(d.class_names, data.sources.FASHION_MNIST_CLASSES)

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


  def test_image_folder_numeric_class_order_and_shuffled_splits(self):
    for split in ("train", "test"):
      for k in range(12):
        os.makedirs(os.path.join(self.dir, split, str(k)))
        for j in range(2):
          _write_png(os.path.join(self.dir, split, str(k), f"{j}.png"), 20 * k)
    d = data.load_task_data(DatasetSpec(source="image_folder", path=self.dir), 16)
    self.assertEqual(d.class_names, tuple(str(i) for i in range(12)))  # not 0, 1, 10, 11, 2
    images, labels = next(iter(d.eval_batches(24)))
    labels = labels.numpy()
    # Folder `k` (pixel value 20 * k) is label k: numeric order end to end.
    for image, label in zip(images.numpy(), labels):
      self.assertAllClose(image.mean(), 20.0 * label, atol=0.5)
    self.assertNotAllEqual(labels, np.sort(labels))  # shuffled (seed 0), not class by class
    again = next(iter(data.load_task_data(
        DatasetSpec(source="image_folder", path=self.dir), 16).eval_batches(24)))[1]
    self.assertAllEqual(labels, again)  # the same order every time

  def test_stratified_subset(self):
    labels = np.repeat(np.arange(4), [100, 50, 10, 3])
    keep = data.sources.stratified_subset(labels, 20, seed=0)
    self.assertLen(set(keep.tolist()), 20)
    counts = np.bincount(labels[keep], minlength=4)
    # Round robin: the 3-example class is exhausted; the other 17 split as evenly as they can.
    self.assertEqual(counts[3], 3)
    self.assertAllEqual(sorted(counts[:3]), [5, 6, 6])
    self.assertAllEqual(keep, data.sources.stratified_subset(labels, 20, seed=0))
    self.assertAllEqual(np.sort(data.sources.stratified_subset(labels, -1)), np.arange(163))

  def test_flip_only_when_asked(self):
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[:, :, :4] = 255  # left half white: a flip moves it to the right
    path = os.path.join(self.dir, "a.npz")
    np.savez(path, train_images=np.repeat(image, 16, 0), train_labels=np.arange(16) % 2,
             test_images=image, test_labels=np.zeros(1, np.int64))
    for flip, expect_flipped in ((False, False), (True, True)):
      d = data.load_task_data(DatasetSpec(source="arrays", path=path, augment="none",
                                          flip=flip), 8)
      images = next(iter(d.train_batches(16, seed=0)))[0].numpy()
      flipped = images[:, :, :4].mean(axis=(1, 2, 3)) < 128
      self.assertEqual(bool(flipped.any()), expect_flipped)

  def test_eval_crop_is_independent_of_augmentation(self):
    image = np.zeros((1, 16, 16, 3), np.uint8)
    image[:, 0, :] = 255  # a white top row: a central crop removes it
    path = os.path.join(self.dir, "a.npz")
    np.savez(path, train_images=np.repeat(image, 2, 0), train_labels=np.array([0, 1]),
             test_images=image, test_labels=np.zeros(1, np.int64))
    for augment in ("none", "inception_crop"):
      for crop, top in ((1.0, 255.0), (0.875, 0.0)):
        d = data.load_task_data(DatasetSpec(source="arrays", path=path, augment=augment,
                                            eval_crop=crop), 16)
        images = next(iter(d.eval_batches(1)))[0].numpy()
        self.assertAllClose(images[0, 0].mean(), top, atol=1.0, msg=(augment, crop))


class ArraySourceTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, True)
    rng = np.random.RandomState(0)
    self.arrays = dict(
        train_images=rng.randint(0, 256, (30, 12, 12, 3)).astype(np.uint8),
        train_labels=np.arange(30) % 3,
        test_images=rng.randint(0, 256, (9, 12, 12)).astype(np.uint8),  # grayscale, no channel
        test_labels=np.arange(9) % 3)

  def _write(self, **overrides):
    path = os.path.join(self.dir, "d.npz")
    np.savez(path, **{**self.arrays, **overrides})
    return path

  def test_round_trip_npz_and_npy_folder(self):
    path = self._write(class_names=np.array(["cat", "dog", "emu"]))
    folder = os.path.join(self.dir, "npy")
    os.makedirs(folder)
    for key, value in self.arrays.items():
      np.save(os.path.join(folder, f"{key}.npy"), value)
    for source_path, names in ((path, ("cat", "dog", "emu")), (folder, ("0", "1", "2"))):
      d = data.load_task_data(DatasetSpec(source="arrays", path=source_path, augment="none"), 12)
      self.assertEqual((d.num_classes, d.train.size, d.eval.size), (3, 30, 9))
      self.assertEqual(d.class_names, names)
      got = sorted((bytes(i.tobytes()), int(l)) for i, l in d.train.dataset.as_numpy_iterator())
      want = sorted((bytes(i.tobytes()), int(l)) for i, l in zip(
          self.arrays["train_images"], self.arrays["train_labels"]))
      self.assertEqual(got, want)  # every pixel and label, shuffled only
      images, _ = next(iter(d.eval_batches(9)))
      self.assertEqual(images.shape, (9, 12, 12, 3))

  def test_bad_inputs(self):
    cases = [
        (dict(train_labels=np.arange(29) % 3), "30 images but 29 labels"),
        (dict(test_labels=np.array([0, 1, 2, 0, 1, 2, 0, 1, -1])), "negative labels"),
        (dict(train_images=self.arrays["train_images"].astype(np.float32)),
         "must be uint8.*float32.*astype"),
        (dict(train_images=np.zeros((30, 12), np.uint8)), "received shape \\(30, 12\\)"),
        (dict(train_labels=np.zeros(30, np.float32)), "1-D integer array"),
        (dict(class_names=np.array(["a", "b"])), "names 2 classes but its labels go up to 2"),
    ]
    for overrides, message in cases:
      with self.assertRaisesRegex(data.DataError, message):
        data.load_task_data(DatasetSpec(source="arrays", path=self._write(**overrides)), 12)
    with self.assertRaisesRegex(data.DataError, "no split 'valid'.*Found"):
      data.load_task_data(DatasetSpec(source="arrays", path=self._write(), eval_split="valid"),
                          12)
    bad = os.path.join(self.dir, "x.npz")
    with open(bad, "w") as f:
      f.write("not numpy")
    with self.assertRaisesRegex(data.DataError, "cannot read.*np.savez"):
      data.load_task_data(DatasetSpec(source="arrays", path=bad), 12)


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
