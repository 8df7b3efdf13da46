r"""Real latency of the `cascade` signature against its most accurate model alone and against the
largest resolution alone, in one run.

Reads a trained multi-resolution workdir (train.py --config=configs/multires.py...): its
SavedModel, cascade.json and config. Feeds the cascade signature and every resolution's
signature the same uint8 images, the test share of the eval split (the examples the cascade
was not built on), at batch sizes 1 and 64, in interleaved rounds (machine drift hits all
alike); the median round counts. Reports milliseconds per image, images per second, the
cascade's measured speed-up over the most accurate resolution, each one's accuracy on those
images and the multiply-add ratio cascade.json predicted.

Run (after training; 2 cores, a few minutes):
  K4P1_DATA_DIR=../shared/data python bench/cascade_latency.py --workdir=/tmp/mr_c10 \
      --out=bench/results/cascade_latency_cifar10.json
Smoke (CI): python bench/cascade_latency.py --workdir=SMOKE_RUN --smoke --out=/tmp/c.json
"""

import json
import os
import statistics
import time

import common  # noqa: F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained multi-resolution workdir.")
_OUT = flags.DEFINE_string("out", "bench/results/cascade_latency.json", "Result JSON path.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "64"], "Batch sizes to time.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_IMAGES = flags.DEFINE_integer("images", 512, "Test images timed per round (at most the test "
                               "share's size).")
_SMOKE = flags.DEFINE_bool("smoke", False, "One round over a few images: pipeline check only.")


def main(argv):
  del argv
  import numpy as np
  import tensorflow as tf
  from k4p1 import config as config_lib
  from k4p1 import experiment
  from k4p1.methods.multires.cascade import Cascade, stratified_split
  from k4p1.methods.multires import CASCADE_FILE
  from k4p1.data import load_task_data

  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required: a train.py workdir of configs/multires.py.")
  workdir = _WORKDIR.value
  path = os.path.join(workdir, CASCADE_FILE)
  if not os.path.exists(path):
    raise app.UsageError(f"{path} not found: train with a config that sets cascade.tasks "
                         f"(configs/multires.py does) first.")
  with open(path) as f:
    definition = json.load(f)
  cascade = Cascade.from_json(definition)
  reference = definition["reference"]
  spec = experiment.resolve(config_lib.from_json(os.path.join(workdir, "config.json")))
  common.warn_if_busy()
  machine = common.machine()
  task = spec.task(reference)
  data = load_task_data(task.dataset, definition["input_sizes"][reference], spec.data.data_dir)
  images, labels = [], []
  for x, y in data.eval_batches(256):
    images.append(np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8))
    labels.append(y.numpy())
  images, labels = np.concatenate(images), np.concatenate(labels)
  _, test = stratified_split(labels, definition["split"]["validation_share"])
  rounds, count = _ROUNDS.value, _IMAGES.value
  batch_sizes = [int(b) for b in _BATCHES.value]
  if _SMOKE.value:
    rounds, count, batch_sizes = 1, 8, [1, 4]
  test = test[:count]
  images, labels = images[test], labels[test]

  loaded = tf.saved_model.load(os.path.join(workdir, "saved_model"))
  fns = {"cascade": loaded.signatures["cascade"], reference: loaded.signatures[reference]}
  fns.update({t: loaded.signatures[t] for t in definition["multiply_adds"] if t not in fns})
  largest = max(definition["input_sizes"], key=definition["input_sizes"].get)
  accuracy, exits = {}, None
  for name, fn in fns.items():
    out = [fn(images=tf.constant(images[i:i + 64])) for i in range(0, len(images), 64)]
    accuracy[name] = float(np.mean(np.concatenate([o["classes"].numpy() for o in out]) == labels))
    if name == "cascade":
      stage = np.concatenate([o["stage"].numpy() for o in out])
      exits = [float(np.mean(stage == i)) for i in range(len(cascade.stages))]
  rows = []
  for bs in batch_sizes:
    batches = [tf.constant(images[i:i + bs]) for i in range(0, len(images) - bs + 1, bs)]
    if not batches:
      continue
    for fn in fns.values():
      fn(images=batches[0])  # warm-up: tracing and first-call allocations
    times = {name: [] for name in fns}
    for r in range(rounds):
      order = list(fns) if r % 2 == 0 else list(fns)[::-1]
      for name in order:
        t0 = time.perf_counter()
        for b in batches:
          fns[name](images=b)["classes"].numpy()
        times[name].append((time.perf_counter() - t0) / (len(batches) * bs))
    per_image = {name: statistics.median(t) for name, t in times.items()}
    rows.append({"batch_size": bs, "images_timed": len(batches) * bs,
                 "ms_per_image": {n: round(1000 * t, 4) for n, t in per_image.items()},
                 "images_per_second": {n: round(1 / t, 2) for n, t in per_image.items()},
                 "speedup_vs_reference": round(per_image[reference] / per_image["cascade"], 3),
                 "speedup_vs_largest": round(per_image[largest] / per_image["cascade"], 3)})
    print(f"batch {bs}: " + ", ".join(f"{n} {1000 * t:.2f}" for n, t in per_image.items()) +
          f" ms/image; cascade speed-up over {reference}: "
          f"{rows[-1]['speedup_vs_reference']:.3f}x, over {largest} (the largest): "
          f"{rows[-1]['speedup_vs_largest']:.3f}x", flush=True)
  test_costs = definition["cascade"]["test"]["mean_cost"]
  result = {
      "benchmark": "cascade_latency", **machine, "workdir": os.path.abspath(workdir),
      "stages": definition["stages"], "reference": reference, "largest": largest,
      "expected_multiply_add_ratio": round(
          test_costs / definition["multiply_adds"][reference], 4),
      "multiply_adds": definition["multiply_adds"],
      "accuracy_on_timed_images": accuracy, "exits_on_timed_images": exits,
      "rounds": rounds, "results": rows}
  common.write_result(_OUT.value, result)


if __name__ == "__main__":
  app.run(main)
