"""Folding: one task's patches baked into plain Keras weights, for deployment.

`fold_task(models, task)` returns an ordinary Keras model (only keras.layers; no k4p1 layer)
that computes what the task's model computes in inference mode, in two passes:

  1. `plain_backbone`: every task layer becomes its `to_plain()` form (each patch kind says how
     its weights merge into an ordinary Keras layer: depthwise patches become DepthwiseConv2D
     kernels, channel scale-and-bias is multiplied into the wrapped layer, a bias patch adds
     into the bias or beta, private copies stay as they are); other layers are copied.
  2. `fold_batchnorm_into_convs` (one generic graph pass that knows no patch kind): every BN
     layer (the task's patch or the base's own) that directly follows a convolution is folded
     into it: kernel * gamma / sqrt(var + eps) and bias beta - mean * gamma / sqrt(var + eps);
     the BN layer leaves the graph.

The task's classifier is attached, and the image frontend becomes Rescaling (tf),
Rescaling + Normalization (torch) or a 1x1 channel-swapping convolution (caffe).

With `fold_batchnorm=False` the BN layers stay (as keras BatchNormalization holding the task's
values): the backbone is then layer-for-layer the keras.applications architecture with the base's
layer names, which is what rebuilding it elsewhere by layer name needs (e.g. in tf_keras for QAT).

Example:
  folded = fold_task(models, "flowers")
  folded(images)   # == models.tasks["flowers"].model(images, training=False), within 1e-5
"""

from __future__ import annotations

import inspect

import keras
import numpy as np

from k4p1 import patches
from k4p1.model import assemble_task_model
from k4p1.patches.base import scale_output_channels
from k4p1.patches.batchnorm import bn_values
from k4p1.patches.graph import PatchGraph

_CONV = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _plain_name(layer, task: str) -> str:
  """The base layer's name: patch layers and private copies carry a `_<task>` suffix."""
  base = getattr(layer, "base_name", "")
  if base:
    return base
  suffix = f"_{task}"
  return layer.name[:-len(suffix)] if layer.name.endswith(suffix) else layer.name


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
  """(s, t) with bn(x) = x * s + t in inference mode."""
  gamma, beta, mean, var = (np.asarray(v, np.float64) for v in bn_values(bn))
  s = gamma / np.sqrt(var + bn.epsilon)
  return s, beta - mean * s


def plain_backbone(backbone: keras.Model, task: str) -> keras.Model:
  """A copy of a task's backbone made of plain Keras layers under the base's names.

  Every task layer becomes its `to_plain()` form (its weights merged into an ordinary Keras
  layer: patch layers declare how); every other layer is copied with its weights. Nothing is
  shared with the original.
  """
  def call(layer, *args, **kwargs):
    # A patch layer's call may take arguments its plain form does not (a bias patch that wraps
    # a BN takes `mask`; the plain conv it becomes elsewhere does not).
    params = inspect.signature(layer.call).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
      kwargs = {k: v for k, v in kwargs.items() if k in params}
    return layer(*args, **kwargs)

  return keras.models.clone_model(
      backbone, clone_function=lambda layer: patches.to_plain(layer, _plain_name(layer, task)),
      call_function=call)


def fold_batchnorm_into_convs(model: keras.Model) -> keras.Model:
  """The same function with every BN that directly follows a conv folded into that conv.

  One generic graph pass: kernel * gamma / sqrt(var + eps) and bias
  beta - mean * gamma / sqrt(var + eps), computed in float64; the BN leaves the graph.
  A BN after anything else (or after a conv whose output also goes elsewhere) stays.
  """
  layers = {l.name: l for l in model.layers}
  graph = PatchGraph.of(model)
  conv_bn = {}  # conv layer name -> the BN folded into it
  for name, layer in layers.items():
    if isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 3):
      (producer,) = graph.producers[name] if len(graph.producers[name]) == 1 else (None,)
      if (producer and isinstance(layers[producer], _CONV) and graph.consumers[producer] == 1
          and getattr(layers[producer].activation, "__name__", "") == "linear"):
        conv_bn[producer] = layer
  folded_bns = {id(bn) for bn in conv_bn.values()}
  pairs = []

  def clone(layer):
    if id(layer) in folded_bns:
      new = keras.layers.Identity(name=layer.name)
    else:
      config = layer.get_config()
      if layer.name in conv_bn:
        config = {**config, "use_bias": True}
      new = type(layer).from_config(config)
    pairs.append((new, layer))
    return new

  def call(layer, *args, **kwargs):
    if isinstance(layer, keras.layers.Identity):
      return args[0]  # a folded BN: not part of the folded graph at all
    return layer(*args, **kwargs)

  folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
  for new, old in pairs:
    if isinstance(new, keras.layers.Identity):
      continue
    if old.name in conv_bn:
      s, t = _bn_affine(conv_bn[old.name])
      kernel = scale_output_channels(old.kernel.numpy().astype(np.float64), old, s)
      bias = old.bias.numpy() if old.use_bias else np.zeros_like(s)
      dtype = new.kernel.dtype
      new.set_weights([kernel.astype(dtype), (bias * s + t).astype(dtype)])
    else:
      new.set_weights(old.get_weights())
  return folded


def fold_backbone(backbone: keras.Model, task: str, fold_batchnorm: bool = True) -> keras.Model:
  """A plain-Keras copy of a task's (patched) backbone with its own, folded weights."""
  plain = plain_backbone(backbone, task)
  return fold_batchnorm_into_convs(plain) if fold_batchnorm else plain


def fold_task(models, task: str, fold_batchnorm: bool = True) -> keras.Model:
  """The task's whole inference model (float images in [0, 255] -> logits), folded.

  Args:
    models: a k4p1.model.TaskModels holding `task`.
    task: the task to fold.
    fold_batchnorm: fold BN layers into the convolutions before them (False: keep them as
      plain BatchNormalization, layer-for-layer the base architecture).

  Raises:
    ValueError: `task` is not one of `models.tasks`.
  """
  if task not in models.tasks:
    raise ValueError(f"No task {task!r} to fold. Tasks: {sorted(models.tasks)}")
  t = models.tasks[task]
  backbone = fold_backbone(t.patched.model, task, fold_batchnorm)
  head = keras.layers.Dense(t.num_classes, name=t.head.name)
  model = assemble_task_model(t.input_spec, t.frontend.to_plain(), backbone, head,
                              name=f"{task}_folded")
  head.set_weights(t.head.get_weights())
  return model
