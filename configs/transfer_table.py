r"""The paper's transfer table (Tables 2, 3, 6; Figure 3) at a scale 2 CPU cores can run.

One config = one cell of the sweep: a backbone, a target dataset and a learning rate; its seven
tasks are the regimes, all on the same frozen backbone:

  last_layer                       the classifier only
  bn_stats_last_layer              the task's own BN statistics (recomputed) + classifier
  scale_bias_only                  the scale-and-bias patch; classifier fixed at its random init
  scale_bias_last_layer            scale-and-bias + classifier
  depthwise_last_layer             every depthwise kernel + classifier
  scale_bias_depthwise_last_layer  both patches + classifier
  full_fine_tuning                 every weight (a private copy of the backbone) + classifier

More regimes by name (regimes=...): taps_lam<N> (TAPS at lam = N/100, e.g. taps_lam25),
swr_c<N> (SWR at target cost c = N/100, BN statistics updated, e.g. swr_c10) and
top_from_<LAYER> (fine-tune every layer from LAYER on: TAPS's manual baseline).

Backbones (files from $K4P1_DATA_DIR, or --config.backbone.weights / model_file):
  ssd   the featurizer of a real SSDLite-MobileNetV2 person detector (COCO -> VOC person), read
        from its frozen_inference_graph.pb (k4p1.backbones.tf1_import);
  dogs  the trained MobileNetV2 1.0 @160 inside a dog-breed classifier (ImageNet blocks 0-13).
Targets: cifar10 (JPEG tarball) and fashion_mnist (IDX files), both at SIZE x SIZE (below).

Scale (default; fixed so that a sweep of 2 x 2 x 5 cells of 7 regimes fits ~1 hour on 2 cores):
  input 64x64 for both backbones (not their own 300 / 160: stated in docs/results.md),
  1,000 training images (a class-stratified subset, seed 0), 1,000 test images of the official
  test split (stratified), 2 epochs, batch 32, TF1 RMSProp as in the paper; BN statistics
  recomputed over one pass of the 1,000 un-augmented training images.

Options after BACKBONE,DATASET,LR (comma separated):
  statistics=batch|frozen|recompute  where the scale-and-bias patches' BN statistics come from
                  (`frozen` alone means statistics=frozen); regimes=a+b: a subset of REGIMES;
  data=SOURCE:PATH with DATASET '-': any local data (image_folder, arrays, ...);
  size=N, train_examples=N, eval_examples=N, epochs=X: another scale; smoke: 2 steps each;
  score_lr=X: the TAPS regimes' scores at their own rate; swr_beta=X: the SWR regimes'
  cost-loss weight (default: SWR's own, 1).

Run one cell:
  K4P1_DATA_DIR=../shared/data python train.py \
      --config=configs/transfer_table.py:ssd,cifar10,0.045 --workdir=/tmp/transfer_cell
The sweep and its plot: python bench/transfer_table.py   (smoke: append ,smoke to the arg)
"""

import os

from k4p1.config import ConfigError, base_config, dataset_config, task_config

REGIMES = {
    "last_layer": "last_layer",
    "bn_stats_last_layer": "bn_stats,last_layer",
    "scale_bias_only": "scale_bias",
    "scale_bias_last_layer": "scale_bias,last_layer",
    "depthwise_last_layer": "depthwise,last_layer",
    "scale_bias_depthwise_last_layer": "scale_bias,depthwise,last_layer",
    "full_fine_tuning": "full,last_layer",
}
# Regimes named by a pattern (accepted by regimes=, not in the default seven):
#   taps_lam<N>       TAPS at lam = N / 100 + task-specific BN + last layer (taps_lam25: 0.25)
#   swr_c<N>          SWR at target cost c = N / 100 + BN statistics + last layer (swr_c10)
#   top_from_<LAYER>  fine-tune every layer from LAYER on (a private copy) + last layer: TAPS's
#                     manual baseline at a chosen parameter budget
PATTERN_REGIMES = {"taps_lam": lambda n, o: (
                       f"taps(lam={int(n) / 100:g}" + (f",score_lr={o['score_lr']:g}"
                                                       if o["score_lr"] else "") +
                       "),scale_bias,last_layer"),
                   "swr_c": lambda n, o: (f"swr(c={int(n) / 100:g}" +
                                          (f",beta={o['swr_beta']:g}" if o["swr_beta"] else "")
                                          + "),bn_stats,last_layer"),
                   "top_from_": lambda layer, o: f"top(start={layer}),last_layer"}


def regime_patch(name: str, score_lr: float = 0.0, swr_beta: float = 0.0) -> str:
  """The patch of a regime: one of REGIMES or of the PATTERN_REGIMES (TAPS scores at
  `score_lr`, SWR's cost loss weighted by `swr_beta`, when given)."""
  if name in REGIMES:
    return REGIMES[name]
  for prefix, make in PATTERN_REGIMES.items():
    rest = name[len(prefix):]
    if name.startswith(prefix) and rest and (rest.isdigit() or prefix == "top_from_"):
      return make(rest, {"score_lr": score_lr, "swr_beta": swr_beta})
  raise KeyError(name)


BACKBONES = ("ssd", "dogs")
DATASETS = {
    "cifar10": dict(source="cifar10_tarball", augment="none", flip=True),
    "fashion_mnist": dict(source="fashion_mnist", augment="none"),
}
SIZE = 64
TRAIN_EXAMPLES = 1000
EVAL_EXAMPLES = 1000
EPOCHS = 2.0


# Learning-rate grids that bracket each backbone's optimum (bench/transfer_table.py's default):
# the dogs MobileNetV2's initial gamma/beta gradients are 12-34x the SSD featurizer's, so its
# rates sit a decade lower.
LR_GRIDS = {
    "ssd": ("0.0045", "0.015", "0.045", "0.15", "0.45"),
    "dogs": ("0.00015", "0.00045", "0.0015", "0.0045", "0.015", "0.045"),
}
STATISTICS = ("batch", "frozen", "recompute")
USAGE = ("configs/transfer_table.py takes BACKBONE,DATASET,LR then options: frozen (= "
         "statistics=frozen), smoke, statistics=batch|frozen|recompute, regimes=a+b, "
         "data=SOURCE:PATH (instead of DATASET: write '-'), size=N, train_examples=N, "
         "eval_examples=N, epochs=X, score_lr=X, swr_beta=X. BACKBONE in {backbones}, DATASET in "
         "{datasets}; e.g. "
         "'ssd,cifar10,0.045' or 'dogs,-,0.0015,data=image_folder:/data/signs,regimes="
         "last_layer+scale_bias_last_layer'. Received: {arg!r}")


def _options(arg):
  parts = [p.strip() for p in (arg or "ssd,cifar10,0.045").split(",") if p.strip()]
  usage = USAGE.format(backbones=BACKBONES, datasets=tuple(DATASETS), arg=arg)
  if len(parts) < 3 or parts[0] not in BACKBONES or (parts[1] not in DATASETS and
                                                      parts[1] != "-"):
    raise ConfigError(usage)
  try:
    lr = float(parts[2])
  except ValueError:
    raise ConfigError(usage) from None
  opts = dict(backbone=parts[0], dataset=parts[1], lr=lr, smoke=False, statistics="batch",
              regimes=",".join(REGIMES), data="", size=SIZE, train_examples=TRAIN_EXAMPLES,
              eval_examples=EVAL_EXAMPLES, epochs=EPOCHS, score_lr=0.0, swr_beta=0.0)
  for item in parts[3:]:
    key, eq, value = item.partition("=")
    if not eq and key in ("smoke", "frozen"):
      opts.update(smoke=True) if key == "smoke" else opts.update(statistics="frozen")
    elif eq and key in ("statistics", "regimes", "data"):
      opts[key] = value.replace("+", ",") if key == "regimes" else value
    elif eq and key in ("size", "train_examples", "eval_examples"):
      opts[key] = int(value)
    elif eq and key in ("epochs", "score_lr", "swr_beta"):
      opts[key] = float(value)
    else:
      raise ConfigError(usage)
  if opts["statistics"] not in STATISTICS:
    raise ConfigError(f"configs/transfer_table.py: statistics must be one of {STATISTICS}. "
                      f"Received: {arg!r}")
  unknown = []
  for r in opts["regimes"].split(","):
    try:
      regime_patch(r)
    except KeyError:
      unknown.append(r)
  if unknown:
    raise ConfigError(f"configs/transfer_table.py: unknown regimes {unknown}. Known: "
                      f"{', '.join(REGIMES)}, taps_lam<N> (lam = N/100), swr_c<N> (c = N/100), "
                      f"top_from_<LAYER>. "
                      f"Received: {arg!r}")
  if (opts["dataset"] == "-") != bool(opts["data"]):
    raise ConfigError(f"configs/transfer_table.py: give DATASET, or '-' with data=SOURCE:PATH. "
                      f"Received: {arg!r}")
  return opts


def get_config(arg="ssd,cifar10,0.045"):
  o = _options(arg)
  data_dir = os.environ.get("K4P1_DATA_DIR", "")
  c = base_config()
  if o["backbone"] == "ssd":
    c.backbone.update(
        name="ssd_mobilenet_v2", input_size=o["size"],
        weights=os.path.join(data_dir, "ssdlite_mobilenet_v2_person", "frozen_inference_graph.pb")
        if data_dir else "")
  else:
    c.backbone.update(
        name="keras_file", input_size=o["size"],
        model_file=os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5")
        if data_dir else "")
  c.train.update(batch_size=32, eval_batch_size=100, checkpoint_every=1000, log_every=10)
  if o["data"]:
    source, _, path = o["data"].partition(":")
    fields = dict(source=source, path=path, augment="none")
  else:
    fields = dict(DATASETS[o["dataset"]])
  for name in o["regimes"].split(","):
    data = dataset_config(**fields, train_examples=o["train_examples"],
                          eval_examples=o["eval_examples"])
    # statistics: where the scale-and-bias patches' BN statistics come from (batch: the
    # target's batch statistics, then recomputed; frozen: the backbone's; recompute: the
    # target's, recomputed first and kept).
    patch = regime_patch(name, o["score_lr"], o["swr_beta"])
    c.tasks[name] = task_config(dataset=data, patch=patch,
                                epochs=o["epochs"],
                                lr=o["lr"], statistics=o["statistics"])
  c.task_order = o["regimes"]
  c.export.enabled = False
  if o["smoke"]:
    c.train.bn_recompute_batches = 2
    for t in c.tasks.values():
      t.dataset.train_examples, t.dataset.eval_examples = 64, 50
      t.epochs, t.steps = 0.0, 2
  return c
