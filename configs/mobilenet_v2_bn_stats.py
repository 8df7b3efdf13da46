r"""Baseline (paper Table 6): last layer + recomputed BN statistics, nothing else learned.

MobileNetV2 1.0 @224 (ImageNet weights) -> Oxford Flowers-102 (tfds): the paper's section 5.2 setup.
Other data: --config.tasks.flowers.dataset.name=cifar100.

Run:    python train.py --config=configs/mobilenet_v2_bn_stats.py --workdir=/tmp/mobilenet_v2_bn_stats
Report: python train.py --config=configs/mobilenet_v2_bn_stats.py --mode=params --workdir=/tmp/k4p1_params
"""

from k4p1.config import transfer_config


def get_config(arg=None):
  return transfer_config('bn_stats,last_layer')
