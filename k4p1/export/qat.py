r"""Quantization-aware training of a folded task with tensorflow-model-optimization, in a subprocess.

tfmot only accepts tf_keras (Keras 2) models, and importing it switches `tf.keras` to Keras 2 for
the whole process. So the Keras 3 process writes the task (its folded weights by layer name, plus
training and calibration images) to an .npz, and a separate process
(`TF_USE_LEGACY_KERAS=1 python -m k4p1.export.qat IN.npz OUT.tflite`) rebuilds the same
keras.applications MobileNetV2 in tf_keras, loads the weights by layer name, checks that it
computes what the Keras 3 model computes, annotates it for quantization (everything except the
input Rescaling), fine-tunes only the task's own layers (its patched BN / depthwise layers and
classifier; every layer for full fine-tuning) with the quantizers in place, and converts it to a
full-integer int8 .tflite with the same contract as k4p1.export.tflite's int8 files (uint8 `images` in,
`probabilities` out).

Needs `pip install --no-deps tf-keras==2.21.0 tensorflow-model-optimization==0.8.1 dm-tree`
(requirements-qat.txt; --no-deps because tfmot pins an old absl-py and tf-keras would pull a second
TensorFlow). MobileNetV2 backbones only (the rebuilt architecture is keras.applications').

Example (Keras 3 process):
  tflite = quantization_aware_int8(models, "cars", images, labels, steps=200)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from k4p1.errors import K4P1Error


class QATError(K4P1Error, RuntimeError):
  """Quantization-aware training could not run; the message says what failed."""


def _mobilenet_alpha(model) -> float:
  name = model.name  # keras.applications names it mobilenetv2_<alpha>_<size>
  if not name.startswith("mobilenetv2_"):
    raise QATError(f"QAT rebuilds keras.applications MobileNetV2 in tf_keras; this backbone is "
                   f"{name!r}. Use post-training int8 (k4p1.export.tflite) for other backbones.")
  return float(name.split("_")[1])


def write_task(models, task: str, images: np.ndarray, labels: np.ndarray, path: str):
  """The folded task (BN kept, base layer names) and its data, for the tf_keras process."""
  from k4p1.export.fold import fold_task
  folded = fold_task(models, task, fold_batchnorm=False)
  backbone = next(l for l in folded.layers if l.name == models.base.name)
  head = folded.layers[-1]
  if models.backbone.preprocessing != "tf":
    raise QATError(f"QAT supports [-1, 1] ('tf') preprocessing; this backbone uses "
                   f"{models.backbone.preprocessing!r}.")
  arrays = {}
  names = []
  for layer in list(backbone.layers) + [head]:
    key = "logits" if layer is head else layer.name
    for i, w in enumerate(layer.get_weights()):
      arrays[f"w/{key}/{i}"] = w
    if layer.get_weights():
      names.append(key)
  check = images[:8].astype(np.float32)
  # The task's own layers: QAT trains only these (and the quantizers), so the result is still
  # this task's patch on the shared base, quantized, not a further fine-tuned whole network.
  t = models.tasks[task]
  if t.patched.private_copy or t.spec.patch.train_base:
    own = [l.name for l in backbone.layers if l.weights]
  else:
    own = sorted({base.name for _, base, _ in t.patched.patch_layers})
  own += ["logits"] if t.spec.patch.train_head else []
  meta = {"alpha": _mobilenet_alpha(models.base), "size": t.input_spec.size,
          "preprocessing": models.backbone.preprocessing,
          "num_classes": t.num_classes, "layers": names, "task": task, "trainable": own}
  np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
           images=images.astype(np.uint8), labels=labels.astype(np.int32),
           check_images=check, check_logits=np.asarray(folded(check)), **arrays)


def quantization_aware_int8(models, task: str, images: np.ndarray, labels: np.ndarray,
                            steps: int = 200, batch_size: int = 32, lr: float = 1e-4,
                            timeout: int = 3600) -> bytes:
  """Runs QAT for `task` in a tf_keras subprocess; returns the int8 .tflite bytes.

  Args:
    images, labels: training images (uint8 [n, size, size, 3], already at the input size) and
      labels; also the calibration set of the final conversion.
    steps, batch_size, lr: the fine-tuning run (Adam).

  Raises:
    QATError: with the subprocess's own error (tfmot missing, weight mismatch, ...).
  """
  with tempfile.TemporaryDirectory(prefix="k4p1-qat-") as tmp:
    src, dst = os.path.join(tmp, "task.npz"), os.path.join(tmp, "task.tflite")
    write_task(models, task, images, labels, src)
    import k4p1
    root = os.path.dirname(os.path.dirname(os.path.abspath(k4p1.__file__)))  # k4p1's parent
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    cmd = [sys.executable, "-m", "k4p1.export.qat", src, dst, str(steps), str(batch_size), str(lr)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=root)
    if proc.returncode != 0:
      raise QATError(f"QAT subprocess failed (exit {proc.returncode}): "
                     f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}\n"
                     f"{proc.stderr[-2000:]}")
    with open(dst, "rb") as f:
      return f.read()


# ---------------------------------------------------------------------------
# The tf_keras side (runs only in the subprocess).


def _subprocess_main(src: str, dst: str, steps: int, batch_size: int, lr: float):
  try:
    import tensorflow as tf
    import tf_keras
    import tensorflow_model_optimization as tfmot
  except ImportError as e:
    raise SystemExit(f"QAT needs tf-keras and tensorflow-model-optimization "
                     f"(pip install --no-deps -r requirements-qat.txt): {e}")
  with np.load(src) as f:
    data = {k: f[k] for k in f.files}
  meta = json.loads(data["meta"].tobytes().decode())
  size = meta["size"]
  inputs = tf_keras.Input((size, size, 3), name="images")
  from k4p1.frontends import ImageFrontend  # the one definition of the preprocessing
  frontend = ImageFrontend(meta["preprocessing"]).to_plain(tf_keras.layers)
  x = inputs
  for layer in frontend:
    x = layer(x)
  base = tf_keras.applications.MobileNetV2(input_tensor=x, alpha=meta["alpha"],
                                           include_top=False, weights=None)
  x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
  logits = tf_keras.layers.Dense(meta["num_classes"], name="logits")(x)
  model = tf_keras.Model(inputs, logits)
  for name in meta["layers"]:
    layer = model.get_layer(name)
    weights = [data[f"w/{name}/{i}"] for i in range(len(layer.get_weights()))]
    layer.set_weights(weights)
  diff = float(np.abs(model(data["check_images"], training=False).numpy()
                      - data["check_logits"]).max())
  if diff > 1e-3:
    raise SystemExit(f"The tf_keras rebuild does not compute what the Keras 3 model computes "
                     f"(max logit difference {diff:.2e}).")
  annotate = tfmot.quantization.keras.quantize_annotate_layer

  def clone(layer):
    copy = layer.__class__.from_config(layer.get_config())
    return copy if layer.name in {f.name for f in frontend} else annotate(copy)

  annotated = tf_keras.models.clone_model(model, clone_function=clone)
  annotated.set_weights(model.get_weights())
  with tfmot.quantization.keras.quantize_scope():
    qat = tfmot.quantization.keras.quantize_apply(annotated)
  own, matched = set(meta["trainable"]), set()
  for layer in qat.layers:  # quantize_apply wraps layers as quant_<name>
    name = layer.name[len("quant_"):] if layer.name.startswith("quant_") else layer.name
    layer.trainable = name in own
    matched |= {name} & own
  if matched != own:
    raise SystemExit(f"QAT model has no layers {sorted(own - matched)} to train.")
  qat.compile(optimizer=tf_keras.optimizers.Adam(lr),
              loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  images = data["images"].astype(np.float32)
  labels = data["labels"]
  rng = np.random.RandomState(0)
  for _ in range(steps):
    idx = rng.randint(0, len(images), batch_size)
    qat.train_on_batch(images[idx], labels[idx])

  @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
  def predict(images):
    return {"probabilities": tf.nn.softmax(qat(images, training=False), axis=-1)}

  saved = os.path.join(os.path.dirname(dst), "qat_saved_model")
  module = tf.Module()
  module.model = qat
  tf.saved_model.save(module, saved, signatures={meta["task"]: predict.get_concrete_function()})
  converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[meta["task"]])
  converter.optimizations = [tf.lite.Optimize.DEFAULT]

  def representative():
    for image in images[:256]:
      yield [image[None]]

  converter.representative_dataset = representative
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.uint8
  content = converter.convert()
  with open(dst, "wb") as f:
    f.write(content)


if __name__ == "__main__":
  _subprocess_main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                   float(sys.argv[5]))
