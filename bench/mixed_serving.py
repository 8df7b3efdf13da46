r"""Mixed-task serving throughput: one `mixed` call against splitting the batch by task.

K scale-and-bias tasks on one MobileNetV2 (1.0 @224 by default, random weights: speed does not
depend on values). A batch of B uint8 images with random task ids is served two ways, each a
traced tf.function, in interleaved rounds (median counts):
  mixed  k4p1.export.mixed.mixed_serving_function: one call; inside the graph the batch is partitioned
         by task id (tf.dynamic_partition), each task's own model runs on its part (tasks with
         no example are skipped) and the rows are stitched back (tf.dynamic_stitch)
  split  group the batch by task id on the client and call each task's own serving function
         on its group (one call per task)
Both run the same per-task graphs on the same groups; mixed saves the per-task calls and
transfers and lets TensorFlow's executor run the tasks' graphs side by side.
Reports images/s for each and the ratio mixed / split.

Run (a few minutes on 2 cores):
  python bench/mixed_serving.py --out=bench/results/mixed_serving.json
Smoke (CI): python bench/mixed_serving.py --smoke --out=/tmp/mixed_serving.json
"""

import statistics
import time

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/mixed_serving.json", "Result JSON path.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny model, 1 round: pipeline check only.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "MobileNetV2 width.")
_SIZE = flags.DEFINE_integer("size", 224, "Input resolution (images are served at this size).")
_TASKS = flags.DEFINE_list("num_tasks", ["2", "4", "8"], "Task counts to measure.")
_BATCH = flags.DEFINE_integer("batch", 32, "Images per request.")
_CALLS = flags.DEFINE_integer("calls", 5, "Timed calls per way per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")


def main(argv):
  del argv
  import numpy as np
  import tensorflow as tf
  from k4p1.backbones import build_backbone
  from k4p1.config import BackboneSpec
  from k4p1.export import serving_function
  from k4p1.export.mixed import mixed_serving_function
  from k4p1.model import TaskModels
  from k4p1.testing import tiny_task

  common.warn_if_busy()
  machine = common.machine()
  alpha, size, batch, calls, rounds = (_ALPHA.value, _SIZE.value, _BATCH.value, _CALLS.value,
                                       _ROUNDS.value)
  task_counts = [int(k) for k in _TASKS.value]
  if _SMOKE.value:
    alpha, size, batch, calls, rounds, task_counts = 0.35, 32, 8, 1, 1, [2]
  backbone = build_backbone(BackboneSpec("mobilenet_v2", alpha=alpha, input_size=size,
                                         weights="none"))
  models = TaskModels(backbone)
  for k in range(max(task_counts)):
    models.add(tiny_task(f"task{k}", "scale_bias,last_layer"), num_classes=10 + k)
  rng = np.random.RandomState(0)
  images = tf.constant(rng.randint(0, 256, (batch, size, size, 3)).astype("uint8"))
  results = []
  for k in task_counts:
    tasks = [f"task{i}" for i in range(k)]
    ids_np = rng.randint(0, k, batch).astype("int32")
    ids = tf.constant(ids_np)
    mixed = mixed_serving_function(models, tasks)
    singles = [serving_function(models, t) for t in tasks]
    groups = [tf.constant(np.where(ids_np == i)[0]) for i in range(k)]

    def split():
      out = None
      for fn, index in zip(singles, groups):
        if int(index.shape[0]):
          out = fn(images=tf.gather(images, index))["probabilities"]
      return out

    ways = {"mixed": lambda: mixed(images=images, task_id=ids)["probabilities"], "split": split}
    for fn in ways.values():
      fn().numpy()  # trace and warm up
    samples = {w: [] for w in ways}
    for r in range(rounds):
      for w, fn in ways.items():
        start = time.perf_counter()
        for _ in range(calls):
          out = fn()
        out.numpy()
        samples[w].append(calls * batch / (time.perf_counter() - start))
      print(f"{k} tasks, round {r + 1}/{rounds}: " +
            "  ".join(f"{w}={samples[w][-1]:.1f} img/s" for w in ways), flush=True)
    mixed_ips, split_ips = (statistics.median(samples[w]) for w in ("mixed", "split"))
    results.append({"num_tasks": k, "batch": batch, "mixed_images_per_second": round(mixed_ips, 2),
                    "split_images_per_second": round(split_ips, 2),
                    "ratio_mixed_to_split": round(mixed_ips / split_ips, 3),
                    "rounds": {w: [round(s, 2) for s in v] for w, v in samples.items()}})
  out = {"benchmark": "mixed_serving", "model": f"MobileNetV2 {alpha} @{size}",
         "patch": "scale_bias,last_layer", "calls_per_round": calls, "rounds": rounds,
         "smoke": _SMOKE.value,
         **machine, "results": results}
  common.write_result(_OUT.value, out)
  print(f"\n{'tasks':>5}{'mixed img/s':>13}{'split img/s':>13}{'mixed/split':>13}")
  for r in results:
    print(f"{r['num_tasks']:>5}{r['mixed_images_per_second']:>13.1f}"
          f"{r['split_images_per_second']:>13.1f}{r['ratio_mixed_to_split']:>13.2f}")


if __name__ == "__main__":
  app.run(main)
