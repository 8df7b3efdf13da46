r"""Transfer learning: one backbone, one dataset, one regime (what the task learns).

ARG is big_vision style: an optional regime, then key=value pairs, comma separated. With no
`data`, it is the paper's section 5.2 setup: Oxford Flowers-102 (tfds) on an ImageNet backbone.

Your own data:
  python train.py --config=configs/transfer.py:data=image_folder:/data/signs,patch=scale_bias+last_layer
  python train.py --config=configs/transfer.py:data=arrays:/data/signs.npz,backbone=dogs,size=64
The paper's setup:
  python train.py --config=configs/transfer.py:scale_bias --workdir=/tmp/sb
  python train.py --config=configs/transfer.py:full,backbone=inception_v3 --workdir=/tmp/f
  python train.py --config=configs/transfer.py:depthwise --mode=params --workdir=/tmp/p

Keys (default):
  regime (scale_bias)  a row of REGIMES below: its patch, statistics and learning rate.
  backbone (mobilenet_v2)  mobilenet_v2 (1.0 @224, ImageNet), inception_v3 (@299, batch 16),
                       resnet50, vit (k4p1's compact ViT-Ti, random weights), dogs (the
                       trained MobileNetV2 1.0 @160 in
                       $K4P1_DATA_DIR/mobilenet_v2_1.0_160_dogs), ssd (the SSDLite featurizer in
                       $K4P1_DATA_DIR/ssdlite_mobilenet_v2_person).
  data (tfds:oxford_flowers102)  SOURCE[:PATH or tfds NAME]: image_folder:ROOT (ROOT/train/<class>/,
                       ROOT/test/<class>/), arrays:FILE.npz, tfds:NAME, cifar10, fashion_mnist, digits.
  name ('')            the task's name (default: the data's, e.g. `signs` for /data/signs).
  patch ('')           patch kinds joined by '+', e.g. scale_bias+last_layer (default: the regime's).
  statistics ('')      batch or frozen (default: the regime's).
  lr (0)               initial learning rate (0: the regime's).
  epochs (30), steps (0: use epochs), size (0: the backbone's own resolution), batch (0: the
                       backbone's), weights ('': the backbone's; `none` for random, or a file).
  augment (inception_crop)  or none (resize only);  flip (tfds flowers: true, own data: false):
                       random horizontal flips (they change the label of digits, text, signs);
  eval_crop (0.875 for the paper's tfds setup, 1.0 for own data)  central fraction kept at eval.
  train_examples / eval_examples (-1: all; class-stratified subsets for local data).

Regimes (REGIMES): scale_bias (S/B patch + last layer, batch statistics as the paper),
scale_bias_frozen (frozen statistics: faster), depthwise, scale_bias_depthwise,
scale_bias_random_head (S/B only, classifier fixed at its random init: Tables 2-3),
bn_stats (recomputed BN statistics + last layer: Table 6), last_layer, full (full fine-tuning at
the small rate it wants), taps (TAPS gated deltas + task-specific BN + last layer; configs/taps.py
sets its options).

The former configs/mobilenet_v2_<regime>.py, inception_v3_scale_bias.py and
resnet50_scale_bias.py are aliases of this file.
"""

import os
import re

from k4p1.config import ConfigError, dataset_config, parse_arg, transfer_config

# regime -> (patch, statistics, learning rate)
REGIMES = {
    "scale_bias": ("scale_bias,last_layer", "batch", 0.045),
    "scale_bias_frozen": ("scale_bias,last_layer", "frozen", 0.045),
    "depthwise": ("depthwise,last_layer", "batch", 0.045),
    "scale_bias_depthwise": ("scale_bias,depthwise,last_layer", "batch", 0.045),
    "scale_bias_random_head": ("scale_bias", "batch", 0.045),
    "bn_stats": ("bn_stats,last_layer", "batch", 0.045),
    "last_layer": ("last_layer", "batch", 0.045),
    "full": ("full,last_layer", "batch", 0.0045),
    # TAPS: gated weight deltas (configs/taps.py sets lam and the other options); its deltas
    # are weights, which want full fine-tuning's small rate.
    "taps": ("taps,scale_bias,last_layer", "batch", 0.0045),
}


def _data_file(*parts) -> str:
  data_dir = os.environ.get("K4P1_DATA_DIR", "")
  return os.path.join(data_dir, *parts) if data_dir else ""


# backbone -> (backbone fields, batch size); paths are read when the config is built.
BACKBONES = {
    "mobilenet_v2": (lambda: dict(name="mobilenet_v2"), 32),
    "inception_v3": (lambda: dict(name="inception_v3", input_size=299), 16),
    "resnet50": (lambda: dict(name="keras_application", application="ResNet50"), 32),
    "vit": (lambda: dict(name="vit", weights="none"), 32),
    "dogs": (lambda: dict(name="keras_file", input_size=0, model_file=_data_file(
        "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")), 32),
    "ssd": (lambda: dict(name="ssd_mobilenet_v2", input_size=300, weights=_data_file(
        "ssdlite_mobilenet_v2_person", "frozen_inference_graph.pb")), 32),
}
# data source shorthand -> dataset fields
SOURCES = ("image_folder", "arrays", "tfds", "cifar10", "fashion_mnist", "digits")
_SHORTHAND = {"cifar10": "cifar10_tarball"}


def _data(text: str, where: str):
  """'SOURCE[:PATH or NAME]' -> (dataset fields, default task name)."""
  source, _, value = text.partition(":")
  if source not in SOURCES:
    from k4p1.registry import did_you_mean
    raise ConfigError(f"configs/transfer.py: unknown data source '{source}'."
                      f"{did_you_mean(source, SOURCES)} Write data=SOURCE[:PATH], SOURCE one of "
                      f"{', '.join(SOURCES)}. Received: {where}")
  if source == "tfds":
    if not value:
      raise ConfigError(f"configs/transfer.py: data=tfds:NAME needs a dataset name, e.g. "
                        f"tfds:cifar100. Received: {where}")
    return dict(source="tfds", name=value), value
  if source in ("image_folder", "arrays") and not value:
    raise ConfigError(f"configs/transfer.py: data={source}:PATH needs a path. Received: {where}")
  name = os.path.splitext(os.path.basename(os.path.normpath(value)))[0] if value else source
  return dict(source=_SHORTHAND.get(source, source), path=value), name


def task_name(text: str) -> str:
  """A valid task name (letters, digits, '_') from free text: 'GTSRB-32px' -> 'gtsrb_32px'."""
  name = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_").lower() or "task"
  return name if not name[0].isdigit() else f"t_{name}"


def get_config(arg=None):
  args = parse_arg(arg, positional="regime", regime="scale_bias", backbone="mobilenet_v2",
                   data="", name="", patch="", statistics="", lr=0.0, epochs=30.0, size=0,
                   batch=0, augment="inception_crop", flip="", eval_crop=0.0,
                   train_examples=-1, eval_examples=-1, steps=0, weights="")
  for key, table in (("regime", REGIMES), ("backbone", BACKBONES)):
    if args[key] not in table:
      from k4p1.registry import did_you_mean
      raise ConfigError(f"configs/transfer.py: unknown {key} {args[key]!r}."
                        f"{did_you_mean(args[key], table)} Known: {', '.join(table)}. "
                        f"Received: {arg!r}")
  patch, statistics, lr = REGIMES[args.regime]
  fields, batch = BACKBONES[args.backbone]
  fields = fields()
  if args.size:
    fields["input_size"] = args.size
  if args.weights:
    fields["weights"] = args.weights
  own_data = bool(args.data)
  dataset, name = _data(args.data, arg) if own_data else (
      dict(source="tfds", name="oxford_flowers102"), "flowers")
  name = task_name(args.name or name)
  if args.flip not in ("", "true", "false", "1", "0", "yes", "no"):
    raise ConfigError(f"configs/transfer.py: flip must be true or false. Received: {arg!r}")
  flip = (args.flip in ("true", "1", "yes")) if args.flip else not own_data
  c = transfer_config(args.patch.replace("+", ",") or patch,
                      statistics=args.statistics or statistics, lr=args.lr or lr,
                      task=name, epochs=args.epochs, **fields)
  c.tasks[name].dataset = dataset_config(
      **dataset, augment=args.augment, flip=flip,
      eval_crop=args.eval_crop or (1.0 if own_data else 0.875),
      train_examples=args.train_examples, eval_examples=args.eval_examples)
  c.tasks[name].steps = args.steps
  c.train.batch_size = args.batch or batch
  return c
