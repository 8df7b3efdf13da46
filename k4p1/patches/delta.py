"""The gated weight delta: a shared layer computing with `w_base + g * dw` per gated unit.

The one mechanism TAPS (k4p1/methods/taps: g = I(s >= tau) from a learned score) and SWR
(k4p1/methods/swr: g from a policy network, or its stored decision) share, and the place a
LoRA-style kind would build on. A subclass says where each unit's gate comes from; this
module owns the deltas, the effective kernel, the patch-file omissions and the merge for
deployment.

Like Keras's LoRA (keras/src/layers/core/dense.py), the effective weight is a `kernel` property
and the wrapped layer's `call` is unchanged: it runs with its kernel variable read as the
effective kernel (a `keras.StatelessScope`), so the base kernel stays shared and untouched.

Example:
  class AlwaysOn(GatedDeltaPatch):
    kind = "always_on"
    def unit_gates(self, gates=None): return [1.0 for _ in self.deltas]
"""

from __future__ import annotations

import keras
import numpy as np

from k4p1.patches.base import PatchLayer, to_plain

GATEABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense,
            keras.layers.EinsumDense, keras.layers.MultiHeadAttention)
# A MultiHeadAttention layer keeps four projections (EinsumDense) inside it: each is a gated
# unit with its own score and delta, as separate layers would be.
MHA_UNITS = ("query", "key", "value", "output")


def base_kernel(layer):
  """The kernel variable of a conv/dense layer (Keras keeps it in `_kernel` behind a `kernel`
  property, except in DepthwiseConv2D)."""
  return layer._kernel if hasattr(layer, "_kernel") else layer.kernel


def gated_units(layer) -> list[tuple[str, object]]:
  """[(unit name, kernel variable)] TAPS gates in `layer`: ('', kernel) for a conv/dense layer,
  one per projection of a MultiHeadAttention ('query', 'key', 'value', 'output')."""
  if isinstance(layer, keras.layers.MultiHeadAttention):
    return [(unit, base_kernel(getattr(layer, f"_{unit}_dense"))) for unit in MHA_UNITS]
  return [("", base_kernel(layer))]


class GatedDeltaPatch(PatchLayer, keras.layers.Wrapper):
  """A shared layer computing with `w_base + g * dw` per gated unit: the one gated-delta
  mechanism. Subclasses say where each unit's gate `g` comes from: TAPS (TapsPatch) from its
  own score, I(s >= tau); SWR (k4p1/methods/swr) from a policy network, through a `gates`
  input the layer is called with, or its stored decision.

  A conv/dense layer is one unit (variable `delta`); a MultiHeadAttention is four, its query,
  key, value and output projections (`delta_query`, ...). Deltas start at zero, so a fresh
  patch computes what the shared layer computes; a gated-off unit's delta changes no output,
  is left out of patch files and is not merged by folding.

  Args:
    layer: the shared layer (Conv2D, DepthwiseConv2D, Dense, EinsumDense or
      MultiHeadAttention); never modified.
    task: the task owning the deltas.
  """

  def __init__(self, layer, task: str, base_name: str = "", **kwargs):
    if not isinstance(layer, GATEABLE):
      raise ValueError(f"{self.kind.upper()} gates {', '.join(c.__name__ for c in GATEABLE)} "
                       f"layers; {layer.name!r} is a {type(layer).__name__}.")
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
      raise ValueError(f"{self.kind.upper()} cannot gate {layer.name!r}: it has LoRA or "
                       f"quantization enabled.")
    kwargs.setdefault("name", self.patch_name(layer.name, task))
    super().__init__(layer, **kwargs)
    self._init_patch(task, base_name or layer.name)

  def build(self, input_shape=None):
    if not self.layer.built:
      self.layer.build(input_shape)
    self.units, self.deltas = [], []
    for i, (unit, kernel) in enumerate(gated_units(self.layer)):
      self.units.append(unit)
      self._build_gate(f"_{unit}" if unit else "", i)
      self.deltas.append(self.add_weight(name=f"delta_{unit}" if unit else "delta",
                                         shape=kernel.shape, initializer="zeros"))
      # Keras keeps lists of variables out of TF checkpoints: each is also an attribute.
      setattr(self, f"delta_{i}", self.deltas[-1])
    self.built = True

  def _build_gate(self, suffix: str, index: int):
    """Creates unit `index`'s gate state (a score, a stored decision), before its delta; sets
    it as an attribute too, so that checkpoints hold it."""

  def unit_gates(self, gates=None) -> list:
    """Each unit's gate g (a scalar tensor); `gates`: what the layer was called with."""
    raise NotImplementedError

  @property
  def active_units(self) -> list[bool]:
    """Whether each unit is task-specific now (eager)."""
    raise NotImplementedError

  @property
  def delta(self):
    """The delta of a single-unit layer (conv/dense)."""
    return self.deltas[0]

  def effective_kernels(self, gates=None) -> list:
    """[w_base + g * dw] per unit."""
    return [kernel + g * delta for (_, kernel), g, delta in
            zip(gated_units(self.layer), self.unit_gates(gates), self.deltas)]

  @property
  def kernel(self):
    """The effective kernel of a single-unit layer: w_base + g * dw."""
    return self.effective_kernels()[0]

  @property
  def active(self) -> bool:
    """Whether any unit of the layer is task-specific now (eager)."""
    return any(self.active_units)

  @property
  def unit_sizes(self) -> list[int]:
    """Parameters each unit adds to its task while active."""
    return [int(np.prod(kernel.shape)) for _, kernel in gated_units(self.layer)]

  @property
  def delta_size(self) -> int:
    return sum(self.unit_sizes)

  def call(self, inputs, *args, gates=None, training=None, **kwargs):
    mapping = [(kernel, effective) for (_, kernel), effective in
               zip(gated_units(self.layer), self.effective_kernels(gates))]
    with keras.StatelessScope(state_mapping=mapping):
      return self.layer(inputs, *args, training=training, **kwargs)

  def compute_output_spec(self, *args, **kwargs):
    kwargs.pop("training", None)
    kwargs.pop("gates", None)
    return self.layer.compute_output_spec(*args, **kwargs)

  def compute_output_shape(self, *args, **kwargs):
    return self.layer.compute_output_shape(*args, **kwargs)

  def omitted_variables(self) -> list:
    """What a patch file may leave out: inactive units' deltas (they change no output)."""
    return [d for d, on in zip(self.deltas, self.active_units) if not on]

  def to_plain(self, name: str) -> keras.layers.Layer:
    """The wrapped layer's plain copy with the active deltas merged in."""
    plain = to_plain(self.layer, name)
    for (_, kernel), (_, plain_kernel), delta, on in zip(
        gated_units(self.layer), gated_units(plain), self.deltas, self.active_units):
      if on:
        plain_kernel.assign(keras.ops.convert_to_numpy(kernel) +
                            keras.ops.convert_to_numpy(delta))
    return plain

  def get_config(self):
    return {**super().get_config(), **self._patch_config()}
