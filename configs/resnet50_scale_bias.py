"""ResNet50: scale-and-bias + last layer.

An alias kept for its path: configs/transfer.py:scale_bias,backbone=resnet50.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "scale_bias,backbone=resnet50", near=__file__)
