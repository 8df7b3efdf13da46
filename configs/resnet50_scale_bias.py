r"""Any keras.applications model with BatchNormalization patches without special code: ResNet50.

Run: python train.py --config=configs/resnet50_scale_bias.py --workdir=/tmp/resnet50
"""

from k4p1.config import base_config, dataset_config, task_config


def get_config(arg=None):
  c = base_config()
  c.backbone.update(name="keras_application", application="ResNet50", input_size=224,
                    weights="imagenet")
  c.tasks.flowers = task_config(
      dataset=dataset_config(source="tfds", name="oxford_flowers102"),
      patch="scale_bias,last_layer", epochs=30)
  return c
