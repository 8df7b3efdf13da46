"""The scale-and-bias patch (the paper's S/B patch) and its statistics-only variant.

`scale_bias`: a task's own BatchNormalization at every BN layer: gamma, beta and moving
statistics. Its `statistics` option says where the statistics come from:
  batch      normalise with batch statistics while training, then recompute the moving
             statistics on the target (the paper);
  frozen     keep the backbone's statistics (gamma and beta still learn; faster);
  recompute  recompute the statistics on the target first, then keep them while gamma and beta
             learn (normalisation fitted to the target, training as fast as `frozen`).
InceptionV3's BN has no gamma: the patch adds one (ones).
`bn_stats`: the same layer with nothing learned: only the statistics are the task's,
recomputed (the paper's Table 6 baseline).

Example:
  patch = ScaleBiasPatch.from_base(model.get_layer("bn_Conv1"), task="flowers",
                                   statistics="frozen")
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from k4p1.patches.base import PATCH_KINDS, PatchKind, PatchLayer
from k4p1.patches.batchnorm import FusedBatchNormalization

STATISTICS = ("batch", "frozen", "recompute")


@keras.saving.register_keras_serializable(package="k4p1")
class ScaleBiasPatch(PatchLayer, FusedBatchNormalization):
  """A task's own BatchNormalization.

  Args:
    task: task name.
    base_name: name of the base BatchNormalization it replaces.
    statistics: 'batch' or 'frozen' (see the module docstring).
    learn: train gamma and beta (False: statistics-only patch, kind 'bn_stats').
    **kwargs: BatchNormalization arguments (axis, momentum, epsilon, ...).
  """

  kind = "scale_bias"

  def __init__(self, task: str, base_name: str = "", statistics: str = "batch",
               learn: bool = True, **kwargs):
    kwargs["scale"] = True   # InceptionV3's BN has no gamma: the patch adds one.
    kwargs["center"] = True
    super().__init__(**kwargs)
    if statistics not in STATISTICS:
      raise ValueError(f"statistics must be one of {STATISTICS}. Received: "
                       f"statistics={statistics!r}")
    self._init_patch(task, base_name)
    self.statistics = statistics
    self.learn = learn
    self.recomputing = False  # set by k4p1.model.recompute_batch_statistics
    if not learn:
      self.kind = "bn_stats"

  @classmethod
  def from_base(cls, base: keras.layers.BatchNormalization, task: str, statistics="batch",
                learn=True) -> "ScaleBiasPatch":
    config = base.get_config()
    for key in ("name", "scale", "center", "trainable"):
      config.pop(key, None)
    return cls(task=task, base_name=base.name, statistics=statistics, learn=learn,
               name=cls.patch_name(base.name, task), **config)

  def build(self, input_shape):
    super().build(input_shape)
    if not self.learn:
      self.gamma.trainable = False
      self.beta.trainable = False

  def init_from_base(self, base: keras.layers.BatchNormalization):
    channels = base.moving_mean.shape
    self.gamma.assign(base.gamma if base.scale else np.ones(channels, "float32"))
    self.beta.assign(base.beta if base.center else np.zeros(channels, "float32"))
    self.moving_mean.assign(base.moving_mean)
    self.moving_variance.assign(base.moving_variance)

  def learned_variables(self) -> list:
    return [self.gamma, self.beta] if self.learn else []

  @property
  def uses_batch_statistics(self) -> bool:
    """Whether training normalises with batch statistics (then they are recomputed after)."""
    return self.statistics == "batch"

  @property
  def recomputes_statistics_first(self) -> bool:
    """Whether the statistics are recomputed on the target before training (then kept)."""
    return self.statistics == "recompute"

  def call(self, inputs, training=None, mask=None):
    if self.statistics in ("frozen", "recompute") and not self.recomputing:
      training = False
    return super().call(inputs, training=training, mask=mask)

  def get_config(self):
    config = super().get_config()
    config.pop("scale", None)
    config.pop("center", None)
    return {**config, **self._patch_config(), "statistics": self.statistics, "learn": self.learn}


@dataclasses.dataclass(frozen=True)
class ScaleBiasOptions:
  """Attributes:
    statistics: 'batch' (normalise with batch statistics while training; the paper),
      'frozen' (keep the backbone's statistics; gamma and beta still learn; faster) or
      'recompute' (recompute them on the target first, then keep them).
  """
  statistics: str = "batch"

  def __post_init__(self):
    if self.statistics not in STATISTICS:
      raise ValueError(f"statistics must be one of {STATISTICS}. "
                       f"Received: statistics={self.statistics!r}")


PATCH_KINDS.register("scale_bias", PatchKind(
    name="scale_bias",
    description="per-task BN gamma, beta and moving statistics (the paper's S/B patch)",
    targets=(keras.layers.BatchNormalization,),
    build=lambda layer, task, options: ScaleBiasPatch.from_base(
        layer, task, options.statistics, learn=True),
    options=ScaleBiasOptions,
    conflicts=("bn_stats",),
    target_text="BatchNormalization",
    describe=lambda options: f" ({options.statistics} stats)",
    fixed_note="statistics",
    order=10))

PATCH_KINDS.register("bn_stats", PatchKind(
    name="bn_stats",
    description="per-task BN moving statistics only, recomputed, nothing learned (Table 6 "
                "baseline)",
    targets=(keras.layers.BatchNormalization,),
    build=lambda layer, task, options: ScaleBiasPatch.from_base(layer, task, "batch", learn=False),
    conflicts=("scale_bias",),
    target_text="BatchNormalization",
    fixed_note="statistics",
    order=20))
