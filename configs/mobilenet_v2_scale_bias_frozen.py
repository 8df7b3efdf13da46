"""Scale-and-bias + last layer, frozen statistics.

An alias kept for its path: configs/transfer.py:scale_bias_frozen.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "scale_bias_frozen", near=__file__)
