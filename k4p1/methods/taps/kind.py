"""TAPS (Wallingford et al., CVPR 2022): training decides which layers become task-specific.

Every gateable layer (Conv2D, DepthwiseConv2D, Dense, EinsumDense; a MultiHeadAttention's four
projections) of the shared base gets a task-owned weight delta `dw` (zeros at first) and one
scalar score `s`; the task's layer computes with

    w = w_base + I(s >= tau) * dw

and the task's loss gains `lam / L * sum_i |s_i|` (L: the number of gated units), so training
turns layers off unless their delta pays for itself. The gate's gradient is straight-through:
d w / d s = dw, the derivative of `w_base + s * dw` (the paper's Eq. 3 and Algorithm 1).
A layer whose score ends below tau costs nothing: its delta is left out of the patch file and
folding gives the base kernel back.

The delta mechanism itself (the effective kernel, patch-file omissions, merging for
deployment) is k4p1.patches.delta.GatedDeltaPatch, which SWR shares.

Where k4p1 follows the paper and where the authors' code (MattWallingford/TAPS):
  - L1 term: lam / L with L the number of gated layers (the paper's Eq. 3; default
    `l1_divisor=0`). The code divides by a constant 52 whatever the network; set
    `l1_divisor=52` for that. Dividing by L keeps lam's meaning across backbones.
  - initial score: 0.15, just above tau = 0.1 (the code's INITIALIZATION; the paper's Algorithm 2
    starts at 1.0, which takes ~6x longer to switch a layer off in a short run).
  - L1 warm-up: no penalty for the first `warmup_steps` steps (the code's warmup_epochs).
  - which layers: every conv and dense layer of the base (the paper gates ResNet's convs); the
    task's classifier is trained in full with `last_layer`, BN with `scale_bias` (task-specific
    BN, as in the paper).

Example:
  patch = parse_patch("taps(lam=0.5),scale_bias,last_layer")
  gated = [l for l in patch_layers_of(model) if isinstance(l, TapsPatch)]
  [l.base_name for l in gated if l.active]     # the task-specific layers
"""

from __future__ import annotations

import dataclasses

import keras

from k4p1.patches.base import PATCH_KINDS, PatchKind
from k4p1.patches.delta import (GATEABLE, MHA_UNITS, GatedDeltaPatch, base_kernel,  # noqa: F401
                               gated_units)

@dataclasses.dataclass(frozen=True)
class TapsOptions:
  """Options of the `taps` patch kind, e.g. `taps(lam=0.25,tau=0.1)`.

  Attributes:
    lam: lambda, the L1 weight on the scores (the paper sweeps 0.25-1.0; 0: no pressure).
    tau: the gate's threshold: a layer is task-specific while its score is >= tau.
    init: every score's initial value (>= tau: every layer starts on, with a zero delta).
    l1_divisor: the L1 term is lam / l1_divisor * sum|s|; 0 divides by the number of gated
      layers (the paper), the authors' code uses 52.
    score_lr: the scores' learning rate (0: the task's).
    warmup_steps: steps trained without the L1 term.
  """
  lam: float = 0.5
  tau: float = 0.1
  init: float = 0.15
  l1_divisor: float = 0.0
  score_lr: float = 0.0
  warmup_steps: int = 0

  def __post_init__(self):
    if not self.lam >= 0:
      raise ValueError(f"lam (the L1 weight) must be >= 0. Received: lam={self.lam}")
    if not 0 < self.tau <= 1:
      raise ValueError(f"tau must be in (0, 1]: the threshold a score must reach for its layer "
                       f"to be task-specific. Received: tau={self.tau}")
    if not self.init >= self.tau:
      raise ValueError(f"init must be >= tau, or no layer starts on and none can turn on (a "
                       f"gated-off delta gets no gradient). Received: init={self.init}, "
                       f"tau={self.tau}")
    if not self.l1_divisor >= 0 or not self.score_lr >= 0 or self.warmup_steps < 0:
      raise ValueError(f"l1_divisor, score_lr and warmup_steps must be >= 0. Received: "
                       f"l1_divisor={self.l1_divisor}, score_lr={self.score_lr}, "
                       f"warmup_steps={self.warmup_steps}")


def gate(score, tau: float):
  """I(score >= tau) forward, gradient 1 backward (straight-through); exactly 0 or 1."""
  ops = keras.ops
  indicator = ops.cast(ops.greater_equal(score, tau), score.dtype)
  return indicator + (score - ops.stop_gradient(score))


@keras.saving.register_keras_serializable(package="k4p1")
class TapsPatch(GatedDeltaPatch):
  """A shared layer computing with `w_base + I(s >= tau) * dw` for one task, per gated unit.

  Each unit has a score (`score`, or `score_query`, ... for an attention layer's projections).

  Args:
    layer: the shared layer (Conv2D, DepthwiseConv2D, Dense, EinsumDense or
      MultiHeadAttention); never modified.
    task: the task owning the scores and deltas.
    tau, init: see TapsOptions.
  """

  kind = "taps"

  def __init__(self, layer, task: str, base_name: str = "", tau: float = 0.1,
               init: float = 0.15, **kwargs):
    super().__init__(layer, task, base_name, **kwargs)
    self.tau = float(tau)
    self.init = float(init)

  def build(self, input_shape=None):
    self.scores = []
    super().build(input_shape)

  def _build_gate(self, suffix: str, index: int):
    self.scores.append(self.add_weight(name=f"score{suffix}", shape=(),
                                       initializer=keras.initializers.Constant(self.init)))
    setattr(self, f"score_{index}", self.scores[-1])

  @property
  def score(self):
    """The score of a single-unit layer (conv/dense)."""
    return self.scores[0]

  def unit_gates(self, gates=None) -> list:
    """I(s >= tau) per unit, straight-through (TAPS has no gate input)."""
    return [gate(score, self.tau) for score in self.scores]

  @property
  def active_units(self) -> list[bool]:
    return [float(keras.ops.convert_to_numpy(s)) >= self.tau for s in self.scores]

  def init_from_base(self, base):
    for score, delta in zip(self.scores, self.deltas):
      score.assign(self.init)
      delta.assign(keras.ops.zeros_like(delta))

  def own_variables(self) -> list:
    return self.scores + self.deltas

  def learned_variables(self) -> list:
    return self.scores + self.deltas

  def get_config(self):
    return {**super().get_config(), "tau": self.tau, "init": self.init}


def penalty(layers: list, options: TapsOptions, step=None):
  """The task's L1 term, lam / L * sum |s| (0 during the first `warmup_steps` steps)."""
  ops = keras.ops
  scores = [s for layer in layers if isinstance(layer, TapsPatch) for s in layer.scores]
  if not scores or options.lam == 0:
    return None
  divisor = options.l1_divisor or len(scores)  # L: gated units (a layer, or an MHA projection)
  term = (options.lam / divisor) * ops.sum(ops.stack([ops.abs(s) for s in scores]))
  if options.warmup_steps and step is not None:
    term = ops.where(ops.greater_equal(step, options.warmup_steps), term, ops.zeros_like(term))
  return term


def _describe(options: TapsOptions) -> str:
  return f" (lam {options.lam:g}, tau {options.tau:g})"


PATCH_KINDS.register("taps", PatchKind(
    name="taps",
    description="TAPS: a gated weight delta per conv/dense layer, w + I(s >= tau) dw; an L1 "
                "penalty on the scores picks which layers become task-specific",
    targets=GATEABLE,
    build=lambda layer, task, options: TapsPatch(layer, task=task, base_name=layer.name,
                                                 tau=options.tau, init=options.init),
    options=TapsOptions,
    conflicts=("depthwise",),
    target_text="Conv2D, DepthwiseConv2D, Dense, EinsumDense or MultiHeadAttention",
    describe=_describe,
    penalty=penalty,
    rate=lambda layer, options: (("scores", list(layer.scores), options.score_lr)
                                 if options.score_lr else None),
    order=25))
