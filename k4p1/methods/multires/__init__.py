"""Multi-resolution: one network at several resolutions (tasks with their own `input_size`
sharing the base and, with `last_layer(shared=true)`, one classifier), and model cascades.

  cascade.py    Streeter's greedy cascade on precomputed predictions (NumPy)
  run.py        after training: the cascade over `cascade.tasks`, cascade.json, its report
  signature.py  the `cascade` serving signature (per-example early exit in the graph)

The resolutions train as any tasks do (jointly with `multitask.tasks`: configs/multires.py);
this method adds what comes after: the cascade, its file and its signature.
"""

import os

from k4p1.methods.multires import signature  # noqa: F401  (registers the `cascade` signature)
from k4p1.methods.multires.run import CASCADE_FILE, build_cascade, cascade_stages, format_cascade
from k4p1.plugins import METHODS, Method


def _after_training(spec, trainer, workdir: str) -> dict:
  if not spec.cascade.tasks or not trainer.is_chief:
    return {}
  from k4p1.files import atomic_write_text
  import json
  result = build_cascade(spec, trainer)
  atomic_write_text(os.path.join(workdir, CASCADE_FILE), json.dumps(result, indent=2) + "\n")
  print("\n" + format_cascade(result), flush=True)
  return {"cascade": result}


def _signatures(spec, workdir: str) -> dict:
  """The cascade of WORKDIR/cascade.json, when the run has one."""
  if not spec.cascade.tasks:
    return {}
  return {"cascade": cascade_stages(os.path.join(workdir, CASCADE_FILE))}


def _signature_names(spec) -> list:
  return ["cascade (" + ", ".join(spec.cascade.tasks) + ")"] if spec.cascade.tasks else []


def _read_signature_file(kind: str, path: str):
  return cascade_stages(path) if kind == "cascade" else None


METHODS.register("multires", Method(
    name="multires",
    description="one network at several resolutions; a model cascade over them (cheapest "
                "first, per-example early exit) and its serving signature",
    after_training=_after_training, signatures=_signatures, signature_names=_signature_names,
    read_signature_file=_read_signature_file))

__all__ = ["CASCADE_FILE", "build_cascade", "cascade_stages", "format_cascade"]
