r"""The paper's transfer table (Tables 2, 3, 6; Figure 3) at a scale 2 CPU cores can run.

One config = one cell of the sweep: a backbone, a target dataset and a learning rate; its seven
tasks are the regimes, all on the same frozen backbone:

  last_layer                       the classifier only
  bn_stats_last_layer              the task's own BN statistics (recomputed) + classifier
  scale_bias_only                  the scale-and-bias patch; classifier fixed at its random init
  scale_bias_last_layer            scale-and-bias + classifier
  depthwise_last_layer             every depthwise kernel + classifier
  scale_bias_depthwise_last_layer  both patches + classifier
  full_fine_tuning                 every weight (a private copy of the backbone) + classifier

Backbones (files from $K4P1_DATA_DIR, or --config.backbone.weights / model_file):
  ssd   the featurizer of a real SSDLite-MobileNetV2 person detector (COCO -> VOC person), read
        from its frozen_inference_graph.pb (k4p1.backbones.tf1_import);
  dogs  the trained MobileNetV2 1.0 @160 inside a dog-breed classifier (ImageNet blocks 0-13).
Targets: cifar10 (JPEG tarball) and fashion_mnist (IDX files), both at SIZE x SIZE (below).

Scale (fixed so that the full sweep, 2 x 2 x 5 cells of 7 regimes, fits ~1 hour on 2 cores):
  input 64x64 for both backbones (not their own 300 / 160: stated in docs/results.md),
  the first 1,000 training images (after a fixed shuffle for CIFAR-10; Fashion-MNIST's own order),
  1,000 test images of the official test split, 2 epochs, batch 32, RMSProp as in the paper;
  BN statistics recomputed over one pass of the 1,000 training images.

Option `frozen` (4th field): scale-and-bias patches keep the backbone's BN statistics (learning
gamma and beta only) instead of normalising with the target's batch statistics.

Run one cell:
  K4P1_DATA_DIR=../shared/data python train.py \
      --config=configs/transfer_table.py:ssd,cifar10,0.045 --workdir=/tmp/transfer_cell
The sweep and its plot: python bench/transfer_table.py   (smoke: append ,smoke to the arg)
"""

import os

from k4p1.config import base_config, dataset_config, task_config

REGIMES = {
    "last_layer": "last_layer",
    "bn_stats_last_layer": "bn_stats,last_layer",
    "scale_bias_only": "scale_bias",
    "scale_bias_last_layer": "scale_bias,last_layer",
    "depthwise_last_layer": "depthwise,last_layer",
    "scale_bias_depthwise_last_layer": "scale_bias,depthwise,last_layer",
    "full_fine_tuning": "full,last_layer",
}
BACKBONES = ("ssd", "dogs")
DATASETS = {
    "cifar10": dict(source="cifar10_tarball", augment="none", flip=True),
    "fashion_mnist": dict(source="fashion_mnist", augment="none"),
}
SIZE = 64
TRAIN_EXAMPLES = 1000
EVAL_EXAMPLES = 1000
EPOCHS = 2.0


def get_config(arg="ssd,cifar10,0.045"):
  parts = (arg or "ssd,cifar10,0.045").split(",")
  options = set(parts[3:])
  if (len(parts) < 3 or parts[0] not in BACKBONES or parts[1] not in DATASETS
      or not options <= {"smoke", "frozen"}):
    raise ValueError(f"configs/transfer_table.py takes BACKBONE,DATASET,LR[,frozen][,smoke] with "
                     f"BACKBONE in {BACKBONES} and DATASET in {tuple(DATASETS)}, e.g. "
                     f"'ssd,cifar10,0.045'. Received: {arg!r}")
  backbone, dataset, lr = parts[0], parts[1], float(parts[2])
  smoke = "smoke" in options
  data_dir = os.environ.get("K4P1_DATA_DIR", "")
  c = base_config()
  if backbone == "ssd":
    c.backbone.update(
        name="ssd_mobilenet_v2", input_size=SIZE,
        weights=os.path.join(data_dir, "ssdlite_mobilenet_v2_person", "frozen_inference_graph.pb")
        if data_dir else "")
  else:
    c.backbone.update(
        name="keras_file", input_size=SIZE,
        model_file=os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")
        if data_dir else "")
  c.train.update(batch_size=32, eval_batch_size=100, checkpoint_every=1000, log_every=10,
                 bn_recompute_batches=TRAIN_EXAMPLES // 32)
  for name, patch in REGIMES.items():
    data = dataset_config(**DATASETS[dataset], train_examples=TRAIN_EXAMPLES,
                          eval_examples=EVAL_EXAMPLES)
    # `frozen`: scale-and-bias patches normalise with the backbone's own statistics (learning
    # gamma and beta only) instead of the target's batch statistics.
    c.tasks[name] = task_config(dataset=data, patch=patch, epochs=EPOCHS, lr=lr,
                                statistics="frozen" if "frozen" in options else "batch")
  c.task_order = ",".join(REGIMES)
  c.export.enabled = False
  if smoke:
    c.train.bn_recompute_batches = 2
    for t in c.tasks.values():
      t.dataset.train_examples, t.dataset.eval_examples = 64, 50
      t.epochs, t.steps = 0.0, 2
  return c
