r"""TAPS (Wallingford et al. 2022): training decides which layers become task-specific.

Every conv and dense layer of the shared base gets a gated weight delta, w + I(s >= tau) dw,
and an L1 penalty lam / L * sum|s| switches off the layers whose delta does not pay for itself
(k4p1/methods/taps/kind.py). The task also gets its own BN (scale_bias, batch statistics, as in the
paper) and classifier.

ARG: an optional variant, then key=value options, comma separated:
  (default)  incremental TAPS on a frozen base: MobileNetV2 1.0 @224 (ImageNet weights) ->
             Oxford Flowers-102, as configs/transfer.py:taps (its keys pass through: backbone=,
             data=, size=, steps=, lr=, ...)
  smoke      the embedded digits (offline): a MobileNetV2 0.35 @32 learns digits 0-4 from random
             weights, then TAPS adapts it to digits 5-9 (a few dozen steps)
  vit        the compact ViT (k4p1/backbones/vit.py) instead, random weights: TAPS gates its
             attention projections and MLP layers (no BN: taps + last layer)
  joint      joint TAPS (the paper's Eq. 4): two tasks train together, the shared base included,
             each with its own deltas, BN and classifier, every step a batch of each task
             (smoke: the digits halves; else CIFAR-10 and Fashion-MNIST on the dogs backbone
             at 64x64, from $K4P1_DATA_DIR)
  TAPS options: lam (0.5), tau (0.1), init (0.15), score_lr (0: the task's rate),
             warmup_steps (0), l1_divisor (0: the number of gated layers, as the paper)

Run:
  python train.py --config=configs/taps.py --mode=params --workdir=/tmp/k4p1_taps
  python train.py --config=configs/taps.py:smoke --workdir=/tmp/k4p1_taps_smoke
  python train.py --config=configs/taps.py:smoke,joint,lam=1.0 --workdir=/tmp/k4p1_taps_joint
  python train.py --config=configs/taps.py:smoke,vit --workdir=/tmp/k4p1_taps_vit
  K4P1_DATA_DIR=../shared/data python train.py \
      --config=configs/taps.py:backbone=dogs,data=cifar10,size=64,lam=0.25 --workdir=/tmp/t
"""

import os

from k4p1.config import ConfigError, base_config, config_file, dataset_config, task_config

TAPS_KEYS = {"lam": float, "tau": float, "init": float, "score_lr": float,
             "warmup_steps": int, "l1_divisor": float}
VARIANTS = ("smoke", "joint", "vit")


def taps_patch(options: dict, batch_norm: bool = True) -> str:
  """'taps(lam=0.5,...),scale_bias,last_layer' with the given options (no scale_bias for a
  backbone without BN, e.g. the ViT)."""
  inner = ",".join(f"{k}={v}" for k, v in options.items())
  taps = f"taps({inner})" if inner else "taps"
  return f"{taps},scale_bias,last_layer" if batch_norm else f"{taps},last_layer"


def _split(arg):
  variants, options, rest = set(), {}, []
  for item in (x.strip() for x in str(arg or "").split(",") if x.strip()):
    key, eq, value = item.partition("=")
    if not eq and key in VARIANTS:
      variants.add(key)
    elif eq and key in TAPS_KEYS:
      try:
        options[key] = TAPS_KEYS[key](value)
      except ValueError:
        raise ConfigError(f"configs/taps.py: {key} must be a {TAPS_KEYS[key].__name__}. "
                          f"Received: {item!r}") from None
    else:
      rest.append(item)
  return variants, options, rest


def _digits(c):
  c.backbone.update(name="mobilenet_v2", alpha=0.35, input_size=32, weights="none")
  c.train.update(batch_size=32, eval_batch_size=128, bn_recompute_batches=4, log_every=10)
  c.optimizer.lr = 0.01
  return (dataset_config(source="digits", classes="0,1,2,3,4", augment="none"),
          dataset_config(source="digits", classes="5,6,7,8,9", augment="none"))


def get_config(arg=None):
  variants, options, rest = _split(arg)
  vit = "vit" in variants or any(item == "backbone=vit" for item in rest)
  patch = taps_patch(options, batch_norm=not vit)
  if "smoke" in variants:
    if rest:
      raise ConfigError(f"configs/taps.py: smoke takes only TAPS options "
                        f"({', '.join(TAPS_KEYS)}), joint and vit. Received: {arg!r}")
    c = base_config()
    low, high = _digits(c)
    if vit:  # a ViT 64 wide, 4 blocks deep: TAPS gates its attention projections and MLPs
      c.backbone.update(name="vit", alpha=0.35)
      c.optimizer.lr = 0.001
    if "joint" in variants:
      c.tasks.digits_0_4 = task_config(dataset=low, patch=patch, lr=0.01)
      c.tasks.digits_5_9 = task_config(dataset=high, patch=patch, lr=0.01)
      c.multitask.update(tasks="digits_0_4,digits_5_9", steps=40)
      c.task_order = "digits_0_4,digits_5_9"
    else:
      # The base first learns digits 0-4 (every weight); TAPS then adapts it to digits 5-9.
      c.tasks.digits_0_4 = task_config(dataset=low, patch="last_layer", train_base=True,
                                       steps=60)
      c.tasks.digits_5_9 = task_config(dataset=high, patch=patch, steps=40, lr=0.01)
      c.task_order = "digits_0_4,digits_5_9"
    c.export.tasks = c.task_order
    return c
  if "vit" in variants:
    rest.append("backbone=vit")
  if "joint" in variants:
    if rest:
      raise ConfigError(f"configs/taps.py: joint takes only TAPS options "
                        f"({', '.join(TAPS_KEYS)}) and smoke. Received: {arg!r}")
    data_dir = os.environ.get("K4P1_DATA_DIR", "")
    c = base_config()
    c.backbone.update(
        name="keras_file", input_size=64,
        model_file=os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")
        if data_dir else "")
    c.train.update(batch_size=32, eval_batch_size=100, checkpoint_every=200, log_every=20)
    c.optimizer.lr = 0.0045
    data = {"cifar10": dataset_config(source="cifar10_tarball", augment="none", flip=True,
                                      train_examples=5000, eval_examples=2000),
            "fashion_mnist": dataset_config(source="fashion_mnist", augment="none",
                                            train_examples=5000, eval_examples=2000)}
    for name, dataset in data.items():
      c.tasks[name] = task_config(dataset=dataset, patch=patch, epochs=2.0)
    c.task_order = c.multitask.tasks = ",".join(data)
    c.export.tasks = c.task_order
    return c
  c = config_file("transfer.py", ",".join(["taps"] + rest), near=__file__)
  for task in c.tasks.values():
    task.patch = patch
  return c
