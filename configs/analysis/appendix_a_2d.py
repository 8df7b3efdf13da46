r"""Appendix A: a 2D network fine-tuned with biases, scales and/or logits (Figures 4-6).

Network: 2 -> 8 -> 16 -> 16 -> 8 (ReLU) -> m (embedding, linear) -> 2 logits (sigmoid
cross-entropy). Biases and scales are k4p1's explicit per-channel `channel_scale_bias` patch on
every Dense layer except the logits.

Layouts on [-1, 1]^2 (the paper's are pictures; these have the same property):
  pretrain: class 1 inside either of two disks (centres (-0.5, 0) and (0.5, 0), radius 0.3), so
            the trained embedding folds both disks onto one region;
  transfer: class 1 inside the left disk only: the folded disks must be told apart again.

Run:   python bench/appendix_a_2d.py --out_dir=docs
Smoke: python bench/appendix_a_2d.py --smoke --out_dir=/tmp/appendix_a
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.embedding_dims = (2, 4, 8)
  c.hidden = (8, 16, 16, 8)
  c.train_points = 4000      # uniform samples of the square for training
  c.grid = 101               # evaluation grid is grid x grid
  c.pretrain_steps = 3000
  c.finetune_steps = 2000
  c.lr = 0.01                # Adam, full batch
  c.seed = 0
  c.regimes = ("biases", "scales", "biases_scales", "logits_biases_scales", "logits", "all")
  if arg == "smoke":
    c.embedding_dims = (2,)
    c.train_points, c.grid = 256, 21
    c.pretrain_steps = c.finetune_steps = 5
  return c
