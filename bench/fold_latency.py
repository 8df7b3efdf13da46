r"""Inference latency of a folded task model against the unpatched base model, in one run.

Three models of the same task on MobileNetV2 (1.0 @224 by default, random weights: latency does
not depend on values), each `keras.Model` called through one traced tf.function:
  base       keras.applications MobileNetV2 + pooling + classifier (no k4p1 layer)
  patched    the task's k4p1 model (scale-and-bias + depthwise patches + classifier), unfolded
  folded     k4p1.export.fold.fold_task of that task (BN folded into the convolutions)
  folded_bn  fold_task(fold_batchnorm=False): the patch values in plain BN layers
  taps_gated   a TAPS task (taps + scale_bias + last layer, every other layer gated on),
               unfolded: each conv computes w + I(s >= tau) dw per call
  taps_folded  fold_task of it: the active deltas merged into plain kernels
Measured in interleaved rounds (machine drift hits all alike); the median per model counts,
reported as milliseconds per batch and as a ratio to `base` (goal: folded <= 1.02).

Run (about 3 minutes on 2 cores):
  python bench/fold_latency.py --out=bench/results/fold_latency.json
Smoke (CI): python bench/fold_latency.py --smoke --out=/tmp/fold_latency.json
"""

import statistics
import time

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/fold_latency.json", "Result JSON path.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model, 2 calls per round: pipeline check only.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width.")
_SIZE = flags.DEFINE_integer("size", 224, "Input resolution.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes to time.")
_CALLS = flags.DEFINE_integer("calls", 20, "Timed calls per model per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")


def main(argv):
  del argv
  import keras
  import numpy as np
  import tensorflow as tf
  from k4p1.backbones import build_backbone
  from k4p1.frontends import ImageFrontend
  from k4p1.config import BackboneSpec
  from k4p1.export.fold import fold_task
  from k4p1.model import TaskModels
  from k4p1.testing import tiny_task

  common.warn_if_busy()
  machine = common.machine()
  alpha, size, calls, rounds = _ALPHA.value, _SIZE.value, _CALLS.value, _ROUNDS.value
  batch_sizes = [int(b) for b in _BATCHES.value]
  if _SMOKE.value:
    alpha, size, calls, rounds, batch_sizes = 0.35, 32, 2, 1, [2]
  backbone = build_backbone(BackboneSpec("mobilenet_v2", alpha=alpha, input_size=size,
                                         weights="none"))
  models = TaskModels(backbone)
  task = models.add(tiny_task("task", "scale_bias,depthwise,last_layer"), num_classes=100)
  images = keras.Input((size, size, 3))
  x = ImageFrontend("tf")(images)
  x = keras.layers.GlobalAveragePooling2D()(backbone.model(x))
  base = keras.Model(images, keras.layers.Dense(100)(x), name="base")
  taps = models.add(tiny_task("taps", "taps,scale_bias,last_layer"), num_classes=100)
  from k4p1.methods.taps.report import gated_layers
  for i, layer in enumerate(gated_layers(models, "taps")):  # half on, with nonzero deltas
    for score, delta in zip(layer.scores, layer.deltas):
      score.assign(0.5 if i % 2 else 0.0)
      delta.assign(np.full(delta.shape, 1e-3, np.float32))
  variants = {"base": base, "patched": task.model,
              "folded": fold_task(models, "task"),
              "folded_bn": fold_task(models, "task", fold_batchnorm=False),
              "taps_gated": taps.model, "taps_folded": fold_task(models, "taps")}
  results = []
  for batch in batch_sizes:
    data = tf.constant(np.random.RandomState(0).uniform(0, 255, (batch, size, size, 3)),
                       tf.float32)
    fns = {}
    for name, model in variants.items():
      fn = tf.function(lambda t, m=model: m(t, training=False))
      fn(data).numpy()  # trace and warm up
      fns[name] = fn
    samples = {name: [] for name in variants}
    for r in range(rounds):
      for name, fn in fns.items():
        start = time.perf_counter()
        for _ in range(calls):
          out = fn(data)
        out.numpy()
        samples[name].append(1000 * (time.perf_counter() - start) / calls)
      print(f"batch {batch} round {r + 1}/{rounds}: " +
            "  ".join(f"{n}={samples[n][-1]:.2f}ms" for n in variants), flush=True)
    base_ms = statistics.median(samples["base"])
    for name in variants:
      ms = statistics.median(samples[name])
      results.append({"batch_size": batch, "model": name, "ms_per_batch": round(ms, 3),
                      "ratio_to_base": round(ms / base_ms, 4),
                      "rounds_ms": [round(s, 3) for s in samples[name]]})
  out = {"benchmark": "fold_latency", "model": f"MobileNetV2 {alpha} @{size}",
         "patch": "scale_bias,depthwise,last_layer", "calls_per_round": calls, "rounds": rounds,
         "smoke": _SMOKE.value,
         **machine, "results": results}
  common.write_result(_OUT.value, out)
  print(f"\n{'batch':>5}  {'model':<10}{'ms/batch':>10}{'x base':>8}")
  for r in results:
    print(f"{r['batch_size']:>5}  {r['model']:<10}{r['ms_per_batch']:>10.2f}{r['ratio_to_base']:>8.3f}")


if __name__ == "__main__":
  app.run(main)
