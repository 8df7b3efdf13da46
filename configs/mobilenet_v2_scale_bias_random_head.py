"""Scale-and-bias only, random fixed classifier.

An alias kept for its path: configs/transfer.py:scale_bias_random_head.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "scale_bias_random_head", near=__file__)
