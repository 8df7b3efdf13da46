"""Scale-and-bias + depthwise patches + last layer.

An alias kept for its path: configs/transfer.py:scale_bias_depthwise.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "scale_bias_depthwise", near=__file__)
