"""Inference cost counted from the Keras graph: multiply-adds per example.

Walks a functional model (nested functional models included) at a given input shape with
symbolic tensors only, nothing computed, and counts the multiply-adds of every convolution and
dense layer, the convention of the MobileNet papers (MobileNetV2 1.0 @224: ~300M). Patch layers
that wrap a convolution (TAPS) count as the layer they wrap: folded, they are that layer.
Normalisation, activations, pooling and additions are not counted; layers with weights this
module cannot count are listed in `uncounted`, never silently dropped.

Example:
  cost = multiply_adds(task_model, (224, 224, 3))
  cost["total"]          # 300,774,272 for MobileNetV2 1.0 with its 1000-class classifier
"""

from __future__ import annotations

import math

import keras

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _shape(tensor) -> tuple:
  return tuple(int(d) if d is not None else 1 for d in tensor.shape)


def layer_multiply_adds(layer, inputs, outputs) -> int | None:
  """Multiply-adds of one call of `layer` per example; 0 for layers without any; None when
  the layer has weights this function does not know how to count."""
  if not isinstance(layer, _CONV + (keras.layers.Dense,)):
    layer = getattr(layer, "layer", layer)  # a patch wrapping a conv counts as the conv
  x = _shape(keras.tree.flatten(inputs)[0])
  y = _shape(keras.tree.flatten(outputs)[0])
  if isinstance(layer, keras.layers.SeparableConv2D):
    in_c, k = x[-1], math.prod(layer.kernel_size)
    spatial = math.prod(y[1:-1])
    mid = in_c * layer.depth_multiplier
    # the depthwise part runs at the output's stride; the pointwise part maps mid -> filters
    return spatial * mid * k + spatial * mid * y[-1]
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    return math.prod(y[1:]) * math.prod(layer.kernel_size)
  if isinstance(layer, _CONV):
    return math.prod(y[1:]) * math.prod(layer.kernel_size) * x[-1] // layer.groups
  if isinstance(layer, keras.layers.Dense):
    return math.prod(y[1:]) * x[-1]
  # Layers whose weights are all vectors (BN, the patches' scale-and-bias, biases) cost O(size).
  return None if any(len(w.shape) > 1 for w in layer.weights) else 0


def multiply_adds(model: keras.Model, input_shape) -> dict:
  """Counts `model`'s multiply-adds per example at `input_shape` (without the batch axis).

  Returns:
    {"total": int, "layers": [(path, class name, multiply-adds)] of every counted layer with
    some, "uncounted": [paths of layers with weights it could not count]}.

  Raises:
    ValueError: `model` is not a functional model (its graph cannot be walked).
  """
  if not hasattr(model, "_run_through_graph"):
    raise ValueError(f"{model.name} is not a functional Keras model: its graph cannot be "
                     f"walked to count multiply-adds.")
  layers, uncounted = [], []

  def walk(graph, inputs, prefix):
    def operation_fn(op):
      def run(*args, **kwargs):
        if hasattr(op, "_run_through_graph") and hasattr(op, "_nodes_by_depth"):
          flat = keras.tree.flatten(args)
          return walk(op, flat[0] if len(flat) == 1 else flat, f"{prefix}{op.name}/")
        out = op.compute_output_spec(*args, **kwargs)
        macs = layer_multiply_adds(op, args, out)
        if macs is None:
          uncounted.append(prefix + op.name)
        elif macs:
          layers.append((prefix + op.name, type(op).__name__, int(macs)))
        return out
      return run
    return graph._run_through_graph(inputs, operation_fn=operation_fn)

  walk(model, keras.KerasTensor((1, *tuple(input_shape))), "")
  return {"total": int(sum(m for _, _, m in layers)), "layers": layers, "uncounted": uncounted}
