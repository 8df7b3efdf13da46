"""Baseline (paper Table 6): last layer + recomputed BN statistics.

An alias kept for its path: configs/transfer.py:bn_stats.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "bn_stats", near=__file__)
