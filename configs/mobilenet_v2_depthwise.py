"""Depthwise-convolution patch + last layer.

An alias kept for its path: configs/transfer.py:depthwise.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "depthwise", near=__file__)
