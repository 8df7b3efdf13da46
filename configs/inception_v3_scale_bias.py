r"""InceptionV3 @299 (ImageNet weights): scale-and-bias patch + last layer (paper Table 2).

InceptionV3 builds its BN layers without gamma; the patch adds one (initialised to 1), so the
patch has 34,432 learned parameters (17,216 gamma + 17,216 beta).

Run:    python train.py --config=configs/inception_v3_scale_bias.py --workdir=/tmp/inception
Report: python train.py --config=configs/inception_v3_scale_bias.py --mode=params --workdir=/tmp/p
"""

from k4p1.config import base_config, dataset_config, task_config


def get_config(arg=None):
  c = base_config()
  c.backbone.update(name="inception_v3", input_size=299, weights="imagenet")
  c.train.batch_size = 16
  c.tasks.flowers = task_config(
      dataset=dataset_config(source="tfds", name="oxford_flowers102"),
      patch="scale_bias,last_layer", epochs=30)
  return c
