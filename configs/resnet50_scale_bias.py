r"""Any keras.applications model with BatchNormalization patches without special code: ResNet50.

Run: python train.py --config=configs/resnet50_scale_bias.py --workdir=/tmp/resnet50
"""

from k4p1.config import transfer_config


def get_config(arg=None):
  return transfer_config("scale_bias,last_layer", name="keras_application",
                         application="ResNet50")
