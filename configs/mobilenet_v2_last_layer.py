"""Baseline: last layer only.

An alias kept for its path: configs/transfer.py:last_layer.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "last_layer", near=__file__)
