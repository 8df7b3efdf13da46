"""Data sources: where a task's labelled images (or audio clips) come from, registered by name.

  tfds             tensorflow-datasets by name; offline it fails at once unless data is prepared
                   (audio too: `speech_commands` gives 16 kHz int16 clips, 12 classes).
  image_folder     ROOT/<split>/<label>/*.jpg|png (ImageFolder layout; class folders named
                   0, 1, ..., 10 sort as numbers).
  arrays           an .npz with <split>_images (uint8) and <split>_labels, optional class_names.
  cifar10_tarball  the CIFAR-10 JPEG tarball (extracted once into $K4P1_CACHE_DIR).
  fashion_mnist    the four Fashion-MNIST IDX .gz files in a folder.
  digits           scikit-learn's bundled 8x8 digits (ships with the install; 75/25 split, seed 0).
  wav_folder, speech_commands_subset: audio, in k4p1/data/audio.py.

Local paths default to files under `$K4P1_DATA_DIR` (e.g. ../shared/data) when `path` is empty.
Local sources shuffle each split once (seed 0); `train_examples` / `eval_examples` subsets are
class-stratified (tfds subsets are the split's first N examples).
A new source is a `DataSource` registered in DATA_SOURCES.

Example:
  data = load_task_data(DatasetSpec(source="digits", classes=(0, 1, 2, 3, 4)), image_size=32)
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import tarfile
import tempfile
from typing import Callable

import numpy as np
import tensorflow as tf

from k4p1.config import DatasetSpec
from k4p1.data.pipeline import Split, TaskData
from k4p1.errors import DataError
from k4p1.registry import Registry

DATA_DIR_ENV = "K4P1_DATA_DIR"
CACHE_DIR_ENV = "K4P1_CACHE_DIR"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")



def _default_path(spec: DatasetSpec, relative: str, what: str) -> str:
  if spec.path:
    path = spec.path
  elif os.environ.get(DATA_DIR_ENV):
    path = os.path.join(os.environ[DATA_DIR_ENV], relative)
  else:
    raise DataError(f"{what}: set the task's dataset.path, or ${DATA_DIR_ENV} to a folder "
                    f"holding {relative}.")
  if not os.path.exists(path):
    raise DataError(f"{what}: {path!r} does not exist. Set dataset.path or ${DATA_DIR_ENV}.")
  return path


def class_order(names) -> list[str]:
  """Class folder names in label order: numerically when every name is a number (0, 1, 2, ...,
  10), else as text."""
  names = list(names)
  if names and all(n.isdigit() for n in names):
    return sorted(names, key=int)
  return sorted(names)


def list_class_folders(folder: str, extensions) -> tuple[list[str], list[str], list[int]]:
  """(class names in label order, files, labels) of FOLDER/<label>/* with `extensions`."""
  classes = class_order(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
  files, labels = [], []
  for i, c in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(folder, c))):
      if f.lower().endswith(extensions):
        files.append(os.path.join(folder, c, f))
        labels.append(i)
  return classes, files, labels


def stratified_subset(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
  """Indices of `limit` examples with every class as equally represented as it can be.

  Classes are taken round-robin (each in a seeded random order) until `limit` are chosen; the
  result is in a seeded random order. limit <= 0 or >= len(labels): every index, shuffled.
  """
  rng = np.random.RandomState(seed)
  labels = np.asarray(labels)
  if limit <= 0 or limit >= len(labels):
    return rng.permutation(len(labels))
  per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
  rank = np.empty(len(labels), np.int64)  # position of each example within its class
  for idx in per_class:
    rank[idx] = np.arange(len(idx))
  order = np.lexsort((rng.permutation(len(labels)), rank))  # all classes' 1st, then 2nd, ...
  return rng.permutation(order[:limit])


def _class_filter(labels: np.ndarray, classes: tuple[int, ...]):
  """Returns (mask, new_labels) keeping `classes`, relabelled to 0..k-1 in the given order."""
  if not classes:
    return np.ones(len(labels), bool), labels.astype(np.int32)
  mapping = {c: i for i, c in enumerate(classes)}
  mask = np.isin(labels, classes)
  return mask, np.array([mapping[int(l)] for l in labels[mask]], np.int32)


def _from_arrays(images, labels, spec: DatasetSpec, limit: int) -> Split:
  mask, labels = _class_filter(np.asarray(labels), spec.classes)
  images = np.asarray(images)[mask]
  keep = stratified_subset(labels, limit)
  images, labels = images[keep], labels[keep]
  return Split(lambda: tf.data.Dataset.from_tensor_slices((images, labels)), len(labels))


def _digits(spec: DatasetSpec):
  from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  order = np.random.RandomState(0).permutation(len(images))
  cut = int(0.75 * len(images))
  tr, te = order[:cut], order[cut:]
  return ((images[tr], digits.target[tr]), (images[te], digits.target[te]),
          [str(i) for i in range(10)])


def _read_idx(path: str) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    data = f.read()
  magic = int.from_bytes(data[0:4], "big")
  ndim = magic & 0xFF
  if magic >> 8 != 0x08:
    raise DataError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x}).")
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(spec: DatasetSpec):
  root = _default_path(spec, "fashion_mnist", "fashion_mnist")
  prefix = {"train": "train", "test": "t10k"}

  def split(name):
    if name not in prefix:
      raise DataError(f"fashion_mnist has splits 'train' and 'test'. Received: {name!r}")
    images = _read_idx(os.path.join(root, f"{prefix[name]}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(root, f"{prefix[name]}-labels-idx1-ubyte.gz"))
    return images[..., None], labels

  return split(spec.train_split), split(spec.eval_split), list(FASHION_MNIST_CLASSES)


FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle_boot")
ARRAY_KEYS = "{split}_images, {split}_labels"


def _array_file(spec: DatasetSpec):
  """An .npz with `<split>_images` (uint8 [n, h, w] or [n, h, w, 1|3]) and `<split>_labels`
  (integers 0..k-1) per split, plus optional `class_names`; or a folder of
  `<split>_images.npy` / `<split>_labels.npy` (+ optional `class_names.txt`, one per line)."""
  path = _default_path(spec, "", "arrays")
  if os.path.isdir(path):
    def get(key):
      file = os.path.join(path, f"{key}.npy")
      return np.load(file, allow_pickle=False) if os.path.exists(file) else None
    names_file = os.path.join(path, "class_names.txt")
    names = None
    if os.path.exists(names_file):
      with open(names_file) as f:
        names = [line.strip() for line in f if line.strip()]
    available = sorted(f[:-4] for f in os.listdir(path) if f.endswith(".npy"))
  else:
    try:
      archive = np.load(path, allow_pickle=False)
    except Exception as e:
      raise DataError(f"arrays: cannot read {path!r} as an .npz file ({e}). Write it with "
                      f"np.savez(path, train_images=..., train_labels=..., test_images=..., "
                      f"test_labels=..., class_names=[...]).") from e
    available = sorted(archive.files)
    get = lambda key: archive[key] if key in archive.files else None  # noqa: E731
    names = [str(n) for n in archive["class_names"]] if "class_names" in archive.files else None

  def split(name):
    images, labels = get(f"{name}_images"), get(f"{name}_labels")
    if images is None or labels is None:
      raise DataError(f"arrays: {path!r} has no split {name!r}: expected {name}_images and "
                      f"{name}_labels. Found: {available}.")
    where = f"arrays: {path!r} split {name!r}"
    if images.dtype != np.uint8:
      raise DataError(f"{where}: images must be uint8 pixels 0..255; received {images.dtype}. "
                      f"Convert floats in [0, 1] with (x * 255).round().astype(np.uint8).")
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise DataError(f"{where}: images must be [n, height, width] or [n, height, width, 1|3]; "
                      f"received shape {images.shape}.")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
      raise DataError(f"{where}: labels must be a 1-D integer array; received {labels.dtype} "
                      f"with shape {labels.shape}.")
    if len(labels) != len(images):
      raise DataError(f"{where}: {len(images)} images but {len(labels)} labels.")
    return images, labels

  train, test = split(spec.train_split), split(spec.eval_split)
  k = int(max(train[1].max(initial=0), test[1].max(initial=0))) + 1
  if names is not None and len(names) < k:
    raise DataError(f"arrays: {path!r} names {len(names)} classes but its labels go up to "
                    f"{k - 1}.")
  names = names or [str(i) for i in range(k)]
  for split_name, (_, labels) in ((spec.train_split, train), (spec.eval_split, test)):
    if labels.size and labels.min() < 0:
      raise DataError(f"arrays: {path!r} split {split_name!r} has negative labels "
                      f"(min {labels.min()}); labels must be 0..{len(names) - 1}.")
  return train, test, names


def _list_image_folder(root: str, split: str):
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise DataError(f"Image folder {root!r} has no split folder {split!r} "
                    f"(expected {root}/{split}/<label>/*.jpg). Found: {sorted(os.listdir(root))}")
  classes, files, labels = list_class_folders(split_dir, IMAGE_EXTENSIONS)
  if not files:
    raise DataError(f"No images under {split_dir}/<label>/ (extensions {IMAGE_EXTENSIONS}).")
  return classes, np.array(files), np.array(labels)


def _image_folder_split(root, split, spec, limit, classes_expected=None) -> tuple[Split, list]:
  classes, files, labels = _list_image_folder(root, split)
  if classes_expected is not None and classes != classes_expected:
    raise DataError(f"{root}: split {split!r} has classes {classes}, but the training split has "
                    f"{classes_expected}.")
  mask, labels = _class_filter(labels, spec.classes)
  files = files[mask]
  # Listed class by class: shuffle (seed 0) so that a shuffle buffer, a calibration set or a
  # subset never sees one class at a time; a subset is class-stratified.
  order = stratified_subset(labels, limit)
  files, labels = files[order], labels[order]

  def decode(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return image, label

  def make():
    return tf.data.Dataset.from_tensor_slices((files, labels)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE)

  return Split(make, len(labels)), classes


def _cache_dir() -> str:
  return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "k4p1")


def extract_tarball(tarball: str, name: str) -> str:
  """Extracts `tarball` once into the cache (atomically: temp folder, then rename)."""
  target = os.path.join(_cache_dir(), name)
  if os.path.isdir(target):
    return target
  os.makedirs(_cache_dir(), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=_cache_dir())
  try:
    with tarfile.open(tarball) as tar:
      tar.extractall(tmp, filter="data")
    os.replace(tmp, target)
  except FileExistsError:
    shutil.rmtree(tmp, ignore_errors=True)   # another process won the race
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return target


def _tfds(spec: DatasetSpec, data_dir: str, download: bool):
  import tensorflow_datasets as tfds

  def load(split):
    try:
      return tfds.load(spec.name, split=split, data_dir=data_dir or None, download=download,
                       as_supervised=True, with_info=True)
    except Exception as e:  # tfds raises AssertionError / DatasetNotFoundError offline
      known = tfds.list_builders()
      if spec.name not in known:
        raise DataError(f"tensorflow-datasets has no dataset {spec.name!r}.") from e
      where = data_dir or "~/tensorflow_datasets"
      raise DataError(
          f"tfds dataset {spec.name!r} (split {split!r}) is not prepared under {where} "
          f"({type(e).__name__}: {str(e).strip().splitlines()[0]}). On a machine with "
          f"internet, run with --config.data.download=True (or `tfds build {spec.name}`), then "
          f"copy the data_dir here; or use a local source (image_folder, arrays, "
          f"cifar10_tarball, fashion_mnist, digits).") from e

  _, info = load(spec.train_split)  # fails here, clearly, when the data is not prepared
  load(spec.eval_split)
  label = info.features["label"] if "label" in info.features else None
  names = list(label.names) if label is not None else None
  return (lambda: load(spec.train_split)[0]), (lambda: load(spec.eval_split)[0]), info, names


def _tfds_split(load, split_name, info, spec: DatasetSpec, limit: int) -> Split:
  """A Split of a tfds split; `load()` returns its (image, label) dataset."""
  def make():
    ds = load()
    if spec.classes:
      table = np.full(max(spec.classes) + 1, -1, np.int32)
      for i, c in enumerate(spec.classes):
        table[c] = i
      table = tf.constant(table)
      ds = ds.filter(lambda x, y: tf.reduce_any(tf.equal(tf.cast(y, tf.int32), spec.classes)))
      ds = ds.map(lambda x, y: (x, tf.gather(table, tf.cast(y, tf.int32))))
    else:
      ds = ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))
    return ds.take(limit) if limit > 0 else ds

  rate = 0
  if "audio" in info.features and hasattr(info.features["audio"], "sample_rate"):
    rate = int(info.features["audio"].sample_rate or 0)
  size = None
  if not spec.classes:
    try:
      size = int(info.splits[split_name].num_examples)
    except Exception:
      size = None
  if size is None or size == 0:
    size = int(make().reduce(0, lambda n, _: n + 1))
  elif limit > 0:
    size = min(size, limit)
  return Split(make, size, sample_rate=rate)


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A registered source of labelled images.

  Attributes:
    read: (spec, data_dir, download) -> (train Split, eval Split, class names before
      `spec.classes` filtering, in label order).
    num_classes: (spec, data_dir) -> class count, without reading examples (--mode=params).
    description: one line for docs and errors.
  """
  read: Callable
  num_classes: Callable
  description: str = ""


DATA_SOURCES = Registry("data source", field="tasks.<task>.dataset.source")


def _arrays_source(loader):
  def read(spec, data_dir, download):
    (xtr, ytr), (xte, yte), names = loader(spec)
    return (_from_arrays(xtr, ytr, spec, spec.train_examples),
            _from_arrays(xte, yte, spec, spec.eval_examples), names)
  return read


def _folder_source(root_of):
  def read(spec, data_dir, download):
    root = root_of(spec)
    train, classes = _image_folder_split(root, spec.train_split, spec, spec.train_examples)
    test, _ = _image_folder_split(root, spec.eval_split, spec, spec.eval_examples, classes)
    return train, test, classes
  return read


def _cifar10_root(spec):
  tarball = _default_path(spec, os.path.join("cifar10", "cifar10_jpeg.tar.gz"), "cifar10_tarball")
  return extract_tarball(tarball, "cifar10_jpeg")


def _image_folder_root(spec):
  return _default_path(spec, "", "image_folder")


def _read_tfds(spec, data_dir, download):
  tr, te, info, n = _tfds(spec, data_dir, download)
  if n is None:
    raise DataError(f"tfds dataset {spec.name!r} has no 'label' feature; k4p1 trains classifiers.")
  return (_tfds_split(tr, spec.train_split, info, spec, spec.train_examples),
          _tfds_split(te, spec.eval_split, info, spec, spec.eval_examples), n)


def _tfds_num_classes(spec, data_dir):
  import tensorflow_datasets as tfds
  try:
    info = tfds.builder(spec.name, data_dir=data_dir or None).info
    return int(info.features["label"].num_classes)
  except Exception as e:
    raise DataError(f"Cannot tell how many classes tfds dataset {spec.name!r} has: {e}") from e


def _ten(spec, data_dir):
  return 10


DATA_SOURCES.register("tfds", DataSource(
    _read_tfds, _tfds_num_classes, "tensorflow-datasets by name (offline: prepared data only)"))
DATA_SOURCES.register("image_folder", DataSource(
    _folder_source(_image_folder_root),
    lambda spec, data_dir: len(_list_image_folder(_image_folder_root(spec), spec.train_split)[0]),
    "ROOT/<split>/<label>/*.jpg|png"))
DATA_SOURCES.register("cifar10_tarball", DataSource(
    _folder_source(_cifar10_root), _ten, "the CIFAR-10 JPEG tarball"))
DATA_SOURCES.register("fashion_mnist", DataSource(
    _arrays_source(_fashion_mnist), _ten, "the four Fashion-MNIST IDX .gz files"))
DATA_SOURCES.register("arrays", DataSource(
    _arrays_source(_array_file), lambda spec, data_dir: len(_array_file(spec)[2]),
    "an .npz (or folder of .npy) with <split>_images, <split>_labels, optional class_names"))
DATA_SOURCES.register("digits", DataSource(
    _arrays_source(_digits), _ten, "scikit-learn's bundled 8x8 digits (ships with the install)"))


def num_classes_of(spec: DatasetSpec, data_dir: str = "") -> int:
  """The task's class count without reading examples (for --mode=params)."""
  if spec.classes:
    return len(spec.classes)
  return DATA_SOURCES.lookup(spec.source).num_classes(spec, data_dir)


def _check_modality(train: Split, spec: DatasetSpec, input_spec) -> None:
  """A clear error when a dataset's examples do not fit the model (images for an audio model,
  clips at another sample rate)."""
  where = f"{spec.source}:{spec.name or spec.path or spec.source}"
  rank = train.dataset.element_spec[0].shape.rank
  if input_spec.modality == "audio":
    if rank != 1:
      raise DataError(f"{where} holds images (examples of rank {rank}), but the backbone is an "
                      f"audio model taking waveforms: use an audio source (wav_folder, "
                      f"speech_commands_subset, tfds speech_commands) or an image backbone.")
    if train.sample_rate and train.sample_rate != input_spec.sample_rate:
      raise DataError(f"{where} is sampled at {train.sample_rate} Hz, but the model takes "
                      f"{input_spec.sample_rate} Hz audio (backbone.audio.sample_rate). "
                      f"Resample the WAVs (`sox IN.wav -r {input_spec.sample_rate} OUT.wav`) or "
                      f"set backbone.audio.sample_rate={train.sample_rate}.")
  elif rank == 1:
    raise DataError(f"{where} holds audio clips, but the backbone takes images: use an audio "
                    f"backbone (backbone.name=bc_resnet or res15).")


def load_task_data(spec: DatasetSpec, image_size, data_dir: str = "",
                   download: bool = False, cache: bool = True,
                   shuffle_buffer: int = 2048) -> TaskData:
  """Reads a task's train and eval splits (see module docstring).

  Args:
    image_size: the model's square image size, or its k4p1.frontends.InputSpec (audio models
      pass theirs: clips are fitted to its length and checked against its sample rate).

  Raises:
    ConfigError: an unknown source.
    DataError: the data is missing or malformed; the message says how to provide it.
  """
  from k4p1.frontends import InputSpec
  input_spec = image_size if isinstance(image_size, InputSpec) else InputSpec.image(image_size)
  train, test, names = DATA_SOURCES.lookup(spec.source).read(spec, data_dir, download)
  names = [str(n) for n in names]
  if spec.classes:
    bad = [c for c in spec.classes if not 0 <= c < len(names)]
    if bad:
      raise DataError(f"dataset.classes {bad} are outside 0..{len(names) - 1}.")
    names = [names[c] for c in spec.classes]
  if train.size == 0:
    raise DataError(f"The training split of {spec.source}:{spec.name or spec.path} is empty "
                    f"after filtering (classes={spec.classes}).")
  _check_modality(train, spec, input_spec)
  noise = None
  if input_spec.modality == "audio" and spec.augment == "kws":
    from k4p1.data.audio import noise_bank
    noise = noise_bank(spec, input_spec.size, input_spec.sample_rate)
  return TaskData(spec, train, test, len(names), input_spec.size, cache, shuffle_buffer,
                  class_names=tuple(names), input_spec=input_spec, noise=noise)


from k4p1.data import audio  # noqa: E402,F401  (registers the audio sources)
