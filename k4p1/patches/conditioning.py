"""Clone a functional model with an extra conditioning input its layers can read.

`keras.models.clone_model(call_function=...)` can replace how each layer is called, but not add
a model input: its `input_tensors` must match `model.input`, and a call_function that reads any
other tensor leaves the clone "not connected to inputs". `clone_with_condition` adds one: it
clones `model` on a new input like `model.input` plus `condition`, with your call_function,
which may close over `condition` (e.g. a task id per example gathering per-task gates).

Layers are shared with `model` by identity unless `clone_function` says otherwise, so the
conditioned model trains and serves the same weights.

Example:
  task_id = keras.Input(shape=(), dtype="int32", name="task_id")
  # TaskAffine: your layer, called as TaskAffine(...)(x, task_id); y = x * gamma[t] + beta[t]

  def call_function(layer, *args, **kwargs):
    if isinstance(layer, keras.layers.BatchNormalization):  # a new gate after every BN
      return TaskAffine(num_tasks=3)(layer(*args, **kwargs), task_id)
    return layer(*args, **kwargs)

  conditioned = clone_with_condition(backbone, task_id, call_function)
  conditioned([images, task_ids])   # inputs: backbone's input(s), then task_id
"""

from __future__ import annotations

from typing import Callable, Optional

import keras


def _is_model_input(tensor) -> bool:
  history = getattr(tensor, "_keras_history", None)
  return history is not None and isinstance(history[0], keras.layers.InputLayer)


def clone_with_condition(model: keras.Model, condition: keras.KerasTensor,
                         call_function: Callable,
                         clone_function: Optional[Callable] = None,
                         name: Optional[str] = None) -> keras.Model:
  """Clones `model` with `condition` as an extra input that `call_function` may read.

  Args:
    model: a functional (or built Sequential) Keras model.
    condition: a `keras.Input` (e.g. `keras.Input(shape=(), dtype="int32")`); the returned
      model takes it as its last input.
    call_function: `(layer, *args, **kwargs) -> output`, as in keras.models.clone_model; it
      is called for every layer on the clone's tensors and may use `condition`.
    clone_function: `layer -> layer`, as in keras.models.clone_model; default: every layer
      is shared by identity with `model` (same weights).
    name: the new model's name (default: f"{model.name}_conditioned").

  Returns:
    keras.Model whose inputs are new Inputs like `model`'s (same shapes, dtypes and names, in
    flattened order) followed by `condition`, and whose outputs are `model`'s structure.

  Raises:
    ValueError: `model` has no symbolic inputs (not functional), or `condition` is not a
      keras.Input of its own, or it shares a name with one of `model`'s inputs.

  Example:
    cond = keras.Input(shape=(), dtype="int32", name="task_id")
    out = clone_with_condition(model, cond, lambda layer, *a, **k: layer(*a, **k))
    len(out.inputs)  # 2
  """
  try:
    originals = list(keras.tree.flatten(model.input)) if isinstance(model, keras.Model) else None
  except (AttributeError, ValueError):  # a subclassed or never-built model has no `input`
    originals = None
  if not originals:
    raise ValueError(f"clone_with_condition needs a functional keras.Model (or a Sequential "
                     f"built on a keras.Input): one with symbolic inputs to clone from. "
                     f"Received: model={type(model).__name__}")
  if not isinstance(condition, keras.KerasTensor) or not _is_model_input(condition):
    raise ValueError(f"`condition` must be a keras.Input (a symbolic input of its own, e.g. "
                     f"keras.Input(shape=(), dtype='int32')), not a computed tensor. "
                     f"Received: condition={condition!r}")
  if any(condition is t for t in originals):
    raise ValueError(f"`condition` must be a new keras.Input, not one of {model.name}'s own "
                     f"inputs. Received: condition={condition!r}")
  names = [t.name for t in originals]
  if condition.name in names:
    raise ValueError(f"`condition` is named {condition.name!r} like an input of {model.name} "
                     f"({names}); give it another name. Received: condition={condition!r}")
  inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in originals]
  # clone_model only accepts input_tensors shaped like the model's inputs and builds its result
  # from them, so it first gets a model that already has a (so far unused) condition input.
  spare = keras.Input(batch_shape=condition.shape, dtype=condition.dtype,
                      name=f"{condition.name}_spare")
  with_condition = keras.Model(originals + [spare], model.output)
  clone = keras.models.clone_model(
      with_condition, input_tensors=inputs + [condition],
      clone_function=clone_function or (lambda layer: layer), call_function=call_function)
  return keras.Model(inputs + [condition], clone.output,
                     name=name or f"{model.name}_conditioned")
