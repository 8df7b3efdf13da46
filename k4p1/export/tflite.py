"""TFLite: any set of tasks as one .tflite with a signature per task (or a task per file).

`tflite_model` converts any set of tasks to one .tflite with one signature per task (or one task
per file), as float32, dynamic-range or full-integer int8.

TFLite signatures take `images`: float32 [batch, size, size, 3] pixels in [0, 255] (int8
models: uint8, quantized with scale 1 and zero point 0, i.e. the raw pixels), and return
`probabilities` float32 [batch, classes]. Resizing is the caller's job on a phone.

Example:
  models = assemble(BackboneSpec("mobilenet_v2", alpha=0.35, input_size=96, weights="none"),
                    ["cars.k4p1.npz", "flowers.k4p1.npz"])
  data = tflite_model(models, ["cars", "flowers"], quantization="dynamic")
  runner = Interpreter(model_content=data).get_signature_runner("cars")
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Callable, Iterable, Optional

import keras
import numpy as np
import tensorflow as tf

from k4p1.errors import DeployError
from k4p1.model import TaskModels

QUANTIZATIONS = ("float32", "dynamic", "int8")


def _check_tasks(models: TaskModels, tasks: list[str]):
  if not tasks:
    raise DeployError("No tasks to convert.")
  unknown = [t for t in tasks if t not in models.tasks]
  if unknown:
    raise DeployError(f"Task(s) {unknown} are not in this model. Tasks: {sorted(models.tasks)}")


def tflite_function(models: TaskModels, task: str):
  """float32 pixels [batch, size, size, 3] -> {'probabilities'}: what a TFLite signature runs."""
  model = models.tasks[task].model

  @tf.function(input_signature=[models.tasks[task].input_spec.tensor_spec()])
  def predict(images):
    return {"probabilities": tf.nn.softmax(model(images, training=False), axis=-1)}

  return predict


def tflite_model(models: TaskModels, tasks: list[str], quantization: str = "float32",
                 representative: Optional[Callable[[str], Iterable[np.ndarray]]] = None) -> bytes:
  """One .tflite flatbuffer with a signature per task.

  Args:
    models: the tasks (e.g. from `assemble`).
    tasks: task names, one signature each.
    quantization: 'float32'; 'dynamic' (int8 weights, float activations); or 'int8' (weights
      and activations; uint8 input; needs `representative`).
    representative: task name -> iterable of float32 image batches [n, size, size, 3] in
      [0, 255] drawn from that task's training data (int8 only; a few hundred images).

  Raises:
    DeployError: unknown task, unknown quantization, or int8 without representative data.
  """
  _check_tasks(models, tasks)
  if quantization not in QUANTIZATIONS:
    raise DeployError(f"quantization must be one of {QUANTIZATIONS}. Received: {quantization!r}")
  if quantization == "int8" and representative is None:
    raise DeployError(
        "Full-integer int8 conversion needs representative data to calibrate activation ranges: "
        "pass representative=task -> image batches from that task's training data (deploy.py "
        "reads them from the dataset recorded in each patch file, or --representative_config).")
  archive = keras.export.ExportArchive()
  for t in tasks:
    archive.track(models.tasks[t].model)
    archive.add_endpoint(t, tflite_function(models, t))
  tmp = tempfile.mkdtemp(prefix="k4p1-tflite-")
  try:
    archive.write_out(tmp, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(tasks))
    if quantization in ("dynamic", "int8"):
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
      multi = len(tasks) > 1

      def samples():  # several signatures: (signature key, inputs) pairs calibrate each one
        for t in tasks:
          key = models.tasks[t].input_spec.name
          for batch in representative(t):
            for example in np.asarray(batch, np.float32):
              yield (t, {key: example[None]}) if multi else {key: example[None]}

      converter.representative_dataset = samples
      if any(models.tasks[t].input_spec.modality == "audio" for t in tasks):
        # The log-mel frontend runs in float32 on float waveforms, everything after it (the
        # backbone and classifier) in int8: a power spectrum spans ~1e9 and its log has no
        # int8 kernel, so quantizing the frontend left a trained keyword spotter at 35% where
        # Keras had 70%. The converter has no option for that; its quantization debugger's
        # route does it: calibrate, then quantize with the frontend's nodes denylisted.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        # pylint: disable=protected-access
        converter._experimental_calibrate_only = True
        calibrated = converter.convert()
        from tensorflow.lite.python import convert as lite_convert
        quantized = lite_convert.mlir_quantize(
            calibrated, disable_per_channel=converter._experimental_disable_per_channel,
            denylisted_nodes=frontend_nodes(calibrated, models, tasks))
        return lite_convert.deduplicate_readonly_buffers(quantized)  # as convert() does
      else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def frontend_nodes(content: bytes, models, tasks) -> list:
  """Output tensor names of every op of the tasks' audio frontends in a converted model (they
  carry the task model's and the frontend layer's name scopes, e.g.
  `k4p1_kws_1/preprocess_1/Log`; an image task's frontend of the same name is not matched)."""
  import re
  from k4p1.frontends import LogMelFrontend
  scopes = [(models.tasks[t].model.name, layer.name) for t in tasks
            for layer in models.tasks[t].model.layers if isinstance(layer, LogMelFrontend)]
  if not scopes:
    return []
  scope = re.compile("|".join(rf"(^|/){re.escape(m)}(_\d+)?/{re.escape(f)}(_\d+)?/"
                              for m, f in scopes))
  it = interpreter(content)
  details = {d["index"]: d["name"] for d in it.get_tensor_details()}
  ops = it._get_ops_details()  # pylint: disable=protected-access
  return sorted({details[i] for op in ops for i in op["outputs"] if scope.search(details[i])})


def interpreter(content: bytes):
  """A LiteRT interpreter (ai_edge_litert; tf.lite.Interpreter is deprecated)."""
  from ai_edge_litert.interpreter import Interpreter
  return Interpreter(model_content=content)


def run_tflite(content: bytes, task: str, images: np.ndarray, resize: bool = False) -> np.ndarray:
  """Probabilities of `task`'s signature for [n, size, size, 3] images in [0, 255] (or, for an
  audio model, [n, samples] waveforms in [-1, 1]).

  A TFLite file takes images at its model's size only (unlike the SavedModel, which resizes
  inside): other sizes are refused, or, with `resize`, resized bilinearly first as the
  SavedModel does.

  Raises:
    DeployError: the images' size is not the model's and `resize` is False.
  """
  runner = interpreter(content).get_signature_runner(task)
  inputs = runner.get_input_details()
  if "waveforms" in inputs:
    samples = int(inputs["waveforms"]["shape"][1])
    x = np.asarray(images, np.float32)
    if x.ndim != 2 or x.shape[1] != samples:
      raise DeployError(f"TFLite task {task!r} takes waveforms [n, {samples}] (float32 in "
                        f"[-1, 1]); received shape {x.shape}. Pad or cut clips to {samples} "
                        f"samples first.")
    return runner(waveforms=x)["probabilities"]
  details = inputs["images"]
  x = np.asarray(images, np.float32)
  size = tuple(int(d) for d in details["shape"][1:3])
  if x.ndim != 4 or x.shape[-1] != details["shape"][-1]:
    raise DeployError(f"TFLite task {task!r} takes images [n, {size[0]}, {size[1]}, "
                      f"{details['shape'][-1]}]; received shape {x.shape}.")
  if x.shape[1:3] != size:
    if not resize:
      raise DeployError(
          f"TFLite task {task!r} takes {size[0]}x{size[1]} images; received "
          f"{x.shape[1]}x{x.shape[2]}. A TFLite file has a fixed input size: resize the images "
          f"first (run_tflite(..., resize=True) resizes bilinearly, as the SavedModel does).")
    x = tf.image.resize(x, size, method="bilinear").numpy()
  if details["dtype"] == np.uint8:
    scale, zero = details["quantization"]
    x = np.clip(np.round(x / scale + zero), 0, 255).astype(np.uint8)
  return runner(images=x)["probabilities"]
