r"""Training throughput per regime, in one run: images/s, CPU time per image, and ratios.

Every regime is a task on one shared MobileNetV2 (1.0 @224, batch 32 by default), trained with
the exact step the trainer runs (k4p1.train.steps.make_train_step, RMSProp) on synthetic images
(throughput does not depend on pixel values). Regimes are measured in interleaved rounds so
that machine drift hits all of them alike; the median round counts. Measure on a quiet machine:
the load average at the start is recorded, and a warning is printed when it is above 0.5.

Run (about 10 minutes on 2 cores):
  python bench/train_throughput.py --out=bench/results/train_throughput.json
CI smoke mode (seconds; checks the pipeline, not the speed):
  python bench/train_throughput.py --smoke --out=/tmp/throughput.json

Baselines, both reported:
  full_fine_tuning                     k4p1's full fine-tuning: a private copy of the backbone
                                       whose BN layers use TF's fused kernel, like the patches
                                       (the like-for-like baseline)
  full_fine_tuning_stock_keras_bn      training the keras.applications model as it comes
                                       (Keras's elementwise BN): what a user would otherwise run
Reference rows:
  reference_plain_step                 the frozen-statistics S/B task model in a bare
                                       tf.function step (no strategy, no metrics): k4p1's step
                                       machinery should cost nothing (goal: >= 0.95x of it)
  scale_bias_frozen_stats_stock_keras  the same math written by hand in stock Keras: MobileNetV2
                                       with its BN layers called in inference mode, gamma, beta
                                       and the classifier trained, in a bare step
"""

import statistics
import time

import common  # noqa: F401  (first: puts the repository on the import path)
from absl import app, flags

_OUT = flags.DEFINE_string("out", "bench/results/train_throughput.json", "Result JSON path.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model and 2 steps: checks the pipeline only.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width.")
_SIZE = flags.DEFINE_integer("size", 224, "Input resolution.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per regime per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps before each regime's first round.")

REGIMES = (
    # (name, patch, statistics, train_base)
    ("full_fine_tuning", "full,last_layer", "batch", False),
    # The same, but training the stock keras.applications model itself (Keras's unfused BN):
    # what a user gets without k4p1. k4p1's private copies use the fused BN kernel.
    ("full_fine_tuning_stock_keras_bn", "last_layer", "batch", True),
    ("scale_bias_batch_stats", "scale_bias,last_layer", "batch", False),
    ("scale_bias_frozen_stats", "scale_bias,last_layer", "frozen", False),
    ("depthwise_last_layer", "depthwise,last_layer", "batch", False),
    # TAPS: a gated delta on every conv (all on, as at the start of training) + task BN.
    ("taps", "taps,scale_bias,last_layer", "batch", False),
    ("last_layer_only", "last_layer", "batch", False),
)
REFERENCES = ("reference_plain_step", "scale_bias_frozen_stats_stock_keras")


def _plain_step(model, variables, optimizer):
  """A bare tf.function step: forward, cross-entropy, gradients, update. Nothing else."""
  import keras
  import tensorflow as tf

  @tf.function
  def step(iterator):
    images, labels = next(iterator)
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          labels, logits, from_logits=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss, loss

  return step


def _stock_keras_scale_bias_frozen(alpha, size, classes):
  """(model, variables): keras.applications MobileNetV2 whose BN layers always run in
  inference mode while their gamma and beta train, plus a classifier: S/B by hand."""
  import keras
  base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha,
                                        include_top=False, weights=None)

  class InferenceModeBN(keras.layers.Wrapper):  # gamma and beta still get gradients
    def call(self, inputs, training=None, mask=None):
      return self.layer(inputs, training=False)

  body = keras.models.clone_model(
      base, clone_function=lambda layer: InferenceModeBN(layer) if isinstance(
          layer, keras.layers.BatchNormalization) else layer)
  images = keras.Input((size, size, 3))
  x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(images)
  x = keras.layers.GlobalAveragePooling2D()(body(x))
  head = keras.layers.Dense(classes)
  model = keras.Model(images, head(x))
  variables = [w for l in base.layers if isinstance(l, keras.layers.BatchNormalization)
               for w in (l.gamma, l.beta)] + head.trainable_weights
  return model, variables


def main(argv):
  del argv
  import keras
  import numpy as np
  import tensorflow as tf
  from k4p1.backbones import build_backbone
  from k4p1.config import BackboneSpec
  from k4p1.model import TaskModels
  from k4p1.train.steps import StepMetrics, make_train_step
  from k4p1.testing import tiny_task

  alpha, size, batch = _ALPHA.value, _SIZE.value, _BATCH.value
  steps, rounds, warmup = _STEPS.value, _ROUNDS.value, _WARMUP.value
  if _SMOKE.value:
    alpha, size, batch, steps, rounds, warmup = 0.35, 32, 8, 2, 1, 1
  common.warn_if_busy()
  machine = common.machine()
  backbone = build_backbone(BackboneSpec("mobilenet_v2", alpha=alpha, input_size=size,
                                         weights="none"))
  models = TaskModels(backbone)
  rng = np.random.RandomState(0)
  images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
  labels = rng.randint(0, 100, batch).astype("int32")
  # Finite: an endless prefetching iterator keeps the process alive at exit.
  data = tf.data.Dataset.from_tensors((images, labels)).repeat(warmup + steps * rounds + 1)
  strategy = tf.distribute.get_strategy()

  def rmsprop():
    return keras.optimizers.RMSprop(0.045, rho=0.9, momentum=0.9, epsilon=1.0)

  runs = {}  # name -> (task to activate or None, step function, iterator)
  for name, patch, statistics_mode, train_base in REGIMES:
    models.add(tiny_task(name, patch, statistics_mode, train_base), 100)
  models.add(tiny_task("reference_plain_step", "scale_bias,last_layer", "frozen"), 100)
  for name, *_ in REGIMES:
    task = models.activate(name)
    variables = models.trainable_variables(name)
    optimizer = rmsprop()
    optimizer.build(variables)
    # What the trainer runs: metrics and the step counter accumulated on device.
    step = make_train_step(strategy, task.model, optimizer, variables, batch, 100,
                           metrics=StepMetrics.create(name), counter=tf.Variable(0, tf.int64),
                           penalty=lambda name=name: models.penalty(name))
    runs[name] = (name, step, iter(data))
  reference = models.tasks["reference_plain_step"]
  variables = models.trainable_variables("reference_plain_step")
  optimizer = rmsprop()
  optimizer.build(variables)
  runs["reference_plain_step"] = ("reference_plain_step",
                                  _plain_step(reference.model, variables, optimizer), iter(data))
  stock_model, stock_variables = _stock_keras_scale_bias_frozen(alpha, size, 100)
  optimizer = rmsprop()
  optimizer.build(stock_variables)
  runs["scale_bias_frozen_stats_stock_keras"] = (
      None, _plain_step(stock_model, stock_variables, optimizer), iter(data))

  names = [name for name, *_ in REGIMES] + list(REFERENCES)
  samples = {name: [] for name in names}
  cpu_ms = {name: [] for name in names}
  for r in range(rounds):
    for name in names:
      task, step, iterator = runs[name]
      if task:
        models.activate(task)  # trainable flags (which BN run in inference mode) per task
      if r == 0:
        for _ in range(warmup):
          float(step(iterator)[0])
      start, cpu_start = time.perf_counter(), time.process_time()
      for _ in range(steps):
        loss = step(iterator)[0]
      float(loss)
      seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
      samples[name].append(steps * batch / seconds)
      cpu_ms[name].append(1000 * cpu / (steps * batch))
      print(f"round {r + 1}/{rounds} {name:<38} {samples[name][-1]:8.1f} images/s "
            f"{cpu_ms[name][-1]:8.1f} CPU ms/image", flush=True)
  full = statistics.median(samples["full_fine_tuning"])
  stock = statistics.median(samples["full_fine_tuning_stock_keras_bn"])
  rows = {name: (patch, statistics_mode, train_base)
          for name, patch, statistics_mode, train_base in REGIMES}
  rows["reference_plain_step"] = ("scale_bias,last_layer", "frozen", False)
  rows["scale_bias_frozen_stats_stock_keras"] = ("stock Keras, BN in inference mode", "frozen",
                                                 False)
  results = []
  for name in names:
    patch, statistics_mode, train_base = rows[name]
    ips = statistics.median(samples[name])
    results.append({"regime": name, "patch": patch, "statistics": statistics_mode,
                    "train_base": train_base, "images_per_second": round(ips, 2),
                    "cpu_ms_per_image": round(statistics.median(cpu_ms[name]), 2),
                    "ratio_to_full": round(ips / full, 3),
                    "ratio_to_stock_keras_full": round(ips / stock, 3),
                    "rounds": [round(x, 2) for x in samples[name]],
                    "cpu_ms_rounds": [round(x, 2) for x in cpu_ms[name]]})
  out = {
      "benchmark": "train_throughput",
      "model": f"MobileNetV2 {alpha} @{size}", "batch_size": batch, "steps_per_round": steps,
      "rounds": rounds, "smoke": _SMOKE.value, **machine,
      # k4p1's step / the bare step on the same model: per round (interleaved, so drift cancels),
      # and their median.
      "step_machinery_ratio_rounds": [round(a / b, 3) for a, b in zip(
          samples["scale_bias_frozen_stats"], samples["reference_plain_step"])],
      "step_machinery_ratio": round(statistics.median(
          a / b for a, b in zip(samples["scale_bias_frozen_stats"],
                                samples["reference_plain_step"])), 3),
      "results": results,
      # TAPS's step against full fine-tuning and against scale-and-bias (the same batch
      # statistics), per the median rounds above.
      "taps_ratio_to_full": round(statistics.median(samples["taps"]) / full, 3),
      "taps_ratio_to_scale_bias": round(statistics.median(samples["taps"]) / statistics.median(
          samples["scale_bias_batch_stats"]), 3),
  }
  common.write_result(_OUT.value, out)
  print(f"\n{'regime':<38}{'images/s':>10}{'CPU ms/img':>12}{'x full':>8}{'x stock full':>14}")
  for r in results:
    print(f"{r['regime']:<38}{r['images_per_second']:>10.1f}{r['cpu_ms_per_image']:>12.1f}"
          f"{r['ratio_to_full']:>8.2f}{r['ratio_to_stock_keras_full']:>14.2f}")
  print(f"k4p1 step / bare step (frozen S/B, same model): {out['step_machinery_ratio']:.3f}")
  print(f"TAPS step throughput: {out['taps_ratio_to_full']:.2f}x full fine-tuning, "
        f"{out['taps_ratio_to_scale_bias']:.2f}x scale-and-bias (batch statistics)")


if __name__ == "__main__":
  app.run(main)
