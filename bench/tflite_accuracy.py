r"""TFLite per task: accuracy, top-1 agreement with Keras, and size, for every quantization.

For each task of a train.py run (default: the embedded default, k4p1_runs/digits), on the task's
real test split:
  keras     the task model in Keras (the reference)
  float32   TFLite float
  dynamic   TFLite dynamic-range (int8 weights)
  int8      TFLite full-integer, post-training (calibrated on --representative_examples
            training images of the task)
  qat_int8  TFLite full-integer after quantization-aware training with tfmot (k4p1.export.qat;
            --qat_steps of Adam on the task's training images), if tfmot is installed
Sizes: every per-task file, plus the multi-signature file of all tasks, per quantization.
Audio tasks (waveform input) get every post-training variant; their int8 file keeps the log-mel
frontend in float (k4p1.export.tflite) and is calibrated on training clips. QAT is images only.

A keyword spotter (the SWR table's English fold 0 at c = 0.3, exported):
  K4P1_DATA_DIR=../shared/data python train.py --config=configs/swr_kws.py:c=0.3,beta=10,\
      epochs=10,weights=/work/runs/kws_pretrain/base.weights.h5 --workdir=/tmp/kws_swr
  K4P1_DATA_DIR=../shared/data python bench/tflite_accuracy.py --workdir=/tmp/kws_swr \
      --out=bench/results/tflite_accuracy_kws.json

Run (after `python train.py`; about 10 minutes on 2 cores):
  python bench/tflite_accuracy.py --workdir=k4p1_runs/digits --out=bench/results/tflite_accuracy.json
Smoke (CI): python bench/tflite_accuracy.py --smoke --out=/tmp/tflite_accuracy.json
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/tflite_accuracy.json", "Result JSON path.")
_WORKDIR = flags.DEFINE_string("workdir", "k4p1_runs/digits", "A train.py workdir.")
_TASKS = flags.DEFINE_list("tasks", [], "Tasks (default: every task of the run).")
_REPR = flags.DEFINE_integer("representative_examples", 256, "int8 calibration images.")
_QAT_STEPS = flags.DEFINE_integer("qat_steps", 300, "QAT fine-tuning steps (0: skip QAT).")
_SMOKE = flags.DEFINE_bool("smoke", False, "One task, 32 test images, no QAT; trains the embedded "
                           "default's smoke run first unless --workdir is given.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  del argv
  import numpy as np
  import tensorflow as tf
  from k4p1 import config as config_lib
  from k4p1 import experiment
  from k4p1.export import patch_files, tflite
  from k4p1.data import load_task_data

  machine = common.machine()  # the load average before measuring
  workdir, tmp = _WORKDIR.value, None
  if _SMOKE.value and not _WORKDIR.present:
    tmp = tempfile.mkdtemp()
    workdir = os.path.join(tmp, "run")
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                    f"--config={os.path.join(ROOT, 'configs', 'digits.py')}:smoke",
                    f"--workdir={workdir}"], check=True, capture_output=True)
  try:
    spec = experiment.resolve(config_lib.from_json(os.path.join(workdir, "config.json")))
    patches = sorted(os.path.join(workdir, "patches", p)
                     for p in os.listdir(os.path.join(workdir, "patches")))
    base = os.path.join(workdir, "base.weights.h5")
    models = patch_files.assemble(spec.backbone, patches, base if os.path.exists(base) else "")
    tasks = _TASKS.value or list(models.tasks)
    if _SMOKE.value:
      tasks = tasks[-1:]
    data = {t: load_task_data(models.tasks[t].spec.dataset, models.tasks[t].input_spec,
                              spec.data.data_dir) for t in tasks}
    calibration = {t: [b.numpy() for b in data[t].representative_batches(_REPR.value)]
                   for t in tasks}  # read once, used by every int8 conversion
    representative = calibration.__getitem__
    have_tfmot = all(importlib.util.find_spec(m) for m in
                     ("tf_keras", "tensorflow_model_optimization"))
    sizes, rows = {}, []
    for q in tflite.QUANTIZATIONS:
      if len(tasks) > 1:
        sizes[f"all_tasks.{q}"] = len(tflite.tflite_model(models, tasks, q, representative))
    for t in tasks:
      images, labels = [], []
      for x, y in data[t].eval_batches(64):
        images.append(x.numpy())
        labels.append(y.numpy())
      images, labels = np.concatenate(images), np.concatenate(labels)
      if _SMOKE.value:
        images, labels = images[:32], labels[:32]
      keras_pred = tf.argmax(models.tasks[t].model(images, training=False), -1).numpy()
      variants = {q: tflite.tflite_model(models, [t], q, representative)
                  for q in tflite.QUANTIZATIONS}
      audio = models.tasks[t].input_spec.modality == "audio"
      if audio and _QAT_STEPS.value > 0:
        print(f"{t}: no QAT row: k4p1.export.qat takes uint8 images (audio models get "
              f"post-training int8).", flush=True)
      if have_tfmot and _QAT_STEPS.value > 0 and not _SMOKE.value and not audio:
        from k4p1.export.qat import quantization_aware_int8
        xs, ys = [], []  # one epoch of the task's training images (its own augmentation)
        for x, y in data[t].train_batches(64, seed=0).take(max(1, data[t].train.size // 64)):
          xs.append(x.numpy())
          ys.append(y.numpy())
        train_images, train_labels = np.concatenate(xs), np.concatenate(ys)
        variants["qat_int8"] = quantization_aware_int8(
            models, t, np.clip(train_images, 0, 255).astype("uint8"), train_labels,
            steps=_QAT_STEPS.value)
      row = {"task": t, "test_examples": int(len(labels)),
             "keras_accuracy": float((keras_pred == labels).mean()), "variants": {}}
      for name, content in variants.items():
        pred = np.concatenate([tflite.run_tflite(content, t, images[i:i + 64]).argmax(-1)
                               for i in range(0, len(images), 64)])
        row["variants"][name] = {
            "bytes": len(content), "accuracy": float((pred == labels).mean()),
            "agreement_with_keras": float((pred == keras_pred).mean())}
        sizes[f"{t}.{name}"] = len(content)
      rows.append(row)
      print(f"{t}: keras {100 * row['keras_accuracy']:.2f}%  " + "  ".join(
          f"{n} {100 * v['accuracy']:.2f}% (agree {100 * v['agreement_with_keras']:.1f}%, "
          f"{v['bytes']:,} B)" for n, v in row["variants"].items()), flush=True)
    out = {"benchmark": "tflite_accuracy", "workdir": workdir, "smoke": _SMOKE.value,
           "backbone": models.base.name,
           "qat": any("qat_int8" in r["variants"] for r in rows), "qat_steps": _QAT_STEPS.value,
           "results": rows,
           "sizes_bytes": sizes, **machine}
    common.write_result(_OUT.value, out)
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
