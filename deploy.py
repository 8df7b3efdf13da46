r"""k4p1 deployment binary: one base plus patch files -> SavedModel, TF Serving layout, TFLite,
folded Keras models.

The tasks come from a training run or from patch files (no retraining):
  --workdir=RUN            a train.py workdir: its config.json, patches/*.k4p1.npz and, when the
                           run trained the base, base.weights.h5
  --config=FILE --patches=A.k4p1.npz,B.k4p1.npz [--base_weights=FILE.weights.h5]
                           the base a config's `backbone` builds, plus any patch files; each file
                           is checked against that base (architecture and weights) first

Outputs under --out (--formats, comma separated):
  saved_model  saved_model/                 a signature per task (+ `mixed` with --mixed_tasks,
                                            + the methods' own, e.g. `cascade` from
                                            WORKDIR/cascade.json or --cascade=FILE)
  serving      serving/models.config, serving/<--model_name>/<--serving_version>/
  tflite       tflite/all_tasks.<q>.tflite (a signature per task) and tflite/<task>.<q>.tflite,
               for each --quantization q in float32, dynamic, int8 (int8 calibrates on
               --representative_examples images of each task's training data)
  folded       folded/<task>.keras          plain Keras models, patches folded into the weights

Examples:
  python train.py && python deploy.py --workdir=k4p1_runs/digits --out=/tmp/k4p1_deploy \
      --formats=saved_model,serving,tflite,folded --quantization=float32,int8 \
      --mixed_tasks=digits_0_4,digits_5_9_scale_bias
  python deploy.py --config=configs/mobilenet_v2_scale_bias.py \
      --patches=cars.k4p1.npz,flowers.k4p1.npz --out=/tmp/phone --formats=tflite \
      --quantization=dynamic
"""

import glob
import os

from absl import app, flags

from k4p1 import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir to deploy from.")
_CONFIG = flags.DEFINE_string("config", None, "A config file whose backbone is the base "
                              "(with --patches; FILE:ARG passes ARG to get_config).")
_PATCHES = flags.DEFINE_list("patches", [], "Patch files (.k4p1.npz; globs allowed). Default with "
                             "--workdir: WORKDIR/patches/*.k4p1.npz.")
_BASE_WEIGHTS = flags.DEFINE_string("base_weights", "", "A .weights.h5 of the base (default with "
                                    "--workdir: WORKDIR/base.weights.h5 if present).")
_SHARED_HEAD = flags.DEFINE_string(
    "shared_head", "", "The classifier tasks share (last_layer(shared=true)), stored once: "
    "train.py's shared_head.npz (default with --workdir: WORKDIR/shared_head.npz if present).")
_SIGNATURE_FILES = flags.DEFINE_list(
    "signature_files", [], "KIND=PATH pairs: signatures a method adds from a file it wrote, "
    "e.g. cascade=RUN/cascade.json (the `cascade` signature). Default with --workdir: what "
    "the run's methods wrote there.")
# Shorthand of --signature_files=cascade=PATH, kept for the README's and older commands.
_SHORTHAND = flags.DEFINE_string(
    "cascade", "", "A cascade.json (train.py writes one with cascade.tasks): the SavedModel gets "
    "its `cascade` signature (the same as --signature_files=cascade=PATH).")
_OUT = flags.DEFINE_string("out", None, "Output folder (required).")
_FORMATS = flags.DEFINE_list("formats", ["saved_model"],
                             "saved_model, serving, tflite, folded.")
_TASKS = flags.DEFINE_list("tasks", [], "Tasks to deploy (default: all), in signature order; "
                           "the first is serving_default.")
_MIXED = flags.DEFINE_list("mixed_tasks", [], "Tasks of a `mixed` signature (task id per image).")
_QUANT = flags.DEFINE_list("quantization", ["float32"], "TFLite variants: float32, dynamic, int8.")
_REPR = flags.DEFINE_integer("representative_examples", 256,
                             "Training images per task that calibrate int8 quantization.")
_NAME = flags.DEFINE_string("model_name", "k4p1", "TF Serving model name.")
_VERSION = flags.DEFINE_integer("serving_version", 1, "TF Serving version folder.")

FORMATS = ("saved_model", "serving", "tflite", "folded")


def _sources():
  """(config, patch paths, base weights) from the flags."""
  from k4p1 import config as config_lib
  if bool(_WORKDIR.value) == bool(_CONFIG.value):
    raise ValueError("pass exactly one of --workdir (a train.py run) or --config (with "
                     "--patches).")
  if _WORKDIR.value:
    config = config_lib.from_json(os.path.join(_WORKDIR.value, "config.json"))
    patches = _PATCHES.value or [os.path.join(_WORKDIR.value, "patches", "*.k4p1.npz")]
    base = _BASE_WEIGHTS.value or os.path.join(_WORKDIR.value, "base.weights.h5")
    base = base if os.path.exists(base) or _BASE_WEIGHTS.value else ""
    head = _SHARED_HEAD.value or os.path.join(_WORKDIR.value, "shared_head.npz")
    head = head if os.path.exists(head) or _SHARED_HEAD.value else ""
  else:
    config = config_lib.load(_CONFIG.value)
    patches, base, head = _PATCHES.value, _BASE_WEIGHTS.value, _SHARED_HEAD.value
    if not patches:
      raise ValueError("--config needs --patches=FILE[,FILE...] (the tasks to deploy).")
  paths = []
  for pattern in patches:
    found = sorted(glob.glob(pattern))
    if not found:
      raise FileNotFoundError(f"No patch file matches {pattern!r}.")
    paths.extend(found)
  return config, paths, base, head


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: flags are written --name=value.",
             "Run `deploy.py --help` for every flag.")
  cli.setup_logging()
  from k4p1 import config as config_lib  # no TensorFlow: bad input fails at once
  from k4p1.errors import K4P1Error
  try:
    if not _OUT.value:
      raise ValueError("--out is required: the folder the deployment is written to.")
    unknown = sorted(set(_FORMATS.value) - set(FORMATS))
    if unknown:
      raise ValueError(f"unknown --formats {unknown}. Known: {', '.join(FORMATS)}")
    config, patch_paths, base_weights, shared_head = _sources()
    config_lib.validate(config)
    cli.import_tensorflow()
    run(config, patch_paths, base_weights, shared_head)
  except (K4P1Error, FileNotFoundError, ValueError) as e:
    cli.fail(str(e))


def run(config, patch_paths, base_weights, shared_head=""):
  from k4p1 import experiment, export, outputs
  from k4p1.export import fold, mixed, patch_files, serving, tflite
  from k4p1.files import atomic_write_bytes
  from k4p1.data import load_task_data
  from k4p1.export import DeployError
  bad_q = sorted(set(_QUANT.value) - set(tflite.QUANTIZATIONS))
  if bad_q:
    raise ValueError(f"unknown --quantization {bad_q}. Known: {', '.join(tflite.QUANTIZATIONS)}")
  spec = experiment.resolve(config)
  models = patch_files.assemble(spec.backbone, patch_paths, base_weights, shared_head)
  tasks = _TASKS.value or list(models.tasks)
  for t in tasks + _MIXED.value:
    if t not in models.tasks:
      raise DeployError(f"Task {t!r} is not among the patch files' tasks: {sorted(models.tasks)}")
  out = _OUT.value
  mixed_fn = mixed.mixed_serving_function(models, _MIXED.value) if _MIXED.value else None
  written = []
  kinds = outputs.method_signatures(spec, _WORKDIR.value) if _WORKDIR.value else {}
  given = list(_SIGNATURE_FILES.value) + ([f"cascade={_SHORTHAND.value}"]
                                          if _SHORTHAND.value else [])
  for item in given:
    kind, eq, path = item.partition("=")
    if not eq or not os.path.exists(path):
      raise DeployError(f"--signature_files: write KIND=PATH with an existing file. "
                        f"Received: {item!r}")
    kinds[kind] = outputs.signature_items(kind, path)
  if "saved_model" in _FORMATS.value:
    written.append(export.export_saved_model(models, tasks, os.path.join(out, "saved_model"),
                                             mixed=mixed_fn, kinds=kinds))
  if "serving" in _FORMATS.value:
    written.append(serving.write_serving_layout(models, tasks, os.path.join(out, "serving"),
                                                _NAME.value, _VERSION.value, mixed=mixed_fn))
    written.append(os.path.join(out, "serving", "models.config"))
  if "tflite" in _FORMATS.value:
    representative = None
    if "int8" in _QUANT.value:
      cache = {}

      def representative(task):
        if task not in cache:
          dataset = models.tasks[task].spec.dataset
          if dataset.source == "none":
            raise DeployError(
                f"int8 needs representative data for task {task!r}, but its patch file records "
                f"no dataset (written by an older k4p1). Use --quantization=float32,dynamic, or "
                f"retrain/re-save the patch.")
          data = load_task_data(dataset, models.tasks[task].input_spec, spec.data.data_dir,
                                spec.data.download)
          cache[task] = [b.numpy() for b in data.representative_batches(_REPR.value)]
        return cache[task]

    for q in _QUANT.value:
      groups = ([("all_tasks", tasks)] if len(tasks) > 1 else []) + [(t, [t]) for t in tasks]
      for file_name, group in groups:
        data = tflite.tflite_model(models, group, q, representative)
        path = os.path.join(out, "tflite", f"{file_name}.{q}.tflite")
        atomic_write_bytes(path, data)
        written.append(f"{path} ({len(data):,} bytes)")
  if "folded" in _FORMATS.value:
    for t in tasks:
      path = os.path.join(out, "folded", f"{t}.keras")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = os.path.join(os.path.dirname(path), f".tmp-{t}.keras")
      fold.fold_task(models, t).save(tmp)
      os.replace(tmp, path)
      written.append(path)
  print("\n".join(["Wrote:"] + [f"  {w}" for w in written]), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
