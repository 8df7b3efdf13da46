"""Export: what leaves training. Patch files, the multi-task SavedModel, TF Serving, TFLite,
folded models, the mixed-task signature and quantization-aware training.

  patch_files.py  one task's parameters; tasks assembled from patch files onto a base
  saved_model.py  a signature per task (+ the mixed one), ExportArchive
  mixed.py        the mixed-task signature: a task id per example, routed in the graph
  cascade.py      the cascade signature: resolutions cheapest first, per-example early exit
  fold.py         a task folded into a plain Keras model (no k4p1 layer)
  tflite.py       TFLite, float32 / dynamic / int8, a signature per task
  serving.py      the TF Serving layout and a local check of its contract
  qat.py          quantization-aware training in a tf_keras subprocess

The names of patch_files and saved_model are importable from here (`export.save_patch`);
submodules load on first use, so `python -m k4p1.export.qat` imports no Keras 3 module.

Example:
  from k4p1 import export
  export.save_patch(models, "flowers", "flowers.k4p1.npz")
  export.export_saved_model(models, ["flowers"], "/tmp/export")
"""

import importlib

_NAMES = {
    "patch_files": ("PATCH_FORMAT", "patch_names", "patch_bytes", "save_patch", "read_patch",
                    "patch_spec_of", "load_patch", "add_task_from_patch", "assemble"),
    "saved_model": ("serving_function", "MIXED_SIGNATURE", "TASK_INDEX", "task_index",
                    "export_saved_model"),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name):
  if name in _WHERE:
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
  if name in ("DeployError", "PatchFileError"):
    from k4p1 import errors
    return getattr(errors, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
