"""TAPS (Wallingford et al., CVPR 2022): training decides which layers become task-specific.

Every gateable layer (Conv2D, DepthwiseConv2D, Dense, EinsumDense) of the shared base gets a
task-owned weight delta `dw` (zeros at first) and one scalar score `s`; the task's layer
computes with

    w = w_base + I(s >= tau) * dw

and the task's loss gains `lam / L * sum_i |s_i|` (L: the number of gated layers), so training
turns layers off unless their delta pays for itself. The gate's gradient is straight-through:
d w / d s = dw, the derivative of `w_base + s * dw` (the paper's Eq. 3 and Algorithm 1).
A layer whose score ends below tau costs nothing: its delta is left out of the patch file and
folding gives the base kernel back.

Like Keras's LoRA (keras/src/layers/core/dense.py), the effective weight is a `kernel` property
and the wrapped layer's `call` is unchanged: it runs with its kernel variable read as the
effective kernel (a `keras.StatelessScope`), so the base kernel stays shared and untouched.

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
import numpy as np

from k4p1.patches.base import PATCH_KINDS, PatchKind, PatchLayer, to_plain

GATEABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
            keras.layers.EinsumDense)


def base_kernel(layer):
  """The kernel variable of a conv/dense layer (Keras keeps it in `_kernel` behind a `kernel`
  property, except in DepthwiseConv2D)."""
  return layer._kernel if hasattr(layer, "_kernel") else layer.kernel


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
class TapsPatch(PatchLayer, keras.layers.Wrapper):
  """A shared conv/dense layer computing with `w_base + I(s >= tau) * dw` for one task.

  Args:
    layer: the shared layer (Conv2D, DepthwiseConv2D, Dense or EinsumDense); never modified.
    task: the task owning `score` and `delta`.
    tau, init: see TapsOptions.
  """

  kind = "taps"

  def __init__(self, layer, task: str, base_name: str = "", tau: float = 0.1,
               init: float = 0.15, **kwargs):
    if not isinstance(layer, GATEABLE):
      raise ValueError(f"TAPS gates {', '.join(c.__name__ for c in GATEABLE)} layers; "
                       f"{layer.name!r} is a {type(layer).__name__}.")
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
      raise ValueError(f"TAPS cannot gate {layer.name!r}: it has LoRA or quantization enabled.")
    kwargs.setdefault("name", self.patch_name(layer.name, task))
    super().__init__(layer, **kwargs)
    self._init_patch(task, base_name or layer.name)
    self.tau = float(tau)
    self.init = float(init)

  def build(self, input_shape=None):
    if not self.layer.built:
      self.layer.build(input_shape)
    self.score = self.add_weight(name="score", shape=(),
                                 initializer=keras.initializers.Constant(self.init))
    self.delta = self.add_weight(name="delta", shape=base_kernel(self.layer).shape,
                                 initializer="zeros")
    self.built = True

  @property
  def kernel(self):
    """The effective kernel: w_base + I(s >= tau) * dw."""
    return base_kernel(self.layer) + gate(self.score, self.tau) * self.delta

  @property
  def active(self) -> bool:
    """Whether the layer is task-specific now (eager)."""
    return bool(float(keras.ops.convert_to_numpy(self.score)) >= self.tau)

  @property
  def delta_size(self) -> int:
    """Parameters the layer adds to its task while active."""
    return int(np.prod(base_kernel(self.layer).shape))

  def call(self, inputs, training=None):
    with keras.StatelessScope(state_mapping=[(base_kernel(self.layer), self.kernel)]):
      return self.layer(inputs)

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def init_from_base(self, base):
    self.score.assign(self.init)
    self.delta.assign(keras.ops.zeros_like(self.delta))

  def own_variables(self) -> list:
    return [self.score, self.delta]

  def learned_variables(self) -> list:
    return [self.score, self.delta]

  def omitted_variables(self) -> list:
    """What a patch file may leave out: an inactive layer's delta (it changes no output)."""
    return [] if self.active else [self.delta]

  def to_plain(self, name: str) -> keras.layers.Layer:
    """The wrapped layer's plain copy with the delta merged in while the gate is on."""
    plain = to_plain(self.layer, name)
    if self.active:
      base_kernel(plain).assign(keras.ops.convert_to_numpy(base_kernel(self.layer)) +
                           keras.ops.convert_to_numpy(self.delta))
    return plain

  def get_config(self):
    return {**super().get_config(), **self._patch_config(), "tau": self.tau, "init": self.init}


def penalty(layers: list, options: TapsOptions, step=None):
  """The task's L1 term, lam / L * sum |s| (0 during the first `warmup_steps` steps)."""
  ops = keras.ops
  gated = [layer for layer in layers if isinstance(layer, TapsPatch)]
  if not gated or options.lam == 0:
    return None
  divisor = options.l1_divisor or len(gated)
  term = (options.lam / divisor) * ops.sum(ops.stack([ops.abs(l.score) for l in gated]))
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
    target_text="Conv2D, DepthwiseConv2D, Dense or EinsumDense",
    describe=_describe,
    penalty=penalty,
    rate=lambda layer, options: (("scores", [layer.score], options.score_lr)
                                 if options.score_lr else None),
    order=25))
