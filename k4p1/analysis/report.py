"""Parameter accounting per task: what it learns, what it owns, what it shares.

Example:
  rows = parameter_report(models)      # after models.add(...) for each task
  print(format_parameter_report(rows))
"""

from __future__ import annotations

import math

import numpy as np

from k4p1 import patches
from k4p1.model import TaskModels


def _count(variables) -> int:
  return int(sum(math.prod(v.shape) for v in variables))


def task_parameters(models: TaskModels, name: str) -> dict:
  """Counts for one task; reads no trainable flag and changes no model state.

  Returns a dict with:
    components: {kind: {"learned": n, "fixed": n}} for the task's own variables, as each patch
      layer declares them ("fixed": statistics, or a classifier left at its random init);
      "gated_off": n counts variables trained but not kept (TAPS deltas of inactive layers).
    trainable: every parameter trained with this task (shared ones too if train_base).
    task_specific: parameters only this task keeps (learned + fixed).
    shared: parameters of the shared base.
    share_of_base: task_specific / shared.
  """
  task = models.tasks[name]
  kinds = models.variable_kinds(name)
  omitted = {id(v) for v in models.omitted_variables(name)}
  components = {}
  for v in models.task_variables(name):
    kind, learned = kinds[id(v)]
    entry = components.setdefault(kind, {"learned": 0, "fixed": 0})
    if id(v) in omitted:  # e.g. the delta of a layer TAPS gated off: trained, not kept
      entry["gated_off"] = entry.get("gated_off", 0) + int(np.prod(v.shape))
      continue
    entry["learned" if learned else "fixed"] += int(np.prod(v.shape))
  shared = _count(models.shared_variables())
  specific = sum(c["learned"] + c["fixed"] for c in components.values())  # not gated_off
  order = {k.name: k.order for k in patches.kinds_of(task.spec.patch)}
  order["last_layer"] = 1000
  return {
      "task": name,
      "patch": patches.label(task.spec.patch),
      "num_classes": task.num_classes,
      "components": dict(sorted(components.items(), key=lambda kv: order.get(kv[0], 999))),
      "trainable": _count(models.trainable_variables(name)),
      "task_specific": specific,
      "shared": shared,
      "share_of_base": specific / shared if shared else float("nan"),
  }


def parameter_report(models: TaskModels, patch_file_bytes: dict | None = None) -> list[dict]:
  rows = []
  for name in models.tasks:
    row = task_parameters(models, name)
    if patch_file_bytes and name in patch_file_bytes:
      row["patch_file_bytes"] = patch_file_bytes[name]
    rows.append(row)
  return rows


def totals(models: TaskModels) -> dict:
  """What storing every task of `models` costs: the shared weights once plus each task's own.

  Returns {"shared", "task_learned", "task_fixed", "total", "tasks"}: shared counts the shared
  weights some task computes with (not a base layer every task patches over); task_* are
  summed over tasks ("fixed": e.g. each task's own BN statistics); total is their sum.
  """
  rows = [task_parameters(models, n) for n in models.tasks]
  learned = sum(c["learned"] for r in rows for c in r["components"].values())
  fixed = sum(c["fixed"] for r in rows for c in r["components"].values())
  shared = _count(models.used_shared_variables())
  return {"shared": shared, "task_learned": learned, "task_fixed": fixed,
          "total": shared + learned + fixed, "tasks": len(rows)}


def format_totals(named: list[tuple[str, str, dict]]) -> str:
  """A table of `totals` for several ways of patching the same tasks: [(name, patch, totals)]."""
  nw = max([8] + [len(n) + 2 for n, _, _ in named])
  pw = max([8] + [len(p) + 2 for _, p, _ in named])
  header = (f"{'regime':<{nw}}{'patch':<{pw}}{'shared, used':>14}{'per-task learned':>18}"
            f"{'per-task fixed':>16}{'in all':>14}")
  lines = [header, "-" * len(header)]
  for name, patch, t in named:
    lines.append(f"{name:<{nw}}{patch:<{pw}}{t['shared']:>14,}{t['task_learned']:>18,}"
                 f"{t['task_fixed']:>16,}{t['total']:>14,}")
  return "\n".join(lines)


def format_parameter_report(rows: list[dict], base_name: str = "") -> str:
  lines = []
  if rows:
    lines.append(f"Shared base{(' ' + base_name) if base_name else ''}: {rows[0]['shared']:,} parameters")
  for r in rows:
    lines.append(f"\nTask {r['task']} ({r['num_classes']} classes), patch: {r['patch']}")
    lines.append(f"  {'component':<20}{'learned':>12}{'fixed':>12}")
    for kind, c in r["components"].items():
      if kind == "last_layer":  # the head option, not a patch kind
        note = "random, not trained" if c["fixed"] else ""
      else:
        note = patches.kind(kind).fixed_note if c["fixed"] else ""
      fixed_note = f" ({note})" if note else ""
      if c.get("gated_off"):
        fixed_note += f" (+{c['gated_off']:,} in gated-off layers, not kept)"
      lines.append(f"  {kind:<20}{c['learned']:>12,}{c['fixed']:>12,}{fixed_note}")
    lines.append(f"  trainable: {r['trainable']:,}   task-specific: {r['task_specific']:,} "
                 f"({100 * r['share_of_base']:.2f}% of the base)"
                 + (f"   patch file: {r['patch_file_bytes']:,} bytes"
                    if "patch_file_bytes" in r else ""))
  return "\n".join(lines)


def format_results_table(rows: list[dict]) -> str:
  """One line per task: accuracy and parameter costs (the main job's comparison table)."""
  tw = max([24] + [len(r["task"]) + 2 for r in rows])
  pw = max([26] + [len(r["patch"]) + 2 for r in rows])
  header = (f"{'task':<{tw}}{'patch':<{pw}}{'accuracy':>9}{'balanced':>9}{'classes':>8}"
            f"{'trainable':>12}{'task-spec.':>12}{'% base':>8}{'patch file':>12}")
  lines = [header, "-" * len(header)]

  def percent(value):
    return f"{100 * value:.2f}%" if value is not None else "-"

  for r in rows:
    size = f"{r['patch_file_bytes']:,}" if r.get("patch_file_bytes") else "-"
    lines.append(f"{r['task']:<{tw}}{r['patch']:<{pw}}{percent(r.get('accuracy')):>9}"
                 f"{percent(r.get('balanced_accuracy')):>9}{r.get('num_classes', '-'):>8}"
                 f"{r['trainable']:>12,}{r['task_specific']:>12,}"
                 f"{100 * r['share_of_base']:>7.2f}%{size:>12}")
  return "\n".join(lines)


def compare_totals(spec, models) -> list[tuple[str, str, dict]]:
  """[(regime, patch label, report totals)]: this run's tasks as configured ('this run'), then
  with every task's patch replaced by each of `report.compare`'s (built, not trained)."""
  from k4p1.assembly import assemble
  first = models.tasks[next(iter(models.tasks))].spec.patch
  named = [("this run", patches.label(first), totals(models))]
  classes = {name: t.num_classes for name, t in models.tasks.items()}
  for name, patch in spec.report.compare:
    other = assemble(spec, with_data=False, num_classes=classes,
                     patch_of=lambda task, patch=patch: patch).models
    named.append((name, patches.label(patch), totals(other)))
  return named
