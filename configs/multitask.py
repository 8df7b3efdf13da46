r"""Multi-task learning (the paper's section 5.3, Table 4): tasks trained at the same time on one
shared backbone, each with its own patch.

ARG: a regime, then options, comma separated:
  patch (default)  scale-and-bias + last layer per task; the shared weights learn from every task
  last_layer       everything shared, one classifier per task (the paper's baseline)
  independent      one whole model per task (a private copy each), trained side by side
  smoke            the embedded digits data (no download): digits 0-4 and 5-9 as two tasks on a
                   MobileNetV2 0.35 @32 from random weights, a few dozen steps
  sampled          each step trains one task, drawn proportionally to dataset size (default:
                   summed, every step takes a batch of each task and sums the losses)
  parameter_server asynchronous training on a parameter-server cluster (sampled steps); run
                   under `python -m k4p1.launch --workers=2 --ps=1 -- python train.py ...`
  multi_worker_mirrored  synchronous training on every worker (`k4p1.launch --ps=0`)
  train_examples=N, eval_examples=N, epochs=X, lr=X, size=N  the Table 4 setup's scale

The Table 4 setup: the trained MobileNetV2 1.0 @160 of $K4P1_DATA_DIR/mobilenet_v2_1.0_160_dogs
learns CIFAR-10 and Fashion-MNIST jointly at 64x64: 5,000 training images per task (class-
stratified), 2,000 test images each, 2 epochs, batch 32 per task, lr 0.0015 (this backbone's
full fine-tuning optimum at 64px, docs/results.md; the shared weights train in every regime),
learning rates balanced so that both tasks' rates decay at the same steps. A scale 2 CPU cores
run in minutes per regime; the options below change it.

Run:    python train.py --config=configs/multitask.py:smoke --workdir=/tmp/k4p1_mt
Report: python train.py --config=configs/multitask.py --mode=params --workdir=/tmp/k4p1_mt
Table 4 (needs the shared data):
        K4P1_DATA_DIR=../shared/data python train.py --config=configs/multitask.py:last_layer ...
"""

import os

from k4p1.config import ConfigError, base_config, dataset_config, task_config

REGIMES = {
    "patch": dict(patch="scale_bias,last_layer"),
    "last_layer": dict(patch="last_layer"),
    "independent": dict(patch="full,last_layer"),
}
OPTIONS = ("smoke", "sampled", "parameter_server", "multi_worker_mirrored")


SCALE = {"train_examples": 5000, "eval_examples": 2000, "epochs": 2.0, "lr": 0.0015, "size": 64}


def get_config(arg=None):
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  regime = parts.pop(0) if parts and parts[0] in REGIMES else "patch"
  scale = dict(SCALE)
  for item in [p for p in parts if "=" in p]:
    key, _, value = item.partition("=")
    if key not in scale:
      raise ConfigError(f"configs/multitask.py: unknown option {key!r}; scale options: "
                        f"{', '.join(scale)}. Received: {arg!r}")
    try:
      scale[key] = type(SCALE[key])(value)
    except ValueError:
      raise ConfigError(f"configs/multitask.py: {key} must be a {type(SCALE[key]).__name__}. "
                        f"Received: {item!r}") from None
    parts.remove(item)
  unknown = [p for p in parts if p not in OPTIONS]
  if unknown:
    raise ConfigError(f"configs/multitask.py: unknown argument(s) {unknown}. Takes a regime "
                      f"({', '.join(REGIMES)}) and options ({', '.join(OPTIONS)}). "
                      f"Received: {arg!r}")
  c = base_config()
  c.train.update(batch_size=32, eval_batch_size=100, checkpoint_every=200, log_every=20)
  if "smoke" in parts:
    c.backbone.update(name="mobilenet_v2", alpha=0.35, input_size=32, weights="none")
    c.optimizer.lr = 0.01
    c.train.update(batch_size=16, bn_recompute_batches=4, log_every=10)
    data = {"digits_0_4": dataset_config(source="digits", classes="0,1,2,3,4", augment="none"),
            "digits_5_9": dataset_config(source="digits", classes="5,6,7,8,9", augment="none")}
    c.multitask.steps = 40
  else:
    data_dir = os.environ.get("K4P1_DATA_DIR", "")
    c.backbone.update(
        name="keras_file", input_size=scale["size"],
        model_file=os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")
        if data_dir else "")
    c.optimizer.lr = scale["lr"]
    subset = dict(train_examples=scale["train_examples"], eval_examples=scale["eval_examples"])
    data = {"cifar10": dataset_config(source="cifar10_tarball", augment="none", flip=True,
                                      **subset),
            "fashion_mnist": dataset_config(source="fashion_mnist", augment="none", **subset)}
  for name, dataset in data.items():
    c.tasks[name] = task_config(dataset=dataset, epochs=scale["epochs"], **REGIMES[regime])
  c.task_order = ",".join(data)
  c.multitask.tasks = ",".join(data)
  c.multitask.step = "sampled" if {"sampled", "parameter_server"} & set(parts) else "summed"
  for strategy in ("parameter_server", "multi_worker_mirrored"):
    if strategy in parts:
      c.runtime.strategy = strategy
  c.export.mixed_tasks = ",".join(data)
  return c
