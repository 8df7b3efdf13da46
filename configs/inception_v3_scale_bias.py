"""InceptionV3 @299: scale-and-bias + last layer.

An alias kept for its path: configs/transfer.py:scale_bias,backbone=inception_v3.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "scale_bias,backbone=inception_v3", near=__file__)
