r"""A trained MobileNetV2 1.0 @160 from a full Keras model file -> CIFAR-10 (local JPEG tarball).

The backbone is the nested `mobilenetv2_1.00_160` inside the model file (a dog-breed classifier
whose blocks 0-13 carry ImageNet weights). Data and weights come from $K4P1_DATA_DIR
(e.g. ../shared/data), or set the paths explicitly:
  --config.backbone.model_file=PATH/dog_breed_mobilenetv2.h5
  --config.tasks.cifar10.dataset.path=PATH/cifar10_jpeg.tar.gz

Run: K4P1_DATA_DIR=../shared/data python train.py --config=configs/dogs_mobilenet_v2_cifar10.py \
       --workdir=/tmp/dogs_cifar10
"""

import os

from k4p1.config import base_config, dataset_config, task_config


def get_config(arg=None):
  c = base_config()
  data_dir = os.environ.get("K4P1_DATA_DIR", "")
  c.backbone.update(
      name="keras_file", input_size=0,
      model_file=os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")
      if data_dir else "")
  c.tasks.cifar10 = task_config(
      dataset=dataset_config(source="cifar10_tarball", augment="none", flip=True, train_examples=5000,
                             eval_examples=1000),
      patch="scale_bias,last_layer", epochs=3)
  return c
