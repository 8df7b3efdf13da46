r"""Section 5.1: learning from random weights. A randomly initialised MobileNetV2 0.35 @32 on CIFAR-10.

Four tasks on the same frozen random base (paper Table 3, right):
  last_layer             the classifier only
  scale_bias_only        the scale-and-bias patch, classifier fixed at its random init
  scale_bias_last_layer  the scale-and-bias patch + classifier
  all_parameters         every weight (a private copy of the base), from the same random init

Data: the CIFAR-10 JPEG tarball ($K4P1_DATA_DIR/cifar10/cifar10_jpeg.tar.gz, or
--config.tasks.T.dataset.path): the first 10,000 training images (after a fixed shuffle) and
2,000 test images, 6 epochs.

Run:   K4P1_DATA_DIR=../shared/data python train.py --config=configs/random_weights_cifar10.py \
         --workdir=/tmp/random_weights
Smoke: ... --config=configs/random_weights_cifar10.py:smoke
"""

from k4p1.config import base_config, dataset_config, task_config

REGIMES = {
    "last_layer": "last_layer",
    "scale_bias_only": "scale_bias",
    "scale_bias_last_layer": "scale_bias,last_layer",
    "all_parameters": "full,last_layer",
}


def get_config(arg=None):
  c = base_config()
  c.backbone.update(name="mobilenet_v2", alpha=0.35, input_size=32, weights="none", seed=0)
  c.train.batch_size = 64
  c.train.eval_batch_size = 250
  c.train.checkpoint_every = 500
  for name, patch in REGIMES.items():
    data = dataset_config(source="cifar10_tarball", augment="none", flip=True, train_examples=10000,
                          eval_examples=2000)
    c.tasks[name] = task_config(dataset=data, patch=patch, epochs=6)
  c.task_order = ",".join(REGIMES)
  c.export.enabled = False
  if arg == "smoke":
    c.train.bn_recompute_batches = 2
    for t in c.tasks.values():
      t.dataset.train_examples, t.dataset.eval_examples = 256, 128
      t.epochs, t.steps = 0.0, 2
  return c
