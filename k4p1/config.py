"""Experiment configuration: every field declared once, then validated into frozen specs.

A config file under `configs/` defines `get_config()` returning `base_config()` with a few
fields changed. `train.py` loads it with `lock_config=True`, so `--config.optimizer.lr=0.1`
works and a typo such as `--config.optimizer.lrr=0.1` fails before anything runs.

Example:
  config = base_config()
  config.tasks.flowers = task_config(dataset="oxford_flowers102", patch="scale_bias,last_layer")
  specs = validate(config)   # -> ExperimentSpec with frozen dataclasses
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from k4p1.config_files import config_file, from_json, load, load_module, parse_arg  # noqa: F401
from k4p1.errors import ConfigError
from k4p1.plugins import plugin_file, user_plugins
from k4p1.registry import DeclaredRegistry
from k4p1.registry import did_you_mean as _did_you_mean

# Names that select a registered entry (backbone.name, dataset.source, the patch kinds,
# runtime.strategy, optimizer.name) are looked up in their registries by
# k4p1.experiment.resolve, before anything is built or written. This module imports no module
# that registers entries, so it stays at the bottom of the import graph; `validate` checks the
# same names against what k4p1's modules and the user's plug-ins (k4p1.plugins) declare, read
# from their source (DeclaredRegistry), so that a binary can refuse a typo before TensorFlow
# loads.
_K4P1_DIR = os.path.dirname(os.path.abspath(__file__))
# registry kind -> (its config field, how modules register into it); tests/config_test.py
# keeps each equal to the imported registry.
DECLARED_REGISTRIES = {
    "backbone": ("backbone.name", ("BACKBONES.register", "register_backbone")),
    "data source": ("tasks.<task>.dataset.source", ("DATA_SOURCES.register",)),
    "patch kind": ("tasks.<task>.patch", ("PATCH_KINDS.register",)),
    "strategy": ("runtime.strategy", ("STRATEGIES.register",)),
    "optimizer": ("optimizer.name", ("OPTIMIZERS.register",)),
    "sampler": ("multitask.sampler", ("SAMPLERS.register",)),
}


def declared(kind: str, plugins: str = "") -> DeclaredRegistry:
  """The names of registry `kind` as k4p1's modules and the user's plug-ins (`plugins`, and
  $K4P1_PLUGINS) declare them; nothing is imported.

  Raises:
    ConfigError: a plug-in is missing.
  """
  field, spellings = DECLARED_REGISTRIES[kind]
  files = [plugin_file(name) for name in user_plugins(plugins)]
  return DeclaredRegistry(kind, field, [_K4P1_DIR] + files, spellings)


def check_declared_names(spec: "ExperimentSpec"):
  """Checks every registered name in `spec` against the declared names (no import).

  Raises:
    ConfigError: an unknown name, with the same message as the registry's own lookup.
  """
  plugins = ",".join(spec.plugins)
  declared("backbone", plugins).lookup(spec.backbone.name)
  declared("strategy", plugins).lookup(spec.runtime.strategy)
  declared("optimizer", plugins).lookup(spec.optimizer.name)
  sources, kinds = declared("data source", plugins), declared("patch kind", plugins)
  for task in spec.tasks:
    sources.lookup(task.dataset.source, f"tasks.{task.name}.dataset.source")
    for kind in sorted(task.patch.kinds):
      kinds.lookup(kind, f"tasks.{task.name}.patch")


STATISTICS_MODES = ("batch", "frozen", "recompute")
HEAD_KIND = "last_layer"  # in `task.patch`: train the task's classifier (a head option)


def dataset_config(**overrides) -> ml_collections.ConfigDict:
  """Where a task's examples come from.

  Fields:
    source: a registered data source (k4p1.data.DATA_SOURCES). `tfds` reads `name` with tensorflow-datasets.
    name: tfds dataset name (e.g. `cifar100`, `oxford_flowers102`); ignored by other sources.
    path: file or folder for local sources; '' uses `$K4P1_DATA_DIR` defaults
      (`cifar10/cifar10_jpeg.tar.gz`, `fashion_mnist/`).
    classes: keep only these labels (comma separated, e.g. '5,6,7,8,9'), relabelled 0..k-1.
    train_split / eval_split: split names (tfds or image-folder sub-folders).
    train_examples / eval_examples: use N examples of a split (-1: all); class-stratified for
      local sources, the first N for tfds.
    augment: training crop: `inception_crop` (random resized crop, 8-100% of the area) or
      `none` (resize only). (`flip`, an older spelling, means `none` with flip=True.)
    flip: random horizontal flips in training. Off by default: a flip changes the label of
      digits, text and traffic signs; turn it on for natural images.
    eval_crop: evaluation keeps this central fraction of each side before resizing (0.875:
      Inception's; 1.0: the whole image). Independent of `augment`.
    Audio (k4p1/data/audio.py): augment `kws` (time shift up to 100 ms, background noise) or
    `none`; folds / fold: a folder without split folders is split into `folds`
    class-stratified folds and fold `fold` is evaluated (0: use split folders);
    noise: a folder of noise WAVs for `kws` ('' = white noise, 'none' = no noise).
  """
  c = ml_collections.ConfigDict(dict(
      source="tfds", name="", path="", classes="", train_split="train", eval_split="test",
      train_examples=-1, eval_examples=-1, augment="inception_crop", flip=False, eval_crop=1.0,
      folds=0, fold=0, noise=""))
  c.update(overrides)
  return c


def task_config(**overrides) -> ml_collections.ConfigDict:
  """One task: its data, its patch, and how long to train it.

  Fields:
    dataset: see dataset_config().
    patch: comma-separated patch kinds (k4p1/patches/, one file each) plus `last_layer` (train
      the classifier), e.g. 'scale_bias,last_layer'. A kind takes options in parentheses:
      'scale_bias(statistics=frozen),last_layer'. `last_layer(shared=true)`: the task uses the
      one classifier every such task shares (a shared weight, like the base) instead of its own.
    statistics: default of scale_bias's `statistics` option, where its BN statistics come from:
      `batch` (normalise with batch statistics while training, then recompute the moving
      statistics on the target: the paper), `frozen` (keep the backbone's statistics; gamma
      and beta still learn; faster: 1.10x in bench/train_throughput.py) or `recompute`
      (recompute them on the target before training, then keep them; as fast as `frozen`).
    train_base: also train the shared backbone weights (pretraining, or multi-task learning).
    epochs: training epochs (fractions allowed); `steps` > 0 overrides it.
    lr: initial learning rate; 0 uses `optimizer.lr`.
    head_lr: the classifier's own initial learning rate (its own optimizer, same schedule);
      0 uses `lr`. Patches often want large rates and a classifier a smaller one.
    loss_weight: in joint multi-task training, the weight of this task's loss.
    batch_size: in joint multi-task training, this task's global batch (0: train.batch_size).
    input_size: the square resolution this task's model runs at (0: backbone.input_size).
      Tasks at several resolutions share one backbone (multi-resolution, configs/multires.py):
      images are resized bilinearly to each task's size; the backbone must be convolutional.
  """
  c = ml_collections.ConfigDict(dict(
      patch="scale_bias,last_layer", statistics="batch", train_base=False,
      epochs=1.0, steps=0, lr=0.0, head_lr=0.0, loss_weight=1.0, batch_size=0, input_size=0))
  c.dataset = dataset_config()
  c.update(overrides)
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field of an experiment, with the paper's defaults."""
  c = ml_collections.ConfigDict()
  # The user's plug-in modules (k4p1.plugins): module names or .py paths, comma separated;
  # they register backbones, data sources, patch kinds, methods, samplers or export formats.
  c.plugins = ""
  c.backbone = ml_collections.ConfigDict(dict(
      name="mobilenet_v2",  # a registered backbone (k4p1.backbones.BACKBONES)
      alpha=1.0,            # MobileNetV2 width multiplier
      input_size=224,       # square input resolution; 0 = the backbone's own
      weights="imagenet",   # 'imagenet', 'none' (random) or a path to a weights file
                            # (ssd_mobilenet_v2: frozen_inference_graph.pb or a TF1 checkpoint)
      use_moving_averages=False,  # ssd_mobilenet_v2 from a TF1 checkpoint: read EMA values
      application="",       # for keras_application: a keras.applications class, e.g. ResNet50
      model_file="",        # for keras_file: a full Keras model whose nested backbone is used
      nested_model="",      # for keras_file: nested model name ('' = the only nested model)
      preprocessing="",     # 'tf' ([-1, 1]), 'caffe', 'torch' or 'none'; '' = backbone default
      seed=0,               # seed of the random initialisation when weights='none'
  ))
  # Audio backbones (bc_resnet, res15): their input_size is the clip length in samples, and
  # the model's LogMelFrontend (k4p1.frontends) is built from these; SpecAugment masks apply
  # in training only. Ignored by image backbones.
  c.backbone.audio = ml_collections.ConfigDict(dict(
      sample_rate=16000, bands=40, window_ms=30.0, hop_ms=10.0, lower_hz=20.0, upper_hz=0.0,
      freq_masks=0, freq_mask_bands=0, time_masks=0, time_mask_frames=0))
  c.tasks = ml_collections.ConfigDict()
  c.task_order = ""  # comma-separated task names in training order ('' = alphabetical)
  c.data = ml_collections.ConfigDict(dict(
      data_dir="",        # tfds data_dir ('' = tfds default, usually ~/tensorflow_datasets)
      download=False,     # allow tfds to download a missing dataset (needs internet)
      shuffle_buffer=2048,
      cache=True,         # cache decoded examples in memory (small datasets)
  ))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="rmsprop",     # 'rmsprop' (TF1/TF-slim's: mean square starts at 1, as the paper),
                          # 'rmsprop_keras' (starts at 0), 'sgd' (momentum) or 'adam'
                          # (k4p1.train.optimizers)
      lr=0.045,           # the paper's initial learning rate
      decay_rate=0.98,    # multiply the rate by this ...
      decay_epochs=2.5,   # ... every this many epochs (staircase)
      schedule="staircase",  # 'staircase' (the above) or 'cosine' (annealed to 0 over each
                             # phase's steps: the SWR paper's Adam schedule)
      momentum=0.9,       # RMSProp/SGD momentum (TF-slim MobileNet defaults)
      rho=0.9,            # RMSProp decay
      epsilon=1.0,        # RMSProp epsilon (TF-slim default; 1e-7 diverges at lr 0.045)
      label_smoothing=0.0,
  ))
  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,            # global batch size
      eval_batch_size=64,
      seed=0,
      checkpoint_every=200,     # steps between checkpoints (and always at the end of a task)
      log_every=50,             # steps between TensorBoard summaries
      keep_checkpoints=2,
      bn_recompute_batches=-1,  # batches BN statistics are averaged over when recomputed:
                                # -1: one pass over the training split, at most 200 batches;
                                # 0: never recompute
      progress=True,            # progress bar on stderr
      init_from="",             # a checkpoint to start from when the workdir has none: a
                                # prefix or a folder (its latest), from a run with the same
                                # model and phases, e.g. an SWR run's WORKDIR/swr_stage1/<task>
                                # (another target cost reuses its super-net and policy)
  ))
  c.runtime = ml_collections.ConfigDict(dict(
      strategy="default",       # a registered strategy (k4p1.train.strategies.STRATEGIES)
      tpu="",                   # TPU address for strategy=tpu
      devices="",               # comma-separated devices for mirrored ('' = all local)
  ))
  c.multitask = ml_collections.ConfigDict(dict(
      tasks="",                 # comma-separated tasks trained jointly on the shared base (the
                                # paper's section 5.3); '' = every task alone, in task_order
      step="summed",            # 'summed': each step takes a batch of every task and sums the
                                # weighted losses; 'sampled': each step trains one task
      sampler="proportional",   # for 'sampled': a registered sampler (k4p1/methods/multitask/
                                # samplers.py): round_robin, proportional (to dataset size),
                                # annealed (sizes ** (1 / temperature), temperature annealed)
      temperature=2.0,          # annealed sampler: the starting temperature (1 = proportional)
      steps=0,                  # joint steps; 0: the largest task's `epochs` (or `steps`)
      balance_lr=True,          # the paper's learning-rate balancing (see k4p1/methods/multitask/joint.py)
      workers="",               # workers per task, e.g. 'cifar10:2,fashion_mnist:1': sampled
                                # steps go to each task in proportion to its workers (the
                                # paper's workers assigned to tasks); '' = use `sampler`
  ))
  c.cascade = ml_collections.ConfigDict(dict(
      tasks="",                 # comma-separated tasks solving the same problem at different
                                # costs (resolutions): after training, Streeter's greedy
                                # cascade over them (k4p1.cascade), written to cascade.json and
                                # exported as a `cascade` signature; '' = none
      validation=0.5,           # share of the eval split that builds the cascade (the rest
                                # measures it): a deterministic, class-stratified split
      tolerance=0.0,            # accuracy the cascade may lose on the validation share against
                                # its most accurate model (0.005 = half a point)
      thresholds=64,            # candidate confidence thresholds per model (quantiles)
  ))
  c.report = ml_collections.ConfigDict(dict(
      compare="",               # --mode=params also totals the parameters had every task this
                                # patch instead: 'NAME=PATCH;NAME=PATCH', e.g.
                                # 'independent=full,last_layer' (configs/multires.py: Table 5)
  ))
  c.export = ml_collections.ConfigDict(dict(
      enabled=True,             # export a SavedModel at the end of --mode=train
      tasks="",                 # comma-separated tasks to export ('' = all); first = serving_default
      mixed_tasks="",           # comma-separated tasks of a `mixed` signature (a task id per
                                # example, any patch kind); '' = none
  ))
  return c


def transfer_config(patch: str, statistics: str = "batch", lr: float = 0.045,
                    task: str = "flowers", dataset: str = "oxford_flowers102", epochs: float = 30,
                    **backbone) -> ml_collections.ConfigDict:
  """One transfer-learning task on a pretrained backbone: the paper's section 5.2 setup.

  Args:
    patch: the task's patch kinds, e.g. 'scale_bias,last_layer'.
    statistics: 'batch' or 'frozen'.
    lr: initial learning rate (patches want large rates, full fine-tuning small ones).
    task, dataset, epochs: the task's name, tfds dataset and length.
    **backbone: backbone fields (default MobileNetV2 1.0 @224 with ImageNet weights).

  Example:
    c = transfer_config("depthwise,last_layer")          # configs/mobilenet_v2_depthwise.py
    c = transfer_config("scale_bias,last_layer", name="inception_v3", input_size=299)
  """
  c = base_config()
  c.backbone.update({"name": "mobilenet_v2", "alpha": 1.0, "input_size": 224,
                     "weights": "imagenet", **backbone})
  c.tasks[task] = task_config(
      dataset=dataset_config(source="tfds", name=dataset, train_split="train", eval_split="test",
                             augment="inception_crop", flip=True, eval_crop=0.875),
      patch=patch, statistics=statistics, epochs=epochs, lr=lr)
  return c


# ---------------------------------------------------------------------------
# Frozen specs: what the library consumes.


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  name: str
  alpha: float = 1.0
  input_size: int = 224
  weights: str = "imagenet"
  application: str = ""
  model_file: str = ""
  nested_model: str = ""
  preprocessing: str = ""
  seed: int = 0
  use_moving_averages: bool = False
  audio: tuple = ()          # ((LogMelFrontend option, value), ...) for audio backbones


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  source: str
  name: str = ""
  path: str = ""
  classes: tuple[int, ...] = ()
  train_split: str = "train"
  eval_split: str = "test"
  train_examples: int = -1
  eval_examples: int = -1
  augment: str = "inception_crop"
  flip: bool = False
  eval_crop: float = 1.0
  folds: int = 0
  fold: int = 0
  noise: str = ""


@dataclasses.dataclass(frozen=True)
class PatchSpec:
  """Which task-specific parameters a task has (names only; k4p1.patches resolves them).

  Attributes:
    kinds: patch kind names (k4p1.patches.PATCH_KINDS), e.g. {'scale_bias', 'depthwise'}.
    options: per-kind options as raw text, ((kind, ((key, value), ...)), ...), sorted.
    train_head: train the task's classifier (`last_layer`; otherwise it stays at its init).
    train_base: the task also trains the shared backbone weights.
    shared_head: the task's classifier is the one every shared-head task uses (a shared
      weight, like the base: `last_layer(shared=true)`), not its own.
  """
  kinds: frozenset = frozenset()
  options: tuple = ()
  train_head: bool = False
  train_base: bool = False
  shared_head: bool = False

  def has(self, kind: str) -> bool:
    """Whether the task has kind `kind` ('last_layer': whether it trains its classifier)."""
    return self.train_head if kind == HEAD_KIND else kind in self.kinds

  def option(self, kind: str, key: str, default=None):
    """The raw text of one option as written in the config (k4p1.patches types it)."""
    return dict(dict(self.options).get(kind, ())).get(key, default)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  dataset: DatasetSpec
  patch: PatchSpec
  epochs: float = 1.0
  steps: int = 0
  lr: float = 0.0
  head_lr: float = 0.0
  loss_weight: float = 1.0
  batch_size: int = 0
  input_size: int = 0        # 0: the backbone's


@dataclasses.dataclass(frozen=True)
class MultitaskSpec:
  tasks: tuple = ()          # () = no joint training
  step: str = "summed"
  sampler: str = "proportional"
  temperature: float = 2.0
  steps: int = 0
  balance_lr: bool = True
  workers: tuple = ()        # ((task, count), ...) in task order; () = use `sampler`


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
  strategy: str = "default"
  tpu: str = ""
  devices: str = ""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  name: str = "rmsprop"
  lr: float = 0.045
  decay_rate: float = 0.98
  decay_epochs: float = 2.5
  schedule: str = "staircase"
  momentum: float = 0.9
  rho: float = 0.9
  epsilon: float = 1.0
  label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataOptions:
  data_dir: str = ""
  download: bool = False
  shuffle_buffer: int = 2048
  cache: bool = True


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  batch_size: int = 32
  eval_batch_size: int = 64
  seed: int = 0
  checkpoint_every: int = 200
  log_every: int = 50
  keep_checkpoints: int = 2
  bn_recompute_batches: int = -1
  progress: bool = True
  init_from: str = ""


@dataclasses.dataclass(frozen=True)
class ExportSpec:
  enabled: bool = True
  tasks: tuple = ()          # signatures in order (first = serving_default); () = every task
  mixed_tasks: tuple = ()


@dataclasses.dataclass(frozen=True)
class CascadeSpec:
  tasks: tuple = ()          # () = no cascade
  validation: float = 0.5
  tolerance: float = 0.0
  thresholds: int = 64


@dataclasses.dataclass(frozen=True)
class ReportSpec:
  compare: tuple = ()        # ((name, PatchSpec), ...)


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
  """Everything an experiment needs, frozen: what the library reads instead of the ConfigDict."""
  backbone: BackboneSpec
  tasks: tuple[TaskSpec, ...]
  runtime: RuntimeSpec = RuntimeSpec()
  optimizer: OptimizerSpec = OptimizerSpec()
  data: DataOptions = DataOptions()
  train: TrainSpec = TrainSpec()
  export: ExportSpec = ExportSpec()
  multitask: MultitaskSpec = MultitaskSpec()
  cascade: CascadeSpec = CascadeSpec()
  report: ReportSpec = ReportSpec()
  plugins: tuple = ()        # the user's plug-in modules (k4p1.plugins)

  def task(self, name: str) -> TaskSpec:
    for t in self.tasks:
      if t.name == name:
        return t
    raise KeyError(f"No task {name!r}. Tasks: {[t.name for t in self.tasks]}")


def _section(cls, section, where: str, **overrides):
  """A frozen spec dataclass from a config section; its fields must match the section's."""
  values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields - set(overrides))
  if unknown:
    raise ConfigError(f"{where} has fields k4p1 does not know: {unknown}. Known: {sorted(fields)}")
  values.update(overrides)
  return cls(**{k: v for k, v in values.items() if k in fields})


def _split_top_level(text: str, where: str) -> list[str]:
  """'a(x=1,y=2),b+c' -> ['a(x=1,y=2)', 'b', 'c']: commas and '+' outside parentheses."""
  parts, depth, current = [], 0, ""
  for ch in text:
    if ch == "(":
      depth += 1
    elif ch == ")":
      depth -= 1
      if depth < 0:
        break
    if ch in ",+" and depth == 0:
      parts.append(current)
      current = ""
    else:
      current += ch
  if depth != 0:
    raise ConfigError(f"{where}: unbalanced parentheses. Write options as "
                      f"'kind(key=value,...)'. Received: {where}={text!r}")
  parts.append(current)
  return [p.strip() for p in parts if p.strip()]


def parse_patch(text: str, statistics: str = "batch", train_base: bool = False,
                where: str = "patch") -> PatchSpec:
  """Parses 'scale_bias(statistics=frozen),depthwise,last_layer' into a PatchSpec.

  Only the structure is checked here; kind names and options are checked against the
  registered kinds by k4p1.patches.check (the experiment does it before building anything).
  `statistics` is the default of scale_bias's `statistics` option.

  Example:
    parse_patch("scale_bias,depthwise,last_layer", statistics="frozen")
  """
  kinds, options, head, shared_head = set(), {}, False, False
  for token in _split_top_level(str(text), where):
    name, _, rest = token.partition("(")
    name = name.strip()
    if not name.replace("_", "").isalnum():
      raise ConfigError(f"{where}: '{token}' is not a patch kind. Write kinds as "
                        f"'kind' or 'kind(key=value,...)', comma separated. "
                        f"Received: {where}={text!r}")
    pairs = []
    if rest:
      if not rest.rstrip().endswith(")"):
        raise ConfigError(f"{where}: '{token}' has text after its ')'. Received: {where}={text!r}")
      for item in _split_top_level(rest.rstrip()[:-1], where):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
          raise ConfigError(f"{where}: option '{item}' of '{name}' must be key=value. "
                            f"Received: {where}={text!r}")
        pairs.append((key.strip(), value.strip()))
    if name == HEAD_KIND:
      head = True
      for key, value in pairs:
        if key != "shared" or value.lower() not in ("true", "false", "1", "0"):
          raise ConfigError(f"{where}: last_layer takes one option, shared=true|false (share "
                            f"one classifier between tasks). Received: {where}={text!r}")
        shared_head = value.lower() in ("true", "1")
      continue
    kinds.add(name)
    options[name] = dict(options.get(name, {}), **dict(pairs))
  if statistics not in STATISTICS_MODES:
    raise ConfigError(f"{where}: statistics must be one of {STATISTICS_MODES}. "
                      f"Received: statistics={statistics!r}")
  if "scale_bias" in kinds:
    options["scale_bias"] = {"statistics": statistics, **options.get("scale_bias", {})}
  if not kinds and not head and not train_base:
    raise ConfigError(f"{where}: nothing to train. Name at least one patch kind (e.g. "
                      f"scale_bias, depthwise) or last_layer, or set train_base=True. "
                      f"Received: {where}={text!r}")
  frozen_options = tuple(sorted((k, tuple(sorted(v.items()))) for k, v in options.items() if v))
  return PatchSpec(kinds=frozenset(kinds), options=frozen_options, train_head=head,
                   train_base=bool(train_base), shared_head=shared_head)


def _parse_classes(text, where) -> tuple[int, ...]:
  if isinstance(text, (tuple, list)):
    return tuple(int(x) for x in text)
  text = str(text).strip()
  if not text:
    return ()
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise ConfigError(f"{where}.classes must be comma-separated integers, e.g. '5,6,7'. "
                      f"Received: {text!r}") from None


def task_order(config) -> list[str]:
  names = list(config.tasks.keys())
  if not config.task_order:
    return sorted(names)
  order = [t.strip() for t in config.task_order.split(",") if t.strip()]
  for t in order:
    if t not in names:
      raise ConfigError(f"task_order names task '{t}', which is not in config.tasks."
                        f"{_did_you_mean(t, names)} Known tasks: {', '.join(names)}")
  missing = [t for t in names if t not in order]
  if missing:
    raise ConfigError(f"task_order leaves out tasks {missing}; list every task in config.tasks.")
  return order


def validate(config) -> ExperimentSpec:
  """Checks a ConfigDict and returns the frozen ExperimentSpec the library uses.

  Raises:
    ConfigError: with the field, what was wrong and how to fix it.
  """
  b = config.backbone
  if b.name == "keras_file" and not b.model_file:
    raise ConfigError("backbone.name='keras_file' needs backbone.model_file=PATH to a Keras model.")
  if b.name == "ssd_mobilenet_v2" and b.weights in ("", "imagenet", "none", "None", "random"):
    raise ConfigError(
        "backbone.name='ssd_mobilenet_v2' needs backbone.weights=PATH to a TF Object Detection "
        "API model: its frozen_inference_graph.pb or a TF1 checkpoint (prefix or folder). "
        f"Received: backbone.weights={b.weights!r}")
  if b.name == "keras_application" and not b.application:
    raise ConfigError("backbone.name='keras_application' needs backbone.application, "
                      "e.g. 'ResNet50'.")
  if b.input_size < 0 or (0 < b.input_size < 32):
    raise ConfigError(f"backbone.input_size must be >= 32 (or 0 for the backbone's own). "
                      f"Received: {b.input_size}")
  fields = b.to_dict()
  audio = fields.pop("audio", None) or {}
  backbone = BackboneSpec(**fields, audio=tuple(sorted(audio.items())))
  if config.optimizer.get("schedule", "staircase") not in ("staircase", "cosine"):
    raise ConfigError(f"optimizer.schedule must be staircase or cosine. Received: "
                      f"{config.optimizer.schedule!r}")
  if not config.tasks.keys():
    raise ConfigError("config.tasks is empty: define at least one task (see k4p1.config.task_config).")
  for key in ("batch_size", "eval_batch_size"):
    if config.train[key] < 1:
      raise ConfigError(f"train.{key} must be >= 1. Received: {config.train[key]}")
  tasks = []
  for name in task_order(config):
    t = config.tasks[name]
    where = f"tasks.{name}"
    if not name.replace("_", "").isalnum():
      raise ConfigError(f"Task names may hold letters, digits and '_' only (they name layers and "
                        f"signatures). Received: {name!r}")
    d = t.dataset
    if d.source == "tfds" and not d.name:
      raise ConfigError(f"{where}.dataset.name is empty: name a tensorflow-datasets dataset, "
                        f"e.g. 'cifar100'.")
    if d.augment not in ("inception_crop", "flip", "none", "kws"):
      raise ConfigError(f"{where}.dataset.augment must be inception_crop or none for images "
                        f"(and dataset.flip=True for flips), kws or none for audio. Received: "
                        f"{d.augment!r}")
    folds, fold = int(d.get("folds", 0)), int(d.get("fold", 0))
    if folds < 0 or folds == 1 or not 0 <= fold < max(folds, 1):
      raise ConfigError(f"{where}.dataset: folds must be 0 (split folders) or >= 2, and fold "
                        f"in 0..folds-1. Received: folds={folds}, fold={fold}")
    eval_crop = float(d.get("eval_crop", 1.0))
    if not 0.0 < eval_crop <= 1.0:
      raise ConfigError(f"{where}.dataset.eval_crop must be in (0, 1] (1: no crop). "
                        f"Received: {eval_crop}")
    dataset = DatasetSpec(
        source=d.source, name=d.name, path=d.path, classes=_parse_classes(d.classes, where),
        train_split=d.train_split, eval_split=d.eval_split, train_examples=d.train_examples,
        eval_examples=d.eval_examples, augment="none" if d.augment == "flip" else d.augment,
        flip=bool(d.get("flip", False)) or d.augment == "flip", eval_crop=eval_crop,
        folds=folds, fold=fold, noise=str(d.get("noise", "")))
    patch = parse_patch(t.patch, t.statistics, t.train_base, where=f"{where}.patch")
    if t.epochs <= 0 and t.steps <= 0:
      raise ConfigError(f"{where}: set epochs > 0 or steps > 0.")
    head_lr = float(t.get("head_lr", 0.0))
    if head_lr < 0 or t.lr < 0:
      raise ConfigError(f"{where}: learning rates must be >= 0 (0: the default). Received: "
                        f"lr={t.lr}, head_lr={head_lr}")
    loss_weight, batch_size = float(t.get("loss_weight", 1.0)), int(t.get("batch_size", 0))
    if loss_weight < 0 or batch_size < 0:
      raise ConfigError(f"{where}: loss_weight and batch_size must be >= 0. Received: "
                        f"loss_weight={loss_weight}, batch_size={batch_size}")
    input_size = int(t.get("input_size", 0))
    if input_size < 0 or 0 < input_size < 32:
      raise ConfigError(f"{where}.input_size must be >= 32 (or 0 for backbone.input_size). "
                        f"Received: {input_size}")
    tasks.append(TaskSpec(name=name, dataset=dataset, patch=patch, epochs=float(t.epochs),
                          steps=int(t.steps), lr=float(t.lr), head_lr=head_lr,
                          loss_weight=loss_weight, batch_size=batch_size,
                          input_size=input_size))
  names = [t.name for t in tasks]
  for t in (x.strip() for x in config.export.tasks.split(",") if x.strip()):
    if t not in names:
      raise ConfigError(f"export.tasks names '{t}', which is not a task.{_did_you_mean(t, names)}")
  for t in (x.strip() for x in config.export.mixed_tasks.split(",") if x.strip()):
    if t not in names:
      raise ConfigError(f"export.mixed_tasks names '{t}', which is not a task."
                        f"{_did_you_mean(t, names)}")
  export = _section(ExportSpec, config.export, "export",
                    tasks=tuple(_names(config.export.tasks)) or tuple(names),
                    mixed_tasks=tuple(_names(config.export.mixed_tasks)))
  spec = ExperimentSpec(
      backbone=backbone, tasks=tuple(tasks), multitask=_multitask(config, names),
      runtime=_section(RuntimeSpec, config.runtime, "runtime"),
      optimizer=_section(OptimizerSpec, config.optimizer, "optimizer"),
      data=_section(DataOptions, config.data, "data"),
      train=_section(TrainSpec, config.train, "train"),
      export=export, cascade=_cascade(config, tasks), report=_report(config),
      plugins=tuple(_names(config.get("plugins", ""))))
  check_declared_names(spec)
  return spec


def check_paths(spec: ExperimentSpec, mode: str = "train", workdir: str = ""):
  """Checks that every file the spec names exists (binaries call it before importing TF);
  train.init_from only when `mode` trains a `workdir` that has no checkpoint yet.

  Raises:
    ConfigError: naming the field and the missing path.
  """
  b = spec.backbone
  named = [("backbone.model_file", b.model_file)]
  if b.weights not in ("imagenet", "none", "", "random", "None"):
    named.append(("backbone.weights", b.weights))
  named += [(f"tasks.{t.name}.dataset.path", t.dataset.path) for t in spec.tasks]
  for field, path in named:
    if path and not (os.path.exists(path) or os.path.exists(path + ".index")):
      raise ConfigError(f"{field} file not found: {path!r}. Check the path (relative paths "
                        f"are read from {os.getcwd()}).")
  resuming = workdir and os.path.exists(os.path.join(workdir, "checkpoints", "checkpoint"))
  path = spec.train.init_from
  if mode == "train" and path and not resuming and not any(
      os.path.exists(p) for p in (path, path + ".index", path + ".old")):
    raise ConfigError(f"train.init_from not found: {path!r}. Give a checkpoint prefix, a folder "
                      f"holding checkpoints (e.g. an SWR run's WORKDIR/swr_stage1/<task>) or a "
                      f"workdir (relative paths are read from {os.getcwd()}).")


MULTITASK_STEPS = ("summed", "sampled")


def _multitask(config, names: list[str]) -> MultitaskSpec:
  """The `multitask` section, checked against the tasks."""
  if "multitask" not in config:
    return MultitaskSpec()
  m = config.multitask
  joint = _names(m.tasks)
  for t in joint:
    if t not in names:
      raise ConfigError(f"multitask.tasks names '{t}', which is not a task."
                        f"{_did_you_mean(t, names)} Tasks: {', '.join(names)}")
  twice = sorted({t for t in joint if joint.count(t) > 1})
  if twice:
    raise ConfigError(f"multitask.tasks lists {twice} more than once. Received: {m.tasks!r}")
  if len(joint) == 1:
    raise ConfigError(f"multitask.tasks needs at least two tasks to train jointly (or '' for "
                      f"none). Received: {m.tasks!r}")
  if m.step not in MULTITASK_STEPS:
    raise ConfigError(f"multitask.step must be one of {MULTITASK_STEPS}. Received: {m.step!r}")
  declared("sampler", config.get("plugins", "")).lookup(m.sampler)  # registered classes
  if m.temperature <= 0 or m.steps < 0:
    raise ConfigError(f"multitask.temperature must be > 0 and multitask.steps >= 0. Received: "
                      f"temperature={m.temperature}, steps={m.steps}")
  workers = _workers(m.get("workers", ""), joint)
  if workers and m.step != "sampled":
    raise ConfigError("multitask.workers assigns workers to tasks, which needs "
                      "multitask.step='sampled' (a summed step trains every task at once).")
  return _section(MultitaskSpec, m, "multitask", tasks=tuple(joint), workers=workers)


def _cascade(config, tasks: list) -> CascadeSpec:
  """The `cascade` section, checked against the tasks."""
  if "cascade" not in config:
    return CascadeSpec()
  c = config.cascade
  names = _names(c.tasks)
  by_name = {t.name: t for t in tasks}
  for t in names:
    if t not in by_name:
      raise ConfigError(f"cascade.tasks names '{t}', which is not a task."
                        f"{_did_you_mean(t, list(by_name))} Tasks: {', '.join(by_name)}")
  if len(names) == 1 or len(set(names)) != len(names):
    raise ConfigError(f"cascade.tasks needs at least two distinct tasks (models of one problem "
                      f"at different costs), or '' for none. Received: {c.tasks!r}")
  datasets = {by_name[t].dataset for t in names}
  if len(datasets) > 1:
    raise ConfigError(f"cascade.tasks {names} must solve the same problem (the same dataset and "
                      f"classes): a cascade passes an example from one model to the next.")
  if not 0.0 < float(c.validation) < 1.0:
    raise ConfigError(f"cascade.validation is the share of the eval split that builds the "
                      f"cascade; it must be in (0, 1) so that the rest can measure it. "
                      f"Received: {c.validation}")
  if not 0.0 <= float(c.tolerance) < 1.0:
    raise ConfigError(f"cascade.tolerance is an accuracy (0.005 = half a point) in [0, 1). "
                      f"Received: {c.tolerance}")
  if int(c.thresholds) < 1:
    raise ConfigError(f"cascade.thresholds must be >= 1. Received: {c.thresholds}")
  return _section(CascadeSpec, c, "cascade", tasks=tuple(names))


def _report(config) -> ReportSpec:
  """The `report` section: compare='NAME=PATCH;...' parsed into ((name, PatchSpec), ...)."""
  if "report" not in config:
    return ReportSpec()
  pairs = []
  for item in (x.strip() for x in str(config.report.compare).split(";") if x.strip()):
    name, eq, text = item.partition("=")
    if not eq or not name.strip():
      raise ConfigError(f"report.compare: write NAME=PATCH pairs separated by ';', e.g. "
                        f"'independent=full,last_layer'. Received: {config.report.compare!r}")
    pairs.append((name.strip(), parse_patch(text, where=f"report.compare.{name.strip()}")))
  return _section(ReportSpec, config.report, "report", compare=tuple(pairs))


def _workers(text: str, joint: list[str]) -> tuple:
  """'a:2,b:1' -> (('a', 2), ('b', 1)): every joint task at least one worker, no other task."""
  if not str(text).strip():
    return ()
  counts = {}
  for item in _names(text):
    task, colon, count = item.partition(":")
    if not colon or not count.strip().isdigit():
      raise ConfigError(f"multitask.workers: write task:count pairs, e.g. "
                        f"'{joint[0] if joint else 'a'}:2'. Received: {text!r}")
    if task not in joint:
      raise ConfigError(f"multitask.workers names '{task}', which is not a joint task."
                        f"{_did_you_mean(task, joint)} Joint tasks: {', '.join(joint)}")
    counts[task] = int(count)
  idle = [t for t in joint if counts.get(t, 0) < 1]
  if idle:
    raise ConfigError(f"multitask.workers leaves {idle} with no worker: give every joint task "
                      f"at least one. Received: {text!r}")
  return tuple((t, counts[t]) for t in joint)


def _names(text: str) -> list[str]:
  return [x.strip() for x in str(text).split(",") if x.strip()]

