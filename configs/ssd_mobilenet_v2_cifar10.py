r"""The paper's COCO -> classification experiment: an SSD detector's featurizer becomes a classifier.

The backbone is the MobileNetV2 featurizer of a TF Object Detection API SSD / SSDLite model, read
from its frozen_inference_graph.pb or a TF1 checkpoint (k4p1.backbones.tf1_import). Here: the SSDLite
person detector in $K4P1_DATA_DIR/ssdlite_mobilenet_v2_person, or any OD API MobileNetV2 model via
--config.backbone.weights=PATH (TF1 checkpoints: also --config.backbone.use_moving_averages=true
to read the EMA weights the OD API evaluates with). Target: CIFAR-10 (JPEG tarball) at 224x224
with the scale-and-bias patch + last layer, the paper's recommended patch.

Run (hours on a CPU; minutes on a GPU):
  K4P1_DATA_DIR=../shared/data python train.py --config=configs/ssd_mobilenet_v2_cifar10.py \
      --workdir=/tmp/ssd_cifar10
Smoke: ... --config=configs/ssd_mobilenet_v2_cifar10.py:smoke
Every regime on this backbone, measured at 64x64: configs/transfer_table.py, docs/results.md.
"""

import os

from k4p1.config import base_config, dataset_config, task_config


def get_config(arg=None):
  c = base_config()
  data_dir = os.environ.get("K4P1_DATA_DIR", "")
  c.backbone.update(
      name="ssd_mobilenet_v2", input_size=224,
      weights=os.path.join(data_dir, "ssdlite_mobilenet_v2_person", "frozen_inference_graph.pb")
      if data_dir else "")
  c.tasks.cifar10 = task_config(
      dataset=dataset_config(source="cifar10_tarball", augment="inception_crop", flip=True,
                             eval_crop=0.875),
      patch="scale_bias,last_layer", epochs=10)
  if arg == "smoke":
    c.backbone.input_size = 64
    c.train.bn_recompute_batches = 2
    c.tasks.cifar10.dataset.update(train_examples=64, eval_examples=32)
    c.tasks.cifar10.update(epochs=0.0, steps=2)
  return c
