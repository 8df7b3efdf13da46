"""What TAPS chose: which layers became task-specific, what they cost, and a layer map.

Example:
  summary = taps_summary(models, "cifar10")   # None when the task has no taps patch
  print(format_taps_layers(models, "cifar10"))
  plot_layer_map({"cifar10": summary["active"]}, summary["layers"], "/tmp/map.png")
"""

from __future__ import annotations

import io
from typing import Optional

from k4p1.files import atomic_write_bytes
from k4p1.model import TaskModels
from k4p1.methods.taps.kind import TapsPatch


def gated_layers(models: TaskModels, name: str) -> list[TapsPatch]:
  """Task `name`'s TAPS layers in graph order ([] without a taps patch)."""
  return [layer for layer, _, kind in models.tasks[name].patched.patch_layers
          if kind == "taps" and isinstance(layer, TapsPatch)]


def taps_summary(models: TaskModels, name: str) -> Optional[dict]:
  """Per task: gated layers, which are active, and the parameters they add.

  Returns None when the task has no taps patch, else a dict with, per gated unit (a layer, or
  `<layer>/query` etc. for an attention layer's projections): layers (names), types, sizes
  (parameters each adds while active), scores, active (bools); and active_layers,
  active_fraction, added_parameters (active deltas), possible_parameters (every delta).
  """
  gated = gated_layers(models, name)
  if not gated:
    return None
  names, types, sizes, scores, active = [], [], [], [], []
  for layer in gated:  # one entry per gated unit: a layer, or one projection of an attention
    for unit, size, score, on in zip(layer.units, layer.unit_sizes, layer.scores,
                                     layer.active_units):
      names.append(f"{layer.base_name}/{unit}" if unit else layer.base_name)
      types.append(type(layer.layer).__name__ + (f".{unit}" if unit else ""))
      sizes.append(size)
      scores.append(round(float(score.numpy()), 6))
      active.append(on)
  return {
      "layers": names,
      "types": types,
      "sizes": sizes,
      "scores": scores,
      "active": active,
      "active_layers": sum(active),
      "active_fraction": sum(active) / len(active),
      "added_parameters": sum(s for s, a in zip(sizes, active) if a),
      "possible_parameters": sum(sizes),
  }


def format_taps_layers(models: TaskModels, name: str, trained: bool = True) -> str:
  """A table of task `name`'s gated layers: type, parameters if active, and (trained) score
  and state. '' without a taps patch."""
  s = taps_summary(models, name)
  if s is None:
    return ""
  shared = sum(int(v.shape.num_elements()) for v in models.shared_variables())
  if trained:
    head = (f"Task {name}: TAPS made {s['active_layers']} of {len(s['layers'])} layers "
            f"task-specific ({100 * s['active_fraction']:.1f}%), adding "
            f"{s['added_parameters']:,} parameters ({100 * s['added_parameters'] / shared:.2f}% "
            f"of the shared base)")
  else:
    head = (f"Task {name}: TAPS can gate {len(s['layers'])} layers; all active they would add "
            f"{s['possible_parameters']:,} parameters ({100 * s['possible_parameters'] / shared:.1f}% "
            f"of the shared base)")
  width = max(len(n) for n in s["layers"])
  tw = max(16, max(len(t) for t in s["types"]) + 2)
  lines = [head, f"  {'#':>3}  {'layer':<{width}}  {'type':<{tw}}{'params if active':>17}" +
           ("     score  state" if trained else "")]
  for i, (layer, kind, size, score, on) in enumerate(zip(
      s["layers"], s["types"], s["sizes"], s["scores"], s["active"])):
    line = f"  {i:>3}  {layer:<{width}}  {kind:<{tw}}{size:>17,}"
    if trained:
      line += f"  {score:>8.4f}  {'task-specific' if on else 'shared'}"
    lines.append(line)
  return "\n".join(lines)


def plot_layer_map(rows: dict, layers: list, path: str, title: str = ""):
  """The paper's Figures 3 and 5-6: one row per task (or lambda), one column per gated layer,
  filled where the layer is task-specific. `rows`: {label: [bool per layer]}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  labels = list(rows)
  grid = np.array([[1.0 if on else 0.0 for on in rows[k]] for k in labels])
  fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(layers) + 2), 0.45 * len(labels) + 1.6))
  ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.25, interpolation="nearest")
  ax.set_yticks(range(len(labels)), labels)
  step = max(1, len(layers) // 26)
  ax.set_xticks(range(0, len(layers), step), [str(i) for i in range(0, len(layers), step)])
  ax.set_xlabel("gated layer (graph order; blue = task-specific)")
  ax.set_xticks(np.arange(-0.5, len(layers), 1), minor=True)
  ax.set_yticks(np.arange(-0.5, len(labels), 1), minor=True)
  ax.grid(which="minor", color="white", linewidth=0.6)
  ax.tick_params(which="minor", length=0)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format=path.rsplit(".", 1)[-1] if "." in path else "png", dpi=120)
  plt.close(fig)
  atomic_write_bytes(path, buf.getvalue())


__all__ = ["gated_layers", "taps_summary", "format_taps_layers", "plot_layer_map"]
