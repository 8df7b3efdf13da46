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
  (when tasks share a classifier), cascade.json (with a cascade), saved_model/,
  swr_stage1/<task>/ (SWR: stage 1's end state, for train.init_from at another target cost)

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
from k4p1 import patches
from k4p1.errors import ConfigError
from k4p1.files import atomic_write_text
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
  """The checked, frozen spec of a ConfigDict (structure first, then every name)."""
  return check_names(config_lib.validate(config))


MODES = ("train", "eval", "params", "export")


def _write_json(path: str, obj):
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def patch_sizes(models) -> dict:
  """Bytes each task's patch file has (computed in memory, nothing written)."""
  from k4p1 import export as export_lib
  return {n: len(export_lib.patch_bytes(models, n)) for n in models.tasks}


def save_patches(models, workdir: str) -> dict:
  """Writes patches/<task>.k4p1.npz for every task; returns their sizes."""
  from k4p1 import export as export_lib
  return {name: export_lib.save_patch(models, name, os.path.join(workdir, "patches",
                                                                 f"{name}.k4p1.npz"))
          for name in models.tasks}


def save_base(spec, models, workdir: str):
  """Writes base.weights.h5 when a task (or joint training) trained the shared base (deploy.py
  rebuilds from it)."""
  if not any(t.patch.train_base for t in spec.tasks) and not spec.multitask.tasks:
    return None
  path = os.path.join(workdir, "base.weights.h5")
  tmp = os.path.join(workdir, ".tmp-base.weights.h5")
  models.base.save_weights(tmp)
  os.replace(tmp, path)
  if models.shared_head is not None:  # stored once, like the base (patch files hold the rest)
    from k4p1.export import patch_files
    patch_files.save_shared_head(models, os.path.join(workdir, patch_files.SHARED_HEAD_FILE))
  return path


CASCADE_FILE = "cascade.json"
CANDIDATE_TOLERANCES = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.05)


def build_cascade(spec, trainer) -> dict:
  """Streeter's greedy cascade over `spec.cascade.tasks` (k4p1.analysis.cascade).

  Built on the `validation` share of the eval split, measured on the rest; costs are each
  task model's multiply-adds at its resolution. Also builds the candidate cascades of
  CANDIDATE_TOLERANCES (the accuracy-vs-cost curve). Returns what cascade.json holds.
  """
  import numpy as np
  from k4p1.analysis import cascade as cascade_lib
  from k4p1.analysis.cost import multiply_adds
  c = spec.cascade
  models = trainer.models
  outputs, labels = {}, None
  for t in c.tasks:
    outputs[t], y = trainer.predict(t)
    if labels is not None and not np.array_equal(labels, y):
      raise ValueError(f"Cascade task {t} sees other eval labels than {c.tasks[0]}: a cascade "
                       f"needs its models evaluated on the same examples.")
    labels = y
  costs = {t: multiply_adds(models.tasks[t].model, models.tasks[t].input_spec.shape)["total"]
           for t in c.tasks}
  val, test = cascade_lib.stratified_split(labels, c.validation)
  split = {"validation": ({t: p[val] for t, p in outputs.items()}, labels[val]),
           "test": ({t: p[test] for t, p in outputs.items()}, labels[test])}

  def measured(cascade):
    return {name: cascade_lib.evaluate(cascade, p, y, costs) for name, (p, y) in split.items()}

  built = {tolerance: cascade_lib.greedy_cascade(*split["validation"], costs, tolerance,
                                                 thresholds=c.thresholds)
           for tolerance in sorted(set(CANDIDATE_TOLERANCES) | {c.tolerance})}
  chosen = built[c.tolerance]
  candidates = [{"tolerance": t, **k.to_json(), **measured(k)} for t, k in built.items()]
  singles = {name: cascade_lib.single_model_results(p, y, costs)
             for name, (p, y) in split.items()}
  best = min(c.tasks, key=lambda t: (-singles["validation"][t]["accuracy"], costs[t]))
  return {"format": "k4p1-cascade-v1", **chosen.to_json(),
          "input_sizes": {t: models.tasks[t].input_spec.size for t in c.tasks},
          "tolerance": c.tolerance, "reference": best, "multiply_adds": costs,
          "split": {"validation_examples": int(val.size), "test_examples": int(test.size),
                    "validation_share": c.validation},
          "cascade": measured(chosen), "single_models": singles, "candidates": candidates}


def format_cascade(result: dict) -> str:
  """The cascade against its most accurate model (the paper's appendix C comparison)."""
  ref = result["reference"]
  stages = " -> ".join(f"{s['model']}@{s['threshold']:.3f}" for s in result["stages"])
  lines = [f"Cascade (Streeter's greedy, tolerance {100 * result['tolerance']:.2f} points, built "
           f"on {result['split']['validation_examples']} validation examples): {stages}"]
  header = f"  {'':<26}{'accuracy':>10}{'multiply-adds':>16}{'cost':>9}"
  for name in ("validation", "test"):
    single = result["single_models"][name][ref]
    cascade = result["cascade"][name]
    lines += [f"  {name} ({cascade['examples']} examples)", header,
              f"  {'most accurate: ' + ref:<26}{100 * single['accuracy']:>9.2f}%"
              f"{single['mean_cost'] / 1e6:>15.1f}M{'1.000':>9}",
              f"  {'cascade':<26}{100 * cascade['accuracy']:>9.2f}%"
              f"{cascade['mean_cost'] / 1e6:>15.1f}M"
              f"{cascade['mean_cost'] / single['mean_cost']:>9.3f}",
              "  exits per stage: " + ", ".join(f"{100 * e:.1f}%" for e in cascade["exits"])]
  return "\n".join(lines)


def cascade_stages(path: str) -> list:
  """The stages of a cascade.json ([] when there is none)."""
  from k4p1.analysis.cascade import Cascade
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(Cascade.from_json(json.load(f)).stages)


def export(spec, models, workdir: str) -> str:
  """The multi-task SavedModel of `spec.export` under workdir/saved_model (with the `cascade`
  signature when workdir/cascade.json exists)."""
  from k4p1 import export as export_lib
  path = os.path.join(workdir, "saved_model")
  stages = cascade_stages(os.path.join(workdir, CASCADE_FILE)) if spec.cascade.tasks else []
  export_lib.export_saved_model(models, list(spec.export.tasks), path,
                                kinds={"mixed": list(spec.export.mixed_tasks),
                                       "cascade": stages})
  return path


def run(config, workdir: str, mode: str = "train") -> dict:
  """Runs `mode` (see module docstring) and returns what it wrote to its JSON file."""
  from k4p1.analysis import report as report_lib
  from k4p1.analysis import taps as taps_lib
  from k4p1.analysis import swr as swr_lib
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
    rows = report_lib.parameter_report(models, patch_sizes(models))
    print(report_lib.format_parameter_report(rows, trainer.backbone.model.name), flush=True)
    for name in models.tasks:
      for text in (taps_lib.format_taps_layers(models, name, trained=False),
                   swr_lib.format_swr_layers(models, name)):
        if text:
          print("\n" + text, flush=True)
    if spec.multitask.tasks:
      learnable = sum(int(v.shape.num_elements()) for v in models.shared_learnable_variables())
      print(f"\nTrained jointly ({spec.multitask.step} steps): {', '.join(spec.multitask.tasks)}; "
            f"the shared weights' {learnable:,} learnable parameters learn from all of them, each "
            f"task's own parameters only from its loss.", flush=True)
    result = {"tasks": rows}
    if spec.report.compare:
      named = compare_totals(spec, models)
      print(f"\nParameters in all, {len(models.tasks)} tasks ({', '.join(models.tasks)}):\n"
            + report_lib.format_totals(named), flush=True)
      result["totals"] = {name: dict(t, patch=p) for name, p, t in named}
    _write_json(os.path.join(workdir, "params.json"), result if spec.report.compare else rows)
    return result
  if mode == "export":
    path = export(spec, models, workdir)
    print(f"Exported {path}: signatures {', '.join(signature_names(spec))}", flush=True)
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
    sizes = save_patches(models, workdir)
    save_base(spec, models, workdir)
  else:  # eval: the patch files on disk are already these bytes
    sizes = patch_sizes(models)
  rows = report_lib.parameter_report(models, sizes)
  for row in rows:
    row.update(trainer.evaluate(row["task"]))
    row.update(train_stats.get(row["task"], {}))
    row["steps_done"] = trainer.phase_steps(row["task"])
    summary = taps_lib.taps_summary(models, row["task"])
    if summary:
      row["taps"] = summary
    summary = swr_lib.swr_summary(models, row["task"])
    if summary:
      row["swr"] = summary
  result = {"mode": mode, "backbone": trainer.backbone.model.name, "tasks": rows}
  print(report_lib.format_results_table(rows), flush=True)
  for row in rows:
    if "taps" in row:
      print("\n" + taps_lib.format_taps_layers(models, row["task"]), flush=True)
    if "swr" in row:
      print("\n" + swr_lib.format_swr(row["swr"], row["task"]), flush=True)
  if spec.cascade.tasks and trainer.is_chief:
    result["cascade"] = build_cascade(spec, trainer)
    _write_json(os.path.join(workdir, CASCADE_FILE), result["cascade"])
    print("\n" + format_cascade(result["cascade"]), flush=True)
  if trainer.is_chief:
    if mode == "train" and spec.export.enabled:
      result["saved_model"] = export(spec, models, workdir)
      print(f"Exported {result['saved_model']}: signatures "
            f"{', '.join(signature_names(spec))}", flush=True)
    result["wall_seconds"] = round(time.time() - started, 2)
    _write_json(os.path.join(workdir, "metrics.json"), result)
  return result


def compare_totals(spec, models) -> list[tuple[str, str, dict]]:
  """[(regime, patch label, report totals)]: this run's tasks as configured ('this run'), then
  with every task's patch replaced by each of `report.compare`'s (built, not trained)."""
  from k4p1.analysis import report as report_lib
  from k4p1.backbones import build_backbone, for_sizes
  from k4p1.model import TaskModels
  first = models.tasks[next(iter(models.tasks))].spec.patch
  named = [("this run", patches.label(first), report_lib.totals(models))]
  for name, patch in spec.report.compare:
    other = TaskModels(for_sizes(build_backbone(spec.backbone),
                                 [t.input_size for t in spec.tasks]))
    for i, task in enumerate(spec.tasks):
      other.add(dataclasses.replace(task, patch=patch), models.tasks[task.name].num_classes,
                seed=spec.train.seed + i)
    named.append((name, patches.label(patch), report_lib.totals(other)))
  return named


def signature_names(spec) -> list[str]:
  """The SavedModel's signatures, as `export` writes them (for messages)."""
  tasks = list(spec.export.tasks)
  return [f"serving_default (= {tasks[0]})"] + tasks + \
      (["mixed (" + ", ".join(spec.export.mixed_tasks) + ")"] if spec.export.mixed_tasks else []) + \
      (["cascade (" + ", ".join(spec.cascade.tasks) + ")"] if spec.cascade.tasks else [])
