"""What a patch kind is: one declaration per kind, in its own file under k4p1/patches/.

A *patch kind* (scale_bias, depthwise, ...) says which base layers it targets, how it builds a
task's layer from a base layer, which options it takes (a frozen dataclass, recorded in patch
files), and which kinds it cannot be combined with. Its layers implement `PatchLayer`: they
know their task and base layer, initialise from the base (a fresh patch computes exactly what
the base computes), say which of their variables are learned and which are fixed, and turn into
a plain Keras layer with merged weights (`to_plain`) for deployment, in the manner of Keras
LoRA's merged `save_own_variables`.

Mixed-task serving routes each example to its own task's graph (k4p1.export.mixed), so every kind can
serve mixed batches; a kind declares nothing for it.

Example (the declaration of k4p1/patches/bias.py, which also holds its BiasPatch layer):
  PATCH_KINDS.register("bias", PatchKind(
      name="bias", description="BitFit: a learned bias delta on every BN and biased linear "
                               "conv/dense layer",
      targets=(keras.layers.BatchNormalization, keras.layers.Conv2D,
               keras.layers.DepthwiseConv2D, keras.layers.Dense),
      build=lambda layer, task, options: BiasPatch(layer, task=task, base_name=layer.name),
      applies=_has_linear_bias, conflicts=("scale_bias", "bn_stats"),
      target_text="BatchNormalization or biased conv/dense", order=50))
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Optional

import keras

from k4p1.config import PatchSpec
from k4p1.errors import ConfigError
from k4p1.registry import Registry, did_you_mean

PATCH_KINDS = Registry("patch kind", field="tasks.<task>.patch")


@dataclasses.dataclass(frozen=True)
class NoOptions:
  """A kind without options."""


@dataclasses.dataclass(frozen=True)
class PatchKind:
  """One kind of patch, declared once.

  Attributes:
    name: the name used in `tasks.<task>.patch` (e.g. 'scale_bias').
    description: one line for --help, errors and the README.
    targets: base layer classes the kind patches (an instance check).
    build: (base_layer, task, options) -> the task's layer. `base_layer` may already be
      another kind's patch layer when kinds compose (a wrapping kind after a replacing one).
    options: a frozen dataclass of the kind's options; fields are typed and have defaults.
    applies: optional (layer, graph: PatchGraph, options) -> bool, a further test on top of
      `targets`.
    conflicts: kinds it cannot be combined with in one task.
    init: optional (task_layer, base_layer) -> None that makes a fresh task layer compute what
      the base layer computes; default `task_layer.init_from_base(base_layer)`.
    private_copy: the kind gives the task a copy of every layer ('full'); it combines with no
      other kind.
    target_text: what the kind needs, for the "matches no layer" error.
    describe: optional (options) -> text appended to labels, e.g. ' (frozen stats)'.
    fixed_note: what the report says of the kind's fixed variables, e.g. 'statistics'.
    penalty: optional (task_layers, options, step) -> a scalar added to the task's loss, or
      None (TAPS's L1 on its scores); `step` is the task's step counter.
    rate: optional (task_layer, options) -> (group, variables, learning rate) or None: variables
      of the layer trained at their own rate (TAPS's scores at `score_lr`).
    auxiliary: optional (task_layers, options, seed) -> {name: Keras object}: training-only
      parts of the task (SWR's policy network), checkpointed with it, never exported.
    order: position in labels and reports (smaller first).
  """
  name: str
  description: str
  targets: tuple
  build: Callable
  options: type = NoOptions
  applies: Optional[Callable] = None
  conflicts: tuple = ()
  init: Optional[Callable] = None
  private_copy: bool = False
  target_text: str = ""
  describe: Optional[Callable] = None
  fixed_note: str = ""
  penalty: Optional[Callable] = None
  rate: Optional[Callable] = None
  auxiliary: Optional[Callable] = None
  order: int = 100

  def initialise(self, task_layer, base_layer):
    if self.init is not None:
      self.init(task_layer, base_layer)
    else:
      task_layer.init_from_base(base_layer)

  def variables(self, task_layer) -> tuple[list, list]:
    """(learned, fixed) variables the task owns in `task_layer`: the report asks this."""
    if isinstance(task_layer, PatchLayer):
      return task_layer.learned_variables(), task_layer.fixed_variables()
    return ([v for v in task_layer.weights if v.trainable],
            [v for v in task_layer.weights if not v.trainable])

  def parse_options(self, raw: tuple, where: str = "patch") -> Any:
    """The kind's options dataclass from raw (key, text) pairs, values converted to field types.

    Raises:
      ConfigError: unknown option or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(self.options)}
    hints = typing.get_type_hints(self.options)
    values = {}
    for key, text in raw:
      if key not in fields:
        known = ", ".join(fields) or "none"
        raise ConfigError(f"Patch kind '{self.name}' has no option '{key}'."
                          f"{did_you_mean(key, fields)} Its options: {known}. "
                          f"Received: {where}={self.name}({key}={text})")
      values[key] = _convert(text, hints[key], f"{where}: {self.name}({key}=...)")
    try:
      return self.options(**values)
    except (ValueError, TypeError) as e:
      raise ConfigError(f"{where}: invalid options for '{self.name}': {e}") from None


def _convert(text, kind, where):
  """A raw option value as the field's type (int, float, bool or str; others are passed as is)."""
  if kind not in (int, float, bool, str):
    return text
  if not isinstance(text, str):
    return kind(text)
  if kind is bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
      raise ConfigError(f"{where} must be true or false. Received: {text!r}")
    return lowered in ("true", "1")
  try:
    return kind(text)
  except ValueError:
    raise ConfigError(f"{where} must be a {kind.__name__}. Received: {text!r}") from None


class PatchLayer:
  """What every patch layer provides (a mixin for Keras layers).

  A patch layer also defines (here undefined, so that a Keras base class may provide them):
    init_from_base(base_layer): copy what it needs from the base layer so that the patched
      model equals the base.
    to_plain(name) -> a built, plain Keras layer (no k4p1 class) computing this layer in
      inference mode, with its weights merged.

  Attributes:
    kind: the PatchKind name that made it.
    task: whose parameters these are.
    base_name: the base layer it stands in for.
  """

  kind = ""

  def _init_patch(self, task: str, base_name: str):
    if not task:
      raise ValueError(f"{type(self).__name__} needs a task name. Received: task={task!r}")
    self.task = task
    self.base_name = base_name

  def _patch_config(self) -> dict:
    return {"task": self.task, "base_name": self.base_name}

  @staticmethod
  def patch_name(base_name: str, task: str) -> str:
    return f"{base_name}_{task}"

  def own_variables(self) -> list:
    """The variables this layer owns (not those of a wrapped, shared layer)."""
    return list(self.weights)

  def learned_variables(self) -> list:
    """Own variables that training changes by gradient. Kinds declare it (override): the
    default reads the variables' trainable flags, which Keras's layer `trainable` setter
    rewrites."""
    return [v for v in self.own_variables() if v.trainable]

  def fixed_variables(self) -> list:
    """Own variables that gradients never change (statistics, ...)."""
    learned = {id(v) for v in self.learned_variables()}
    return [v for v in self.own_variables() if id(v) not in learned]


class ChannelWrapperPatch(PatchLayer, keras.layers.Wrapper):
  """A patch that wraps a shared layer and owns per-output-channel variables applied after it.

  Subclasses list their variables in `channel_weights` ((attribute, variable name,
  initializer), ...) and define `call` and `to_plain`; the wrapped layer stays shared and
  untouched, and a fresh patch (the initializers) computes what the layer computes.
  """

  channel_weights = ()

  def __init__(self, layer, task: str, base_name: str = "", **kwargs):
    kwargs.setdefault("name", self.patch_name(layer.name, task))
    super().__init__(layer, **kwargs)
    self._init_patch(task, base_name or layer.name)

  def build(self, input_shape=None):
    if not self.layer.built:
      self.layer.build(input_shape)
    channels = self.layer.compute_output_shape(input_shape)[-1]
    for attribute, name, initializer in self.channel_weights:
      setattr(self, attribute, self.add_weight(name=name, shape=(channels,),
                                               initializer=initializer))
    self.built = True

  def init_from_base(self, base):
    for attribute, _, initializer in self.channel_weights:
      v = getattr(self, attribute)
      v.assign(keras.initializers.get(initializer)(v.shape))

  def own_variables(self) -> list:
    return [getattr(self, attribute) for attribute, _, _ in self.channel_weights]

  def learned_variables(self) -> list:
    return self.own_variables()

  def compute_output_shape(self, input_shape):
    return self.layer.compute_output_shape(input_shape)

  def get_config(self):
    return {**super().get_config(), **self._patch_config()}


def plain_config(layer) -> dict:
  """A layer's config without the patch-only keys, for building its plain Keras twin."""
  config = dict(layer.get_config())
  for key in ("task", "base_name", "statistics", "learn"):
    config.pop(key, None)
  return config


def build_like(new: keras.layers.Layer, layer: keras.layers.Layer) -> keras.layers.Layer:
  """Builds `new` for the input shape `layer` was built for; returns `new`."""
  build_config = layer.get_build_config() if layer.built else None
  if build_config:
    new.build_from_config(build_config)
  return new


def to_plain(layer, name: str) -> keras.layers.Layer:
  """A built plain Keras copy of any layer: patch layers merge their weights, others copy."""
  if isinstance(layer, PatchLayer) or hasattr(layer, "to_plain"):
    return layer.to_plain(name)
  new = build_like(type(layer).from_config({**layer.get_config(), "name": name}), layer)
  if layer.weights:
    new.set_weights(layer.get_weights())
  return new


# ---------------------------------------------------------------------------
# Patch specs: kinds and options, checked against the registry.


def kind(name: str, where: str = "patch") -> PatchKind:
  return PATCH_KINDS.lookup(name, where)


def kinds_of(spec: PatchSpec) -> list[PatchKind]:
  """The spec's kinds in display order."""
  return sorted((kind(k) for k in spec.kinds), key=lambda k: (k.order, k.name))


def options(spec: PatchSpec, name: str) -> Any:
  """The typed options of kind `name` in `spec` (its defaults when the spec gives none)."""
  return kind(name).parse_options(dict(spec.options).get(name, ()))


def check(spec: PatchSpec, where: str = "patch") -> PatchSpec:
  """Checks kind names, their options and combinations; returns the canonical spec.

  Canonical: every kind's options typed and complete (defaults included), so a spec parsed
  from a config equals the same spec read back from a patch file.

  Raises:
    ConfigError: unknown kind (with a "did you mean"), bad option, or kinds that conflict.
  """
  resolved = [kind(k, where) for k in spec.kinds]
  for k in sorted(resolved, key=lambda k: (k.order, k.name)):
    k.parse_options(dict(spec.options).get(k.name, ()), where)
    for other in sorted(set(k.conflicts) & spec.kinds):
      raise ConfigError(f"{where}: use either '{k.name}' or '{other}', not both "
                        f"({k.name}: {k.description}; {other}: {kind(other).description}). "
                        f"Received: {where}={label(spec)!r}")
    if k.private_copy and len(spec.kinds) > 1:
      raise ConfigError(f"{where}: '{k.name}' already trains every backbone weight; combine it "
                        f"only with last_layer. Received: {where}={label(spec)!r}")
    if k.private_copy and spec.train_base:
      raise ConfigError(f"{where}: '{k.name}' trains a private copy; train_base=True trains the "
                        f"shared one. Pick one.")
  typed = tuple(sorted(
      (k.name, tuple(sorted(dataclasses.asdict(options(spec, k.name)).items())))
      for k in resolved if dataclasses.fields(k.options)))
  return dataclasses.replace(spec, options=typed)


def label(spec: PatchSpec) -> str:
  """'scale_bias+last_layer (batch stats)': what a task trains, for tables and reports."""
  head = "last_layer(shared)" if spec.shared_head else "last_layer"
  names = [k.name for k in kinds_of(spec)] + ([head] if spec.train_head else [])
  text = "+".join(names) if names else "none"
  for k in kinds_of(spec):
    if k.describe is not None:
      text += k.describe(options(spec, k.name))
  if spec.train_base:
    text += " +shared base"
  return text


def record(spec: PatchSpec) -> dict:
  """What a patch file records of a spec: kinds with their full options, head, base."""
  rec = {"kinds": {k.name: dataclasses.asdict(options(spec, k.name)) for k in kinds_of(spec)},
         "train_head": spec.train_head, "train_base": spec.train_base}
  if spec.shared_head:
    rec["shared_head"] = True
  return rec


def from_record(rec: dict) -> PatchSpec:
  """The PatchSpec a patch file recorded (see `record`)."""
  opts = tuple(sorted((k, tuple(sorted((key, v) for key, v in o.items())))
                      for k, o in rec["kinds"].items() if o))
  return check(PatchSpec(kinds=frozenset(rec["kinds"]), options=opts,
                         train_head=bool(rec["train_head"]), train_base=bool(rec["train_base"]),
                         shared_head=bool(rec.get("shared_head", False))))


def scale_output_channels(kernel, layer, scale):
  """kernel * scale over a conv/dense layer's output channels (depthwise: channel x multiplier)."""
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    c, m = kernel.shape[-2], kernel.shape[-1]
    return kernel * scale.reshape(c, m)
  return kernel * scale
