r"""Scale-and-bias patch only, last layer fixed at its random initialisation (paper Tables 2-3, 'S/B only').

MobileNetV2 1.0 @224 (ImageNet weights) -> Oxford Flowers-102 (tfds): the paper's section 5.2 setup.
Other data: --config.tasks.flowers.dataset.name=cifar100.

Run:    python train.py --config=configs/mobilenet_v2_scale_bias_random_head.py --workdir=/tmp/mobilenet_v2_scale_bias_random_head
Report: python train.py --config=configs/mobilenet_v2_scale_bias_random_head.py --mode=params --workdir=/tmp/k4p1_params
"""

from k4p1.config import transfer_config


def get_config(arg=None):
  return transfer_config('scale_bias')
