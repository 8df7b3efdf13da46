"""Scale-and-bias patch + last layer (batch statistics).

An alias kept for its path: configs/transfer.py:scale_bias.
"""

from k4p1.config import config_file


def get_config(arg=None):
  return config_file("transfer.py", "scale_bias", near=__file__)
