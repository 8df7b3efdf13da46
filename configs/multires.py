r"""Multi-resolution (the paper's section 5.4, Table 5): one network at several input
resolutions, each resolution a task, trained jointly on the multi-task trainer.

Images are resized bilinearly to each task's resolution (`tasks.<r>.input_size`); the
backbone's layers are the same at every size (k4p1.backbones.for_sizes).

ARG: an optional regime, then key=value options, comma separated:
  patch (default)  a private scale-and-bias patch (and BN statistics) per resolution; the
                   classifier and every other weight shared: `last_layer(shared=true)`
  all_shared       one set of weights at every resolution (BN statistics too)
  independent      one whole model per resolution (a private copy each), trained side by side
  smoke            the embedded digits data (no download): a MobileNetV2 0.35 from random
                   weights at 64 and 32 px, a few dozen steps
  data=            imagenet (default: the paper's; MobileNetV2 1.0 @224, ImageNet weights,
                   tfds imagenet2012), cifar10 or fashion_mnist (the trained MobileNetV2 1.0
                   @160 of $K4P1_DATA_DIR/mobilenet_v2_1.0_160_dogs, the same files as the
                   Table 4 setup)
  resolutions=     '/'-separated, largest first (default 224/192/160/128/96; 160/128/96/64 on
                   the dogs backbone); multiples of 32
  train_examples=, eval_examples=, epochs=, lr=, batch=   the run's scale

Run:    python train.py --config=configs/multires.py:smoke --workdir=/tmp/k4p1_mr_smoke
Report: python train.py --config=configs/multires.py --mode=params --workdir=/tmp/k4p1_mr
        (Table 5's accounting: S/B patch per resolution vs all shared vs independent)
Table 5 on real data:
        K4P1_DATA_DIR=../shared/data python train.py \
            --config=configs/multires.py:all_shared,data=cifar10 --workdir=/tmp/mr_c10_shared
"""

import os

from k4p1.config import ConfigError, base_config, dataset_config, parse_arg, task_config

REGIMES = {
    "patch": dict(patch="scale_bias,last_layer(shared=true)"),
    "all_shared": dict(patch="last_layer(shared=true)"),
    "independent": dict(patch="full,last_layer"),
}
DATA = ("imagenet", "cifar10", "fashion_mnist")
# Per data choice: resolutions, train/eval examples, epochs, lr, batch per resolution.
SCALES = {
    "imagenet": dict(resolutions="224/192/160/128/96", train_examples=-1, eval_examples=-1,
                     epochs=30.0, lr=0.045, batch=32),
    "dogs": dict(resolutions="160/128/96/64", train_examples=5000, eval_examples=2000,
                 epochs=2.0, lr=0.0015, batch=32),
    "smoke": dict(resolutions="64/32", train_examples=-1, eval_examples=-1,
                  epochs=1.0, lr=0.01, batch=16),
}


def resolutions_of(text: str) -> list[int]:
  """'224/192/160' -> [224, 192, 160] (checked: distinct, >= 32)."""
  try:
    sizes = [int(x) for x in str(text).replace(":", "/").split("/") if x.strip()]
  except ValueError:
    raise ConfigError(f"configs/multires.py: resolutions must be '/'-separated integers, e.g. "
                      f"224/160/96. Received: {text!r}") from None
  if len(sizes) < 2 or len(set(sizes)) != len(sizes):
    raise ConfigError(f"configs/multires.py: give at least two distinct resolutions. "
                      f"Received: {text!r}")
  if min(sizes) < 32:
    raise ConfigError(f"configs/multires.py: resolution {min(sizes)} is below 32, the smallest "
                      f"input MobileNetV2 takes. Received: resolutions={text!r}")
  return sorted(sizes, reverse=True)


def get_config(arg=None):
  items = [x.strip() for x in str(arg or "").split(",") if x.strip()]
  smoke = "smoke" in items
  items = [x for x in items if x != "smoke"]
  data = next((x.partition("=")[2] for x in items if x.startswith("data=")), "imagenet")
  scale = SCALES["smoke" if smoke else "imagenet" if data == "imagenet" else "dogs"]
  a = parse_arg(",".join(items), positional="regime", regime="patch", data="imagenet", **scale)
  if a.regime not in REGIMES:
    raise ConfigError(f"configs/multires.py: unknown regime {a.regime!r}; regimes: "
                      f"{', '.join(REGIMES)} (and the option smoke). Received: {arg!r}")
  if a.data not in DATA:
    raise ConfigError(f"configs/multires.py: data must be one of {', '.join(DATA)}. "
                      f"Received: data={a.data!r}")
  sizes = resolutions_of(a.resolutions)
  c = base_config()
  c.train.update(batch_size=a.batch, eval_batch_size=100, checkpoint_every=200, log_every=20)
  c.optimizer.lr = a.lr
  subset = dict(train_examples=a.train_examples, eval_examples=a.eval_examples)
  if smoke:
    c.backbone.update(name="mobilenet_v2", alpha=0.35, input_size=sizes[0], weights="none")
    c.train.update(bn_recompute_batches=4, log_every=10)
    dataset = dataset_config(source="digits", augment="none", **subset)
    c.multitask.steps = 40
  elif a.data == "imagenet":
    c.backbone.update(name="mobilenet_v2", alpha=1.0, input_size=sizes[0], weights="imagenet")
    dataset = dataset_config(source="tfds", name="imagenet2012", eval_split="validation",
                             eval_crop=0.875, **subset)
  else:
    data_dir = os.environ.get("K4P1_DATA_DIR", "")
    c.backbone.update(
        name="keras_file", input_size=sizes[0],
        model_file=os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")
        if data_dir else "")
    source = "cifar10_tarball" if a.data == "cifar10" else "fashion_mnist"
    dataset = dataset_config(source=source, augment="none", flip=a.data == "cifar10", **subset)
  names = [f"r{s}" for s in sizes]
  for name, size in zip(names, sizes):
    c.tasks[name] = task_config(dataset=dataset, epochs=a.epochs, input_size=size,
                                **REGIMES[a.regime])
  c.task_order = ",".join(names)
  c.multitask.tasks = ",".join(names)
  c.multitask.step = "summed"
  c.report.compare = ";".join(f"{r}={REGIMES[r]['patch']}" for r in REGIMES if r != a.regime)
  c.cascade.tasks = ",".join(names)
  return c
