r"""Keyword spotting: a patch (or full fine-tuning) of a KWS backbone on 16 kHz audio.

The task model takes raw waveforms: a log-mel frontend (40 bands, 30 ms windows, 10 ms hop;
SpecAugment masks while training) feeds BC-ResNet or Res15 (k4p1/backbones/audio.py). Training
adds a random time shift and background noise (dataset.augment=kws).

ARG: an optional variant, then key=value options, comma separated:
  (default)  BC-ResNet-8 on the real Speech Commands subset in $K4P1_DATA_DIR (600 clips, 12
             classes), 5-fold (fold 0 evaluated), scale-and-bias patch + classifier
  smoke      BC-ResNet-1 for a few steps (the subset, or generated keywords without it)
  pretrain   train the whole backbone and a classifier from scratch (the multilingual
             pretraining: data=CORPUS/pretrain from bench/make_kws_corpus.py); the run's
             base.weights.h5 is what configs/swr_kws.py transfers (weights=)
  options:   backbone (bc_resnet | res15), tau (BC-ResNet width, 8), weights (none or a
             base.weights.h5 of a pretraining run), patch ('scale_bias,last_layer'), data
             (subset | synthetic | tfds: speech_commands | a WAV folder path), folds (5),
             fold (0), epochs (30), steps (0: epochs), lr (0.001, Adam), batch (32)

Run:
  python train.py --config=configs/kws.py:smoke --workdir=/tmp/k4p1_kws_smoke
  K4P1_DATA_DIR=../shared/data python train.py --config=configs/kws.py:patch=full,lr=0.0005 \
      --workdir=/tmp/k4p1_kws
  python train.py --config=configs/kws.py:data=tfds,folds=0,epochs=30 --workdir=/tmp/kws_gsc
  python bench/make_kws_corpus.py --out=/tmp/kws_corpus
  python train.py --config=configs/kws.py:pretrain,data=/tmp/kws_corpus/pretrain,epochs=20 \
      --workdir=/tmp/kws_pretrain
"""

import os

from k4p1.config import ConfigError, base_config, dataset_config, parse_arg, task_config

SUBSET = os.path.join("speech_commands_subset", "speech_commands_test_v0.02_subset.tar.gz")


def have_subset() -> bool:
  """Whether the real Speech Commands subset is in $K4P1_DATA_DIR."""
  root = os.environ.get("K4P1_DATA_DIR", "")
  return bool(root) and os.path.exists(os.path.join(root, SUBSET))


def kws_dataset(data: str, folds: int = 5, fold: int = 0, **overrides):
  """The dataset section for `data`: subset, synthetic, tfds (speech_commands) or a WAV folder."""
  if data == "subset":
    d = dataset_config(source="speech_commands_subset", folds=folds, fold=fold)
  elif data == "synthetic":
    d = dataset_config(source="synthetic_keywords", folds=folds, fold=fold)
  elif data == "tfds":
    d = dataset_config(source="tfds", name="speech_commands", train_split="train",
                       eval_split="test")
  elif data:  # a WAV folder: split folders (ROOT/train, ROOT/test) or k-fold
    split = os.path.isdir(os.path.join(data, "train"))
    d = dataset_config(source="wav_folder", path=data, folds=0 if split else folds,
                       fold=0 if split else fold)
  else:
    raise ConfigError("configs/kws.py: data must be subset, synthetic, tfds or a WAV folder.")
  d.update(augment="kws", **overrides)
  return d


def kws_base(backbone: str = "bc_resnet", tau: float = 8.0, weights: str = "none",
             lr: float = 0.001, batch: int = 32):
  """base_config() for a KWS backbone: 1 s clips at 16 kHz, SpecAugment on, Adam."""
  if backbone not in ("bc_resnet", "res15"):
    raise ConfigError(f"configs/kws.py: backbone must be bc_resnet or res15. Received: "
                      f"{backbone!r}")
  c = base_config()
  c.backbone.update(name=backbone, alpha=tau if backbone == "bc_resnet" else 1.0,
                    input_size=16000, weights=weights)
  c.backbone.audio.update(freq_masks=2, freq_mask_bands=5, time_masks=2, time_mask_frames=10)
  c.optimizer.update(name="adam", lr=lr, decay_rate=1.0)
  c.train.update(batch_size=batch, eval_batch_size=100, log_every=20, checkpoint_every=500)
  return c


def get_config(arg=None):
  a = parse_arg(arg, positional="variant", variant="", backbone="bc_resnet", tau=8.0,
                weights="none", patch="scale_bias,last_layer", data="", folds=5, fold=0,
                epochs=30.0, steps=0, lr=0.001, batch=32)
  if a.variant not in ("", "smoke", "pretrain"):
    raise ConfigError(f"configs/kws.py: unknown variant {a.variant!r} (smoke, pretrain, or "
                      f"key=value options).")
  smoke = a.variant == "smoke"
  data = a.data or ("subset" if have_subset() or not smoke else "synthetic")
  tau = 1.0 if smoke and a.tau == 8.0 else a.tau
  c = kws_base(a.backbone, tau, a.weights, a.lr, 16 if smoke else a.batch)
  dataset = kws_dataset(data, a.folds, a.fold)
  pretrain = a.variant == "pretrain"
  c.tasks.kws = task_config(dataset=dataset, patch="last_layer" if pretrain else a.patch,
                            train_base=pretrain, epochs=a.epochs,
                            steps=12 if smoke and not a.steps else a.steps)
  if smoke:
    c.train.update(bn_recompute_batches=4, log_every=4)
  return c
