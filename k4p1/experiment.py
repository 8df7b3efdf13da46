"""The composition root: config -> checked spec -> trainer -> patch files, report, export.

`resolve(config)` validates the config's structure (k4p1.config) and then looks up every name
it uses in its registry (backbone, data sources, patch kinds and their options, strategy,
optimizer), so that a typo fails with a "did you mean" before anything is built, read or
written. `run(config, workdir, mode)` is what train.py calls:

  train   train every phase not yet finished (resuming from the last checkpoint), evaluate,
          write metrics.json and patch files, print the table, export a SavedModel.
  eval    restore the last checkpoint and evaluate every task.
  params  print the parameter report (no data, no training).
  export  restore the last checkpoint and export the SavedModel.

Workdir layout:
  config.json, metrics.json, params.json, checkpoints/, tensorboard/<task>/,
  patches/<task>.k4p1.npz, base.weights.h5 (when a task trained the base), shared_head.npz
  (when tasks share a classifier), saved_model/ (k4p1.outputs), and what the methods write
  (cascade.json with a cascade; swr_stage1/<task>/, SWR's stage-1 snapshot)

Example:
  spec = resolve(config)                 # ConfigError on any unknown name
  result = run(config, "/tmp/run")       # the metrics.json content
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from k4p1 import config as config_lib
from k4p1 import outputs, patches, plugins
from k4p1.errors import ConfigError
from k4p1.files import atomic_write_text
from k4p1.plugins import METHODS
from k4p1.backbones import BACKBONES
from k4p1.data import DATA_SOURCES
from k4p1.train.optimizers import OPTIMIZERS
from k4p1.train.strategies import STRATEGIES


def check_names(spec: config_lib.ExperimentSpec) -> config_lib.ExperimentSpec:
  """Looks up every registered name in `spec`; returns it with canonical patch specs.

  Raises:
    ConfigError: an unknown name (with the closest known one) or bad patch options.
  """
  BACKBONES.lookup(spec.backbone.name)
  STRATEGIES.lookup(spec.runtime.strategy)
  OPTIMIZERS.lookup(spec.optimizer.name)
  tasks = []
  for task in spec.tasks:
    DATA_SOURCES.lookup(task.dataset.source, f"tasks.{task.name}.dataset.source")
    tasks.append(dataclasses.replace(
        task, patch=patches.check(task.patch, f"tasks.{task.name}.patch")))
  compare = tuple((name, patches.check(p, f"report.compare.{name}"))
                  for name, p in spec.report.compare)
  return dataclasses.replace(spec, tasks=tuple(tasks),
                             report=dataclasses.replace(spec.report, compare=compare))


def resolve(config) -> config_lib.ExperimentSpec:
  """The checked, frozen spec of a ConfigDict (structure first, then every name; the user's
  plug-ins, `plugins`, are imported first)."""
  spec = config_lib.validate(config)
  plugins.load(",".join(spec.plugins))
  return check_names(spec)


MODES = ("train", "eval", "params", "export")


def _write_json(path: str, obj):
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def run(config, workdir: str, mode: str = "train") -> dict:
  """Runs `mode` (see module docstring) and returns what it wrote to its JSON file."""
  from k4p1.analysis import report as report_lib
  from k4p1.train.trainer import Trainer
  if mode not in MODES:
    raise ConfigError(f"Unknown mode {mode!r}. Modes: {', '.join(MODES)}")
  if mode == "params":
    if config.backbone.name != "keras_file" and config.backbone.weights != "none":
      config = config.copy_and_resolve_references()
      with config.unlocked():
        config.backbone.weights = "none"  # counts depend on the architecture only
  started = time.time()
  spec = resolve(config)
  # Everything that can fail on bad input (config, weights, data) happens before the workdir
  # is created, so a failed start leaves nothing behind.
  trainer = Trainer(spec, workdir, with_data=mode in ("train", "eval"))
  models = trainer.models
  if mode in ("eval", "export"):
    trainer.restore(require=True)
  restored = trainer.restore() if mode == "train" else False  # init_from may not fit
  os.makedirs(workdir, exist_ok=True)
  _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
  if mode == "params":
    rows = report_lib.parameter_report(models, outputs.patch_sizes(models))
    print(report_lib.format_parameter_report(rows, trainer.backbone.model.name), flush=True)
    for name in models.tasks:
      for method in METHODS.values():
        text = method.describe_task(models, name) if method.describe_task else ""
        if text:
          print("\n" + text, flush=True)
    for method in METHODS.values():
      text = method.describe_run(spec, models) if method.describe_run else ""
      if text:
        print("\n" + text, flush=True)
    result = {"tasks": rows}
    if spec.report.compare:
      named = report_lib.compare_totals(spec, models)
      print(f"\nParameters in all, {len(models.tasks)} tasks ({', '.join(models.tasks)}):\n"
            + report_lib.format_totals(named), flush=True)
      result["totals"] = {name: dict(t, patch=p) for name, p, t in named}
    _write_json(os.path.join(workdir, "params.json"), result if spec.report.compare else rows)
    return result
  if mode == "export":
    path = outputs.export(spec, models, workdir)
    print(f"Exported {path}: signatures {', '.join(outputs.signature_names(spec))}", flush=True)
    return {"saved_model": path}

  train_stats = {}
  if mode == "train":
    if restored and all(trainer.phase_done(p) for p in trainer.phases):
      print(f"{workdir} is already trained ({len(trainer.phases)} phases complete): evaluating "
            f"every task again and rewriting metrics, patch files"
            f"{' and the SavedModel' if spec.export.enabled else ''}. To train from scratch, "
            f"use a new --workdir.", flush=True)
    for task in spec.tasks:
      train_stats[task.name] = trainer.train_task(task.name)
  if mode == "train" and trainer.is_chief:
    sizes = outputs.save_patches(models, workdir)
    outputs.save_base(spec, models, workdir)
  else:  # eval: the patch files on disk are already these bytes
    sizes = outputs.patch_sizes(models)
  rows = report_lib.parameter_report(models, sizes)
  for row in rows:
    row.update(trainer.evaluate(row["task"]))
    row.update(train_stats.get(row["task"], {}))
    row["steps_done"] = trainer.phase_steps(row["task"])
    for method in METHODS.values():  # what each method records of the task (TAPS's gates)
      summary = method.summary(models, row["task"]) if method.summary else None
      if summary:
        row[method.name] = summary
  result = {"mode": mode, "backbone": trainer.backbone.model.name, "tasks": rows}
  print(report_lib.format_results_table(rows), flush=True)
  for row in rows:
    for method in METHODS.values():
      if method.name in row and method.format_summary is not None:
        print("\n" + method.format_summary(models, row["task"], row[method.name]), flush=True)
  for method in METHODS.values():
    if method.after_training is not None:
      result.update(method.after_training(spec, trainer, workdir))
  if trainer.is_chief:
    if mode == "train" and spec.export.enabled:
      result["saved_model"] = outputs.export(spec, models, workdir)
      print(f"Exported {result['saved_model']}: signatures "
            f"{', '.join(outputs.signature_names(spec))}", flush=True)
    result["wall_seconds"] = round(time.time() - started, 2)
    _write_json(os.path.join(workdir, "metrics.json"), result)
  return result
