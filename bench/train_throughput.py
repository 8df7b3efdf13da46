r"""Training throughput per regime, in one run: images/s and the ratio to full fine-tuning.

Every regime is a task on one shared MobileNetV2 (1.0 @224, batch 32 by default), trained with
the exact step the trainer runs (k4p1.trainer.make_train_step, RMSProp) on synthetic images
(throughput does not depend on pixel values). Regimes are measured in interleaved rounds so
that machine drift hits all of them alike; the median round counts.

Run (about 5 minutes on 2 cores):
  python bench/train_throughput.py --out=bench/results/train_throughput.json
CI smoke mode (seconds; checks the pipeline, not the speed):
  python bench/train_throughput.py --smoke --out=/tmp/throughput.json

Two full fine-tuning baselines: `full_fine_tuning` (k4p1's private copy of the backbone, whose
BN layers use the same fused kernel as the patches: like for like) and
`full_fine_tuning_stock_keras_bn` (training the keras.applications model as it comes).
"""

import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/train_throughput.json", "Result JSON path.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model and 2 steps: checks the pipeline only.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width.")
_SIZE = flags.DEFINE_integer("size", 224, "Input resolution.")
_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per regime per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
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
    ("last_layer_only", "last_layer", "batch", False),
)


def main(argv):
  del argv
  import keras
  import numpy as np
  import tensorflow as tf
  from k4p1.backbones import build_backbone
  from k4p1.config import BackboneSpec
  from k4p1.export import atomic_write_text
  from k4p1.model import TaskModels
  from k4p1.trainer import make_train_step
  from k4p1.testing import tiny_task

  alpha, size, batch = _ALPHA.value, _SIZE.value, _BATCH.value
  steps, rounds, warmup = _STEPS.value, _ROUNDS.value, _WARMUP.value
  if _SMOKE.value:
    alpha, size, batch, steps, rounds, warmup = 0.35, 32, 8, 2, 1, 1
  backbone = build_backbone(BackboneSpec("mobilenet_v2", alpha=alpha, input_size=size,
                                         weights="none"))
  models = TaskModels(backbone)
  rng = np.random.RandomState(0)
  images = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
  labels = rng.randint(0, 100, batch).astype("int32")
  # Finite: an endless prefetching iterator keeps the process alive at exit.
  data = tf.data.Dataset.from_tensors((images, labels)).repeat(warmup + steps * rounds + 1)
  strategy = tf.distribute.get_strategy()
  steps_fns = {}
  for name, patch, statistics_mode, train_base in REGIMES:
    models.add(tiny_task(name, patch, statistics_mode, train_base), 100)
  for name, *_ in REGIMES:
    task = models.activate(name)
    optimizer = keras.optimizers.RMSprop(0.045, rho=0.9, momentum=0.9, epsilon=1.0)
    optimizer.build(task.model.trainable_variables)
    steps_fns[name] = (make_train_step(strategy, task.model, optimizer, batch, 100),
                       iter(data))
  samples = {name: [] for name, *_ in REGIMES}
  for r in range(rounds):
    for name, *_ in REGIMES:
      models.activate(name)  # trainable flags (which BN run in inference mode) per task
      step, iterator = steps_fns[name]
      if r == 0:
        for _ in range(warmup):
          float(step(iterator)[0])
      start = time.perf_counter()
      for _ in range(steps):
        loss = step(iterator)[0]
      float(loss)
      seconds = time.perf_counter() - start
      samples[name].append(steps * batch / seconds)
      print(f"round {r + 1}/{rounds} {name:<26} {samples[name][-1]:8.1f} images/s", flush=True)
  full = statistics.median(samples["full_fine_tuning"])
  stock = statistics.median(samples["full_fine_tuning_stock_keras_bn"])
  results = []
  for name, patch, statistics_mode, train_base in REGIMES:
    ips = statistics.median(samples[name])
    results.append({"regime": name, "patch": patch, "statistics": statistics_mode,
                    "train_base": train_base, "images_per_second": round(ips, 2),
                    "ratio_to_full": round(ips / full, 3),
                    "ratio_to_stock_keras_full": round(ips / stock, 3),
                    "rounds": [round(x, 2) for x in samples[name]]})
  out = {
      "benchmark": "train_throughput",
      "model": f"MobileNetV2 {alpha} @{size}", "batch_size": batch, "steps_per_round": steps,
      "rounds": rounds, "smoke": _SMOKE.value,
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                  "tensorflow": tf.__version__, "keras": keras.__version__},
      "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  atomic_write_text(_OUT.value, json.dumps(out, indent=2))
  print(f"\n{'regime':<34}{'images/s':>10}{'x full':>8}{'x stock full':>14}")
  for r in results:
    print(f"{r['regime']:<34}{r['images_per_second']:>10.1f}{r['ratio_to_full']:>8.2f}"
          f"{r['ratio_to_stock_keras_full']:>14.2f}")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
