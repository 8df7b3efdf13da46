r"""SWR (scalable weight reparametrization) on keyword spotting: the paper's main setting.

A policy network conditioned on a target cost c picks which layers of a pretrained KWS backbone
get a task-specific weight delta (w + p dw, k4p1/methods/swr/kind.py); training has two stages:
the super-net (every layer reparametrized) then the policy (super-net frozen, c drawn from a
range), then the reparametrization (policy frozen and binarized at c, fresh zero deltas, only
the selected ones train). BN: running statistics updated, affine frozen (`bn=stats`, the
paper) or also the affine parameters (`bn=affine`). Adam with a cosine schedule.

ARG: an optional variant, then key=value options, comma separated:
  (default)  BC-ResNet-8 -> the real Speech Commands subset in $K4P1_DATA_DIR (5-fold, fold 0):
             give the pretrained backbone with weights=WORKDIR/base.weights.h5 (a
             configs/kws.py:pretrain run; random weights otherwise)
  smoke      a few minutes on 2 cores: a BC-ResNet-1 is pretrained for a few steps on generated
             keywords, then SWR transfers it to the subset (generated keywords when
             $K4P1_DATA_DIR lacks it): both stages, then a SavedModel taking 16 kHz waveforms
  options:   c (0.3), backbone (bc_resnet | res15), tau (8), weights, data (subset | synthetic
             | tfds | a WAV folder), folds (5), fold (0), bn (stats | affine), staged (true),
             init (zero | supernet), weighting (params | uniform), beta (1.0), epochs (30:
             each stage's length, as the paper's 30 fine-tuning epochs), supernet / policy /
             reparam (1.0 each: a stage's length in `epochs`; supernet=0 trains the policy on
             the base itself, Figure 2a's "without super-net"), lr (0.001), batch (32),
             stage1 (the WORKDIR of an SWR run with the same options but another c: start
             from its super-net and policy, WORKDIR/swr_stage1/kws, and train stage 2 only)

Run:
  python train.py --config=configs/swr_kws.py --mode=params --workdir=/tmp/k4p1_swr
  python train.py --config=configs/swr_kws.py:smoke --workdir=/tmp/k4p1_swr_smoke
  K4P1_DATA_DIR=../shared/data python train.py \
      --config=configs/swr_kws.py:c=0.1,weights=/tmp/kws_pretrain/base.weights.h5 \
      --workdir=/tmp/k4p1_swr_c01
  # the same super-net and policy at c = 0.5: stage 2 only
  K4P1_DATA_DIR=../shared/data python train.py --config=configs/swr_kws.py:c=0.5,\
weights=/tmp/kws_pretrain/base.weights.h5,stage1=/tmp/k4p1_swr_c01 --workdir=/tmp/k4p1_swr_c05
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from k4p1.config import ConfigError, parse_arg, task_config  # noqa: E402
from kws import have_subset, kws_base, kws_dataset  # noqa: E402


def swr_patch(c: float, bn: str = "stats", staged: bool = True, init: str = "zero",
              weighting: str = "params", beta: float = 1.0, **stages) -> str:
  """'swr(c=...,...),bn_stats,last_layer' (bn=stats: the paper) or '...,scale_bias,...'."""
  if bn not in ("stats", "affine"):
    raise ConfigError(f"configs/swr_kws.py: bn must be stats (running statistics updated, "
                      f"affine frozen: the paper) or affine. Received: {bn!r}")
  options = dict(c=c, staged=str(staged).lower(), init=init, weighting=weighting, beta=beta,
                 **stages)
  inner = ",".join(f"{k}={v}" for k, v in options.items())
  return f"swr({inner}),{'bn_stats' if bn == 'stats' else 'scale_bias'},last_layer"


def get_config(arg=None):
  a = parse_arg(arg, positional="variant", variant="", c=0.3, backbone="bc_resnet", tau=8.0,
                weights="none", data="", folds=5, fold=0, bn="stats", staged=True,
                init="zero", weighting="params", beta=1.0, epochs=30.0, lr=0.001, batch=32,
                supernet=1.0, policy=1.0, reparam=1.0, stage1="")
  if a.variant not in ("", "smoke"):
    raise ConfigError(f"configs/swr_kws.py: unknown variant {a.variant!r} (smoke, or key=value "
                      f"options).")
  smoke = a.variant == "smoke"
  data = a.data or ("subset" if have_subset() or not smoke else "synthetic")
  c = kws_base(a.backbone, 1.0 if smoke and a.tau == 8.0 else a.tau, a.weights, a.lr,
               16 if smoke else a.batch)
  c.optimizer.schedule = "cosine"
  stages = {k: getattr(a, k) for k in ("supernet", "policy", "reparam") if getattr(a, k) != 1.0}
  patch = swr_patch(a.c, a.bn, a.staged, a.init, a.weighting, a.beta, **stages)
  if a.stage1:  # k4p1.methods.swr.train.STAGE1_DIR (not imported: configs load before TensorFlow)
    c.train.init_from = os.path.join(a.stage1, "swr_stage1", "kws")
  if smoke:
    # The base first learns generated keywords (every weight), then SWR transfers it.
    c.tasks.pretrain = task_config(
        dataset=kws_dataset("synthetic", 5, 0, train_examples=240, eval_examples=60),
        patch="last_layer", train_base=True, steps=24)
    c.tasks.kws = task_config(dataset=kws_dataset(data, a.folds, a.fold), patch=patch,
                              steps=10)
    c.task_order = "pretrain,kws"
    c.export.tasks = "kws"
    c.train.update(bn_recompute_batches=4, log_every=5, checkpoint_every=50)
    return c
  c.tasks.kws = task_config(dataset=kws_dataset(data, a.folds, a.fold), patch=patch,
                            epochs=a.epochs)
  return c
