r"""Scale-and-bias patch only, last layer fixed at its random initialisation (paper Table 2/3 'S/B only').

MobileNetV2 1.0 @224 (ImageNet weights) -> Oxford Flowers-102 (tfds), the paper's setup (section 5.2).
The dataset name and size are overridable: --config.tasks.flowers.dataset.name=cifar100.

Run:    python train.py --config=configs/mobilenet_v2_scale_bias_random_head.py --workdir=/tmp/mobilenet_v2_scale_bias_random_head
Report: python train.py --config=configs/mobilenet_v2_scale_bias_random_head.py --mode=params --workdir=/tmp/k4p1_params
"""

from k4p1.config import base_config, dataset_config, task_config


def get_config(arg=None):
  c = base_config()
  c.backbone.update(name="mobilenet_v2", alpha=1.0, input_size=224, weights="imagenet")
  c.tasks.flowers = task_config(
      dataset=dataset_config(source="tfds", name="oxford_flowers102", train_split="train",
                             eval_split="test"),
      patch="scale_bias", statistics="batch", epochs=30, lr=0.045)

  return c
