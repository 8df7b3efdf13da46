"""SWR (scalable weight reparametrization): a cost-conditioned policy picks the layers to reparametrize.

Every gateable layer of the shared base (conv, dense; BN excluded) computes with

    w' = w + p * dw        (dw zero-initialised; p in {0, 1} per layer)

like TAPS's gated delta (k4p1/patches/delta.py: the same GatedDeltaPatch), but p comes from a
policy network conditioned on a target cost c, the ratio of added parameters to the base:
three linear layers with ReLU, c -> two logits per layer, a hard Gumbel-softmax while training
(temperature cosine-annealed from 2 to 0.5), binarized at 0.5 afterwards. Training has two
stages (train.py, beside this file):

  1. super-net: every p = 1; the deltas (and classifier) learn the task. Then the policy: the
     super-net frozen, c drawn from [c_min, c_max] each step, loss = task loss + beta * cost
     loss, the cost loss (sum_l w_l q_l - c)^2 with q_l the softmax (not Gumbel) probability of
     reparametrizing layer l and w_l = n_l / sum n its share of the parameters (Eq. 2).
  2. reparametrization: the policy frozen and binarized at the target c; fresh zero deltas;
     only the selected deltas (and the classifier) train.

The policy's gates reach the layers as a graph input (the model is re-cloned with a `gates`
input, k4p1.patches.conditioning), so gradients flow from both losses to the policy. After
training each layer keeps its decision (a fixed `gate` variable, 0 or 1): an unselected layer's
delta is exactly zero, left out of the patch file, and folding merges the selected ones (zero
inference overhead). BN: combine with `bn_stats` (running statistics updated, affine frozen:
the paper) or `scale_bias` (the affine variant of its Table 2).

Example:
  patch = parse_patch("swr(c=0.3),bn_stats,last_layer")
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from k4p1.patches.base import PATCH_KINDS, PatchKind
from k4p1.patches.delta import GATEABLE, GatedDeltaPatch

WEIGHTINGS = ("params", "uniform")
INITS = ("zero", "supernet")


@dataclasses.dataclass(frozen=True)
class SwrOptions:
  """Options of the `swr` patch kind, e.g. `swr(c=0.1,beta=1)`.

  Attributes:
    c: the target cost of the deployed task: its added parameters / the base's.
    c_min, c_max: the range target costs are drawn from while the policy trains.
    beta: the cost loss's weight.
    weighting: `params` (w_l = n_l / sum n: the paper) or `uniform` (every layer 1 / L: the
      fraction of layers; Figure 2a's ablation).
    hidden: the policy network's hidden width.
    t_start, t_end: the Gumbel-softmax temperature, cosine-annealed from t_start to t_end.
    policy_lr: the policy network's learning rate (Adam).
    cost_samples: target costs each policy step averages the cost loss over (the first also
      drives the task loss).
    policy_bn: how the frozen super-net's BN normalises while the policy trains: `frozen`
      (its moving statistics, fitted with every layer reparametrized) or `batch` (batch
      statistics, which follow the sampled gates; only the statistics move).
    supernet, policy, reparam: each stage's share of the task's steps (epochs or steps):
      super-net training, policy training, reparametrization. 0 skips the super-net (the
      Table 2 ablation trains the policy on a super-net of zero deltas).
    staged: False co-optimizes the policy and the deltas in one stage (Table 2's "not
      staged"), then keeps the selected deltas as trained.
    init: stage 2's deltas start at `zero` (the paper) or from the `supernet`'s.
  """
  c: float = 0.3
  c_min: float = 0.05
  c_max: float = 0.95
  beta: float = 1.0
  weighting: str = "params"
  hidden: int = 64
  t_start: float = 2.0
  t_end: float = 0.5
  policy_lr: float = 0.01
  cost_samples: int = 16
  policy_bn: str = "frozen"
  supernet: float = 1.0
  policy: float = 1.0
  reparam: float = 1.0
  staged: bool = True
  init: str = "zero"

  def __post_init__(self):
    for name in ("c", "c_min", "c_max"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a ratio of added parameters to the base: it must be in "
                         f"[0, 1]. Received: {name}={value}")
    if self.c_min > self.c_max:
      raise ValueError(f"c_min must be <= c_max. Received: c_min={self.c_min}, "
                       f"c_max={self.c_max}")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"weighting must be one of {WEIGHTINGS}. Received: {self.weighting!r}")
    if self.policy_bn not in ("frozen", "batch"):
      raise ValueError(f"policy_bn must be frozen or batch. Received: {self.policy_bn!r}")
    if self.init not in INITS:
      raise ValueError(f"init must be one of {INITS}. Received: {self.init!r}")
    if self.beta < 0 or self.hidden < 1 or not 0 < self.t_end <= self.t_start:
      raise ValueError(f"beta must be >= 0, hidden >= 1 and 0 < t_end <= t_start. Received: "
                       f"beta={self.beta}, hidden={self.hidden}, t_start={self.t_start}, "
                       f"t_end={self.t_end}")
    if self.cost_samples < 1:
      raise ValueError(f"cost_samples must be >= 1. Received: {self.cost_samples}")
    if self.policy_lr <= 0 or min(self.supernet, self.policy, self.reparam) < 0:
      raise ValueError(f"policy_lr must be > 0 and the stage shares >= 0. Received: "
                       f"policy_lr={self.policy_lr}, supernet={self.supernet}, "
                       f"policy={self.policy}, reparam={self.reparam}")
    if self.policy == 0 or (self.staged and self.reparam == 0):
      raise ValueError(f"The policy stage (policy > 0) and, when staged, the reparametrization "
                       f"stage (reparam > 0) need steps. Received: policy={self.policy}, "
                       f"reparam={self.reparam}")


@keras.saving.register_keras_serializable(package="k4p1")
class SwrPatch(GatedDeltaPatch):
  """A shared layer computing with `w + p * dw` for one task; p per gated unit is the
  policy's, from a `gates` vector the layer is called with (gates[gate_index + unit]), or its
  stored decision (`gate` variables, 0 or 1; 1 at first: the super-net).

  Args:
    layer: the shared layer (conv, dense); never modified.
    task: the task owning the deltas.
  """

  kind = "swr"

  def build(self, input_shape=None):
    self.gates = []
    self.gate_index = getattr(self, "gate_index", 0)
    super().build(input_shape)

  def _build_gate(self, suffix: str, index: int):
    self.gates.append(self.add_weight(name=f"gate{suffix}", shape=(), trainable=False,
                                      initializer="ones"))
    setattr(self, f"gate_{index}", self.gates[-1])

  def unit_gates(self, gates=None) -> list:
    if gates is None:
      return list(self.gates)
    return [gates[self.gate_index + i] for i in range(len(self.deltas))]

  @property
  def active_units(self) -> list[bool]:
    return [float(keras.ops.convert_to_numpy(g)) >= 0.5 for g in self.gates]

  def set_decisions(self, decisions):
    """Stores each unit's decision (bool or 0/1): the deployed policy."""
    for g, on in zip(self.gates, decisions):
      g.assign(1.0 if on else 0.0)

  def init_from_base(self, base):
    for g, delta in zip(self.gates, self.deltas):
      g.assign(1.0)
      delta.assign(keras.ops.zeros_like(delta))

  def own_variables(self) -> list:
    return self.gates + self.deltas

  def learned_variables(self) -> list:
    return list(self.deltas)


def swr_layers(layers) -> list[SwrPatch]:
  """The SWR layers among a task's patch layers, in graph order."""
  return [layer for layer in layers if isinstance(layer, SwrPatch)]


# ---------------------------------------------------------------------------
# The policy network and its decisions (training is train.py's, beside this file).


def build_policy(units: int, hidden: int = 64, seed: int = 0) -> keras.Model:
  """The policy network: target cost c [batch, 1] -> logits [batch, units, 2] (three linear
  layers, ReLU in between). Logit 0 of a unit is 'reparametrize', logit 1 'keep the base'."""
  init = lambda i: keras.initializers.GlorotUniform(seed=seed * 7 + i)  # noqa: E731
  c = keras.Input((1,), name="target_cost")
  x = keras.layers.Dense(hidden, activation="relu", kernel_initializer=init(0),
                         name="policy_1")(c)
  x = keras.layers.Dense(hidden, activation="relu", kernel_initializer=init(1),
                         name="policy_2")(x)
  x = keras.layers.Dense(2 * units, kernel_initializer=init(2), name="policy_logits")(x)
  return keras.Model(c, keras.layers.Reshape((units, 2), name="per_layer")(x),
                     name="swr_policy")


def reparametrize_probability(logits):
  """softmax(z)[0] per unit: the policy's probability of reparametrizing it (no noise)."""
  return tf.nn.softmax(logits, axis=-1)[..., 0]


def unit_sizes(models, task: str) -> list[int]:
  """Parameters each SWR unit adds when reparametrized, in gate order."""
  return [size for layer in swr_layers(task_layers(models, task)) for size in layer.unit_sizes]


def layer_weights(models, task: str, weighting: str = "params") -> np.ndarray:
  """w_l: each unit's share of the reparametrizable parameters (`params`: n_l / sum n, the
  paper), or 1 / L (`uniform`)."""
  sizes = np.array(unit_sizes(models, task), np.float64)
  if weighting == "uniform":
    return np.full(len(sizes), 1.0 / len(sizes))
  return sizes / sizes.sum()


def base_size(models) -> int:
  """The base's learned weights (BN statistics not counted, as the papers count parameters):
  the denominator of the ratio c."""
  return sum(int(np.prod(v.shape)) for v in models.shared_learnable_variables())


def task_layers(models, task: str) -> list:
  """Task `task`'s patch layers in graph order."""
  return [layer for layer, _, _ in models.tasks[task].patched.patch_layers]


def options_of(models, task: str) -> SwrOptions:
  from k4p1 import patches
  return patches.options(models.tasks[task].spec.patch, "swr")


def decisions(models, task: str, c: float) -> np.ndarray:
  """The binarized policy at target cost c: [units] bool (softmax(z)[0] >= 0.5)."""
  policy = models.tasks[task].auxiliary["policy"]
  logits = policy(np.array([[c]], np.float32), training=False)[0]
  return reparametrize_probability(logits).numpy() >= 0.5


def apply_decisions(models, task: str, chosen, zero_deltas: str = "all"):
  """Stores `chosen` (bool per unit) in the layers' gates; zeroes every delta ('all': stage
  2's fresh start), the unselected ones ('unselected') or none ('none')."""
  i = 0
  for layer in swr_layers(task_layers(models, task)):
    mine = [bool(x) for x in chosen[i:i + len(layer.deltas)]]
    layer.set_decisions(mine)
    for delta, on in zip(layer.deltas, mine):
      if zero_deltas == "all" or (zero_deltas == "unselected" and not on):
        delta.assign(tf.zeros_like(delta))
    i += len(layer.deltas)
  if i != len(chosen):
    raise ValueError(f"Task {task!r} has {i} SWR units; received {len(chosen)} decisions.")




def _auxiliary(layers, options: SwrOptions, seed: int) -> dict:
  units = sum(len(layer.deltas) for layer in swr_layers(layers))
  return {"policy": build_policy(units, options.hidden, seed)}


def _describe(options: SwrOptions) -> str:
  return f" (c {options.c:g}{'' if options.staged else ', not staged'})"


PATCH_KINDS.register("swr", PatchKind(
    name="swr",
    description="SWR: a delta per conv/dense layer, w + p dw, p chosen per layer by a policy "
                "network conditioned on a target cost c (two-stage training)",
    targets=GATEABLE,
    build=lambda layer, task, options: SwrPatch(layer, task=task, base_name=layer.name),
    options=SwrOptions,
    conflicts=("depthwise", "taps"),
    target_text="Conv2D, DepthwiseConv2D, Dense, EinsumDense or MultiHeadAttention",
    describe=_describe,
    auxiliary=_auxiliary,
    order=26))
