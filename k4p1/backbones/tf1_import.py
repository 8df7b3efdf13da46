"""TF1 MobileNetV2 weights (TF-slim / Object Detection API) -> the Keras MobileNetV2.

The TensorFlow Object Detection API's SSD and SSDLite MobileNetV2 detectors keep their featurizer
under `FeatureExtractor/MobilenetV2/...`; TF-slim's classification checkpoints use `MobilenetV2/...`.
Both name the same layers the same way (`Conv`, `expanded_conv`, `expanded_conv_1/expand`, ...,
`Conv_1`), so one name map serves both. Sources:

  * a frozen inference graph (`frozen_inference_graph.pb`): weights are Const nodes;
  * a TF1 checkpoint (`model.ckpt-NNNN` prefix, or a folder with a `checkpoint` file): weights are
    variables; with `use_moving_averages` (the OD API's `use_moving_average: true`) the
    `.../ExponentialMovingAverage` shadow values are read where present.

Every Keras layer with weights must find its tensors with the right shapes, or `TF1ImportError`
says which are missing or mismatched and what to set. Tensors outside the featurizer (the SSD box
predictor, the extra `layer_19_*` feature maps, optimizer slots) are ignored and counted.

Example:
  model = keras.applications.MobileNetV2(input_shape=(300, 300, 3), include_top=False,
                                         weights=None)
  report = load_mobilenet_v2(model, "ssdlite/frozen_inference_graph.pb")
  report.assigned   # 260 arrays: 52 convolution kernels + 52 BN layers x 4
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from k4p1.errors import K4P1Error

# TF-slim layer names inside the MobileNetV2 scope, for Keras MobileNetV2 layer names.
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras BN weight order
_BLOCK = re.compile(r"^block_(\d+)_(expand|depthwise|project)(_BN)?$")


class TF1ImportError(K4P1Error, ValueError):
  """A TF1 graph or checkpoint cannot be mapped onto the Keras model; the message says why."""


def slim_names(keras_layer_name: str) -> tuple[str, ...] | None:
  """TF-slim tensor names (inside the MobilenetV2 scope) of a Keras MobileNetV2 layer's weights.

  Returns None for layers that have no TF-slim counterpart (pads, activations, adds).

  Example:
    slim_names("block_3_depthwise_BN")
    # ('expanded_conv_3/depthwise/BatchNorm/gamma', ..., '.../moving_variance')
  """
  name = keras_layer_name
  if name == "Conv1":
    return ("Conv/weights",)
  if name == "bn_Conv1":
    return tuple(f"Conv/BatchNorm/{w}" for w in _BN_WEIGHTS)
  if name == "Conv_1":
    return ("Conv_1/weights",)
  if name == "Conv_1_bn":
    return tuple(f"Conv_1/BatchNorm/{w}" for w in _BN_WEIGHTS)
  m = re.match(r"^expanded_conv_(depthwise|project)(_BN)?$", name)
  if m:
    block, part, bn = "expanded_conv", m.group(1), m.group(2)
  else:
    m = _BLOCK.match(name)
    if not m:
      return None
    block, part, bn = f"expanded_conv_{m.group(1)}", m.group(2), m.group(3)
  if bn:
    return tuple(f"{block}/{part}/BatchNorm/{w}" for w in _BN_WEIGHTS)
  kernel = "depthwise_weights" if part == "depthwise" else "weights"
  return (f"{block}/{part}/{kernel}",)


# ---------------------------------------------------------------------------
# Reading tensors.


def read_frozen_graph(path: str) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Const tensors of a frozen GraphDef, and each FusedBatchNorm's epsilon by its scope."""
  import tensorflow as tf
  graph_def = tf.compat.v1.GraphDef()
  with open(path, "rb") as f:
    data = f.read()
  try:
    graph_def.ParseFromString(data)
  except Exception as e:  # protobuf raises DecodeError, a private type
    raise TF1ImportError(f"{path} is not a TensorFlow GraphDef ({type(e).__name__}: {e}). Pass a "
                         f"frozen_inference_graph.pb or a TF1 checkpoint prefix.") from e
  tensors, epsilons = {}, {}
  for node in graph_def.node:
    if node.op == "Const" and node.attr["value"].tensor.dtype == tf.float32.as_datatype_enum:
      tensors[node.name] = tf.make_ndarray(node.attr["value"].tensor)
    elif node.op.startswith("FusedBatchNorm"):
      epsilons[node.name.rsplit("/", 1)[0]] = float(node.attr["epsilon"].f)
  return tensors, epsilons


def _checkpoint_prefix(path: str) -> str:
  import tensorflow as tf
  if os.path.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise TF1ImportError(f"{path} is a folder without a `checkpoint` index file. Pass the "
                           f"checkpoint prefix, e.g. {os.path.join(path, 'model.ckpt')}.")
    return prefix
  if os.path.exists(path + ".index") or os.path.exists(path):
    return path
  raise TF1ImportError(f"No TF1 checkpoint or frozen graph at {path!r}: expected a .pb file, a "
                       f"checkpoint prefix (PREFIX.index must exist) or a checkpoint folder.")


def read_checkpoint(path: str, use_moving_averages: bool = False) -> dict[str, np.ndarray]:
  """Float variables of a TF1 (name-based) checkpoint; EMA shadow values replace them if asked."""
  import tensorflow as tf
  prefix = _checkpoint_prefix(path)
  try:
    reader = tf.train.load_checkpoint(prefix)
  except Exception as e:  # tf raises several error types for unreadable files
    raise TF1ImportError(f"Cannot read TF1 checkpoint {prefix!r} ({type(e).__name__}: {e}).") from e
  dtypes = reader.get_variable_to_dtype_map()
  tensors = {n: reader.get_tensor(n) for n, d in dtypes.items() if d == tf.float32}
  if use_moving_averages:
    suffix = "/ExponentialMovingAverage"
    for name in [n for n in tensors if n.endswith(suffix)]:
      tensors[name[:-len(suffix)]] = tensors[name]
  return tensors


def read_tf1_tensors(path: str, use_moving_averages: bool = False):
  """(tensors by name, BN epsilons by scope) from a frozen graph (.pb) or a TF1 checkpoint."""
  if path.endswith(".pb") and os.path.isfile(path):
    return read_frozen_graph(path)
  return read_checkpoint(path, use_moving_averages), {}


def find_scope(tensors) -> str:
  """The name prefix under which a MobileNetV2 lives, e.g. 'FeatureExtractor/MobilenetV2/'."""
  scopes = sorted(n[:-len("Conv/weights")] for n in tensors
                  if n.endswith("MobilenetV2/Conv/weights"))
  if not scopes:
    examples = sorted(tensors)[:5]
    raise TF1ImportError(
        f"No MobileNetV2 found: no tensor named '.../MobilenetV2/Conv/weights' among "
        f"{len(tensors)} float tensors (first: {examples}). k4p1 reads TF-slim / Object Detection "
        f"API MobileNetV2 models (scopes 'MobilenetV2/' or 'FeatureExtractor/MobilenetV2/').")
  if len(scopes) > 1:
    raise TF1ImportError(f"Several MobileNetV2 scopes found: {scopes}. Pass scope= to choose one.")
  return scopes[0]


def infer_alpha(tensors, scope: str) -> float:
  """The width multiplier whose Keras MobileNetV2 has this model's last projection width."""
  key = scope + "expanded_conv_16/project/weights"
  if key not in tensors:
    raise TF1ImportError(f"{key} not found: the model under {scope!r} is not a full MobileNetV2.")
  width = tensors[key].shape[-1]
  for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
    if _make_divisible(int(320 * alpha)) == width:
      return alpha
  raise TF1ImportError(f"{key} has {width} output channels, which matches no MobileNetV2 width "
                       f"multiplier (0.35 .. 1.4).")


def _make_divisible(v, divisor=8):
  """keras.applications.mobilenet_v2's channel rounding (copied: it is private there)."""
  new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new_v + divisor if new_v < 0.9 * v else new_v


# ---------------------------------------------------------------------------
# Assigning.


@dataclasses.dataclass
class ImportReport:
  """What `load_mobilenet_v2` did. `ignored` counts source tensors no Keras weight used."""
  source: str
  scope: str
  assigned: int
  ignored: int
  epsilon: float | None


def load_mobilenet_v2(model, path: str, scope: str | None = None,
                      use_moving_averages: bool = False) -> ImportReport:
  """Assigns a TF1 MobileNetV2 (frozen graph or checkpoint) to a Keras MobileNetV2 in place.

  Args:
    model: keras.applications.MobileNetV2(include_top=False) of the right alpha, any input size.
    path: frozen_inference_graph.pb, a TF1 checkpoint prefix, or a folder with a checkpoint.
    scope: the prefix of the MobileNetV2 tensors; None finds it.
    use_moving_averages: read `.../ExponentialMovingAverage` values from a checkpoint.

  Raises:
    TF1ImportError: missing tensors, wrong shapes (with the alpha the source has), or a BN
      epsilon the Keras model cannot match. Nothing is assigned unless everything matches.
  """
  tensors, epsilons = read_tf1_tensors(path, use_moving_averages)
  scope = find_scope(tensors) if scope is None else scope
  plan, missing, mismatched = [], [], []
  for layer in model.layers:
    names = slim_names(layer.name)
    if names is None or not layer.weights:
      if layer.weights and names is None:
        raise TF1ImportError(f"Keras layer {layer.name!r} has weights but no TF-slim "
                             f"counterpart: is this a keras.applications MobileNetV2?")
      continue
    if len(names) != len(layer.weights):
      raise TF1ImportError(f"Keras layer {layer.name!r} has {len(layer.weights)} weights; the "
                           f"TF-slim layer has {len(names)} ({names}).")
    for variable, short in zip(layer.weights, names):
      full = scope + short
      if full not in tensors:
        missing.append(full)
        continue
      value = tensors[full]
      if tuple(value.shape) != tuple(variable.shape):
        mismatched.append(f"{full}: source {tuple(value.shape)} vs Keras {layer.name}/"
                          f"{variable.name} {tuple(variable.shape)}")
        continue
      plan.append((variable, value))
  if missing or mismatched:
    try:
      hint = f" The source is a MobileNetV2 with alpha={infer_alpha(tensors, scope)}."
    except TF1ImportError:
      hint = ""
    details = (f"{len(missing)} missing (first: {missing[:3]})" if missing else "") + \
        ("; " if missing and mismatched else "") + \
        (f"{len(mismatched)} with other shapes (first: {mismatched[:3]})" if mismatched else "")
    raise TF1ImportError(
        f"{path} does not fit Keras model {model.name!r} under scope {scope!r}: {details}.{hint} "
        f"Build the Keras MobileNetV2 with that alpha (backbone.alpha).")
  epsilon = None
  used_eps = {eps for s, eps in epsilons.items() if s.startswith(scope)}
  if used_eps:
    if len(used_eps) > 1:
      raise TF1ImportError(f"{path}: BatchNorm epsilons differ between layers ({sorted(used_eps)}).")
    epsilon = used_eps.pop()
  for variable, value in plan:
    variable.assign(value)
  if epsilon is not None:
    import keras
    for layer in model.layers:
      # The graph stores epsilon as float32 (1e-3 -> 0.0010000000475): equal is left alone.
      if (isinstance(layer, keras.layers.BatchNormalization)
          and not np.isclose(layer.epsilon, epsilon, rtol=1e-6, atol=0)):
        layer.epsilon = epsilon
  used = {v.path for v, _ in plan}
  return ImportReport(source=path, scope=scope, assigned=len(used),
                      ignored=len(tensors) - len(plan), epsilon=epsilon)


def write_tf1_checkpoint(tensors: dict[str, np.ndarray], prefix: str) -> str:
  """Writes named arrays as a TF1 name-based checkpoint (what `tf.compat.v1.train.Saver` writes).

  For tests and conversions: e.g. the featurizer of a frozen graph as a training checkpoint.
  """
  import tensorflow as tf
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return prefix


def keras_to_tf1_tensors(model, scope: str = "MobilenetV2/") -> dict[str, np.ndarray]:
  """The inverse map: a Keras MobileNetV2's weights under TF-slim names."""
  out = {}
  for layer in model.layers:
    names = slim_names(layer.name)
    if names and layer.weights:
      for variable, short in zip(layer.weights, names):
        out[scope + short] = np.asarray(variable.numpy())
  return out
