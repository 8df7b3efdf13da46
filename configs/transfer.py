r"""Transfer learning on a pretrained backbone: one regime of the paper's section 5.2.

The backbone (ImageNet weights) learns Oxford Flowers-102 (tfds) with one regime, i.e. one
choice of what the task learns. ARG is big_vision style: a regime, then key=value pairs.

Run:    python train.py --config=configs/transfer.py:scale_bias --workdir=/tmp/sb
        python train.py --config=configs/transfer.py:full,backbone=inception_v3 --workdir=/tmp/f
Report: python train.py --config=configs/transfer.py:depthwise --mode=params --workdir=/tmp/p
Other data: --config.tasks.flowers.dataset.name=cifar100.

Regimes (REGIMES): scale_bias (S/B patch + last layer, batch statistics as the paper),
scale_bias_frozen (frozen statistics: faster), depthwise, scale_bias_depthwise,
scale_bias_random_head (S/B only, classifier fixed at its random init: Tables 2-3),
bn_stats (recomputed BN statistics + last layer: Table 6), last_layer, full (full fine-tuning at
the small rate it wants).
Backbones (BACKBONES): mobilenet_v2 (1.0 @224), inception_v3 (@299, batch 16; its BN has no
gamma, the patch adds one: 34,432 learned), resnet50 (any keras.applications model patches
without special code).
Keys: regime, backbone, lr (0: the regime's), epochs.

The former configs/mobilenet_v2_<regime>.py, inception_v3_scale_bias.py and
resnet50_scale_bias.py are aliases of this file.
"""

from k4p1.config import ConfigError, parse_arg, transfer_config

# regime -> (patch, statistics, learning rate)
REGIMES = {
    "scale_bias": ("scale_bias,last_layer", "batch", 0.045),
    "scale_bias_frozen": ("scale_bias,last_layer", "frozen", 0.045),
    "depthwise": ("depthwise,last_layer", "batch", 0.045),
    "scale_bias_depthwise": ("scale_bias,depthwise,last_layer", "batch", 0.045),
    "scale_bias_random_head": ("scale_bias", "batch", 0.045),
    "bn_stats": ("bn_stats,last_layer", "batch", 0.045),
    "last_layer": ("last_layer", "batch", 0.045),
    "full": ("full,last_layer", "batch", 0.0045),
}
# backbone -> (backbone fields, batch size)
BACKBONES = {
    "mobilenet_v2": (dict(name="mobilenet_v2"), 32),
    "inception_v3": (dict(name="inception_v3", input_size=299), 16),
    "resnet50": (dict(name="keras_application", application="ResNet50"), 32),
}


def get_config(arg=None):
  args = parse_arg(arg, positional="regime", regime="scale_bias", backbone="mobilenet_v2",
                   lr=0.0, epochs=30.0)
  for key, table in (("regime", REGIMES), ("backbone", BACKBONES)):
    if args[key] not in table:
      raise ConfigError(f"configs/transfer.py: unknown {key} {args[key]!r}. Known: "
                        f"{', '.join(table)}. Received: {arg!r}")
  patch, statistics, lr = REGIMES[args.regime]
  fields, batch = BACKBONES[args.backbone]
  c = transfer_config(patch, statistics=statistics, lr=args.lr or lr, epochs=args.epochs,
                      **fields)
  c.train.batch_size = batch
  return c
