"""What SWR chose: the layers a task reparametrized, their cost, the policy over target costs.

Example:
  print(format_swr_layers(models, "kws"))     # before training: each layer's cost weight
  summary = swr_summary(models, "kws")        # after: selected layers, achieved ratio, sweep
  print(format_swr(summary, "kws"))
"""

from __future__ import annotations

import numpy as np

from k4p1.methods.swr.kind import (base_size, decisions, layer_weights, options_of,
                                   swr_layers, task_layers)


def swr_summary(models, task: str, grid=None) -> dict | None:
  """What SWR chose for task `task`: per unit its name, size and gate; the added parameters
  and their ratio to the base; and the policy's binarized choice over a grid of target costs
  (Figure 2: achieved ratio against c, selected layers per c). None without an swr patch."""
  layers = swr_layers(task_layers(models, task))
  if not layers or "policy" not in models.tasks[task].auxiliary:
    return None
  options = options_of(models, task)
  names, sizes, gates = [], [], []
  for layer in layers:
    for unit, size, on in zip(layer.units, layer.unit_sizes, layer.active_units):
      names.append(f"{layer.base_name}/{unit}" if unit else layer.base_name)
      sizes.append(size)
      gates.append(bool(on))
  base = base_size(models)
  sizes_np = np.array(sizes, np.float64)
  grid = [round(float(c), 4) for c in (np.linspace(0.0, 1.0, 21) if grid is None else grid)]
  sweep = []
  for c in grid:
    chosen = decisions(models, task, c)
    sweep.append({"c": c, "selected": [int(i) for i in np.flatnonzero(chosen)],
                  "added_parameters": int(sizes_np[chosen].sum()),
                  "ratio": float(sizes_np[chosen].sum() / base),
                  "layer_fraction": float(chosen.mean())})
  added = int(sizes_np[np.array(gates, bool)].sum())
  return {"c": options.c, "layers": names, "sizes": sizes, "selected": gates,
          "selected_layers": int(sum(gates)), "added_parameters": added,
          "possible_parameters": int(sizes_np.sum()), "base_parameters": base,
          "ratio": added / base, "sweep": sweep}


def format_swr(summary: dict, task: str) -> str:
  """SWR's choice in words, and the achieved ratio over target costs."""
  lines = [f"Task {task}: SWR at c={summary['c']:g} reparametrized "
           f"{summary['selected_layers']} of {len(summary['layers'])} layers, adding "
           f"{summary['added_parameters']:,} parameters ({summary['ratio']:.3f} of the base's "
           f"{summary['base_parameters']:,} learned weights)",
           "  target c  -> achieved ratio  layers"]
  for row in summary["sweep"][::2]:
    lines.append(f"  {row['c']:8.2f}  -> {row['ratio']:14.3f}  {len(row['selected']):>6}")
  return "\n".join(lines)


def format_swr_layers(models, task: str) -> str:
  """The layers SWR can reparametrize in task `task`, with the parameters each adds and its
  weight w_l in the cost loss (`params`: n_l / sum n; `uniform`: 1 / L). '' without swr."""
  layers = swr_layers(task_layers(models, task))
  if not layers:
    return ""
  names, types, sizes = [], [], []
  for layer in layers:
    for unit, size in zip(layer.units, layer.unit_sizes):
      names.append(f"{layer.base_name}/{unit}" if unit else layer.base_name)
      types.append(type(layer.layer).__name__ + (f".{unit}" if unit else ""))
      sizes.append(size)
  by_params = layer_weights(models, task, "params")
  uniform = layer_weights(models, task, "uniform")
  base = base_size(models)
  width = max(len(n) for n in names)
  tw = max(len(t) for t in types) + 2
  head = sum(int(np.prod(v.shape)) for v in models.tasks[task].head.weights)
  lines = [f"Task {task}: the base has {base:,} learned weights ({base + head:,} with this "
           f"task's {models.tasks[task].num_classes}-way classifier, as the KWS papers count "
           f"their models); SWR can reparametrize {len(names)} of its layers, which all "
           f"together would add {sum(sizes):,} parameters ({sum(sizes) / base:.3f} of the "
           f"base). The cost loss weighs each layer by w_l:",
           f"  {'#':>3}  {'layer':<{width}}  {'type':<{tw}}{'params':>9}  {'w_l (params)':>12}"
           f"  {'w_l (uniform)':>13}"]
  for i, (n, t, size, w, u) in enumerate(zip(names, types, sizes, by_params, uniform)):
    lines.append(f"  {i:>3}  {n:<{width}}  {t:<{tw}}{size:>9,}  {w:>12.5f}  {u:>13.5f}")
  return "\n".join(lines)


__all__ = ["swr_summary", "format_swr", "format_swr_layers"]
