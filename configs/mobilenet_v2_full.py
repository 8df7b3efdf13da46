"""Baseline: full fine-tuning at the small rate it wants.

An alias kept for its path: configs/transfer.py:full.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "full", near=__file__)
