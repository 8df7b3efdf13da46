r"""InceptionV3 @299 (ImageNet weights): scale-and-bias patch + last layer (paper Table 2).

InceptionV3 builds its BN layers without gamma; the patch adds one (initialised to 1), so the
patch has 34,432 learned parameters (17,216 gamma + 17,216 beta).

Run:    python train.py --config=configs/inception_v3_scale_bias.py --workdir=/tmp/inception
Report: python train.py --config=configs/inception_v3_scale_bias.py --mode=params --workdir=/tmp/p
"""

from k4p1.config import transfer_config


def get_config(arg=None):
  c = transfer_config("scale_bias,last_layer", name="inception_v3", input_size=299)
  c.train.batch_size = 16
  return c
