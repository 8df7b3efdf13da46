r"""Scale-and-bias patch + last layer with frozen statistics (faster training).

MobileNetV2 1.0 @224 (ImageNet weights) -> Oxford Flowers-102 (tfds): the paper's section 5.2 setup.
Other data: --config.tasks.flowers.dataset.name=cifar100.

Run:    python train.py --config=configs/mobilenet_v2_scale_bias_frozen.py --workdir=/tmp/mobilenet_v2_scale_bias_frozen
Report: python train.py --config=configs/mobilenet_v2_scale_bias_frozen.py --mode=params --workdir=/tmp/k4p1_params
"""

from k4p1.config import transfer_config


def get_config(arg=None):
  return transfer_config('scale_bias,last_layer', statistics='frozen')
