r"""TAPS against the patches and a manual "fine-tune the top" baseline (TAPS paper Fig. 2, Tab. 10).

For each dataset, on configs/transfer_table.py's scale (64x64, 1,000 training images, 2 epochs):
  1. every learning rate of --lrs trains last layer, scale-and-bias + last layer, full
     fine-tuning and TAPS at each --lams (one train.py run per rate, all regimes as tasks);
  2. the manual baseline: `top_from_<LAYER>`, fine-tuning every layer from LAYER on, with LAYER
     the latest one whose budget reaches what TAPS (the --match lam, at its best rate) added;
  3. SWR (the SWR paper's policy, two-stage) at each target cost of --swr_cs and at the cost
     TAPS reached (`swr_match`: SWR at matched cost), at every rate, if --swr_cs is given;
  4. writes every row (accuracy, task-specific parameters, TAPS's active layers) to --out, a
     markdown table (best rate per regime) to --table, accuracy against % added parameters
     (the paper's Figure 2) to --plot and the layer map (rows = dataset x lam) to --layer_map.

  K4P1_DATA_DIR=../shared/data python bench/taps_table.py --out=bench/results/taps_table.json \
      --table=docs/taps_table.md --plot=docs/taps_accuracy_vs_params.png \
      --layer_map=docs/taps_layer_map.png
SWR next to TAPS at matched cost (the SWR paper's image transfer):
  K4P1_DATA_DIR=../shared/data python bench/taps_table.py --datasets=cifar10 --swr_cs=10,30 \
      --swr_beta=10 --score_lr=0.05 ...
Smoke (2 steps per regime, one rate, one dataset):
  K4P1_DATA_DIR=../shared/data python bench/taps_table.py --smoke --out=/tmp/t.json --table= \
      --plot=/tmp/t.png --layer_map=/tmp/m.png
"""

import os
import tempfile

import common  # noqa: F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

import transfer_cells as cells  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/taps_table.json", "Result JSON (resumed).")
_TABLE = flags.DEFINE_string("table", "docs/taps_table.md", "Markdown table ('' = none).")
_PLOT = flags.DEFINE_string("plot", "docs/taps_accuracy_vs_params.png",
                            "Accuracy vs % added parameters ('' = none).")
_LAYER_MAP = flags.DEFINE_string("layer_map", "docs/taps_layer_map.png", "Layer map ('' = none).")
_BACKBONE = flags.DEFINE_enum("backbone", "dogs", ["dogs", "ssd"], "Backbone.")
_DATASETS = flags.DEFINE_list("datasets", ["cifar10", "fashion_mnist"], "Target datasets.")
_LRS = flags.DEFINE_list("lrs", ["0.0015", "0.0045", "0.015"], "Learning rates.")
_LAMS = flags.DEFINE_list("lams", ["25", "50", "100"], "TAPS lambdas, in hundredths.")
_MATCH = flags.DEFINE_string("match", "50", "The lambda (hundredths) whose budget `top` matches.")
_STATISTICS = flags.DEFINE_enum("statistics", "batch", ["batch", "frozen", "recompute"],
                                "Scale-and-bias statistics (TAPS's task-specific BN too). "
                                "TAPS needs batch: with frozen statistics the deltas move "
                                "activations the fixed statistics cannot follow, and training "
                                "collapsed to chance on the dogs backbone.")
_SCORE_LR = flags.DEFINE_float("score_lr", 0.0, "TAPS scores' own rate (0: the cell's). In "
                               "a 62-step cell the scores barely move at the cell's rate.")
_SWR_CS = flags.DEFINE_list("swr_cs", [], "SWR target costs in hundredths (e.g. 10,30); with "
                            "any, SWR also runs at TAPS's achieved cost (--match lam).")
_SWR_BETA = flags.DEFINE_float("swr_beta", 0.0, "SWR's cost-loss weight (0: SWR's default, 1).")
_SMOKE = flags.DEFINE_bool("smoke", False, "2 steps per regime, one rate, one dataset.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where cells train ('' = a temporary folder).")

BASE_REGIMES = ["last_layer", "scale_bias_last_layer", "full_fine_tuning"]


def top_start(budget: int, backbone: str) -> tuple[str, int]:
  """The latest base layer from which fine-tuning every layer costs at least `budget`
  parameters, and that cost."""
  import keras
  from k4p1.config import load
  from k4p1.experiment import resolve
  from k4p1.backbones import build_backbone
  spec = resolve(load(f"{cells.CONFIG}:{backbone},cifar10,0.1"))
  model = build_backbone(spec.backbone).model
  layers = [l for l in model.layers if not isinstance(l, keras.layers.InputLayer)]
  total = 0
  for layer in reversed(layers):
    total += sum(int(v.shape.num_elements()) for v in layer.weights)
    if total >= budget and layer.weights:
      return layer.name, total
  return layers[0].name, total


def shared_parameters() -> int:
  """Every weight of the shared base (the % column's denominator)."""
  from k4p1.config import load
  from k4p1.experiment import resolve
  from k4p1.backbones import build_backbone
  base = build_backbone(resolve(load(
      f"{cells.CONFIG}:{_BACKBONE.value},cifar10,0.1")).backbone).model
  return sum(int(v.shape.num_elements()) for v in base.weights)


def _best(rows, dataset, regime):
  found = [r for r in rows if r["dataset"] == dataset and r["regime"] == regime]
  return max(found, key=lambda r: r["accuracy"]) if found else None


def _added(r, shared):
  """Parameters the regime adds to the base (what the task keeps), as % of the base."""
  return 100.0 * r["task_specific"] / shared


def markdown(rows, shared, regimes):
  lines = ["| regime | dataset | accuracy | lr | task-specific layers | task-specific params "
           "(% of base) |", "|---|---|---:|---:|---:|---:|"]
  for d in sorted({r["dataset"] for r in rows}):
    for regime in regimes:
      r = _best(rows, d, regime)
      if r is None:
        continue
      taps, swr = r.get("taps"), r.get("swr")
      layers = (f"{taps['active_layers']}/{len(taps['layers'])}" if taps else
                f"{swr['selected_layers']}/{len(swr['layers'])}" if swr else "-")
      lines.append(f"| {regime} | {d} | {100 * r['accuracy']:.1f}% | {r['lr']:g} | {layers} | "
                   f"{r['task_specific']:,} ({_added(r, shared):.1f}%) |")
  return "\n".join(lines) + "\n"


def plot_accuracy(rows, shared, regimes, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  datasets = sorted({r["dataset"] for r in rows})
  fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.8), squeeze=False)
  for ax, d in zip(axes[0], datasets):
    taps, swr = [], []
    for regime in regimes:
      r = _best(rows, d, regime)
      if r is None:
        continue
      x, y = _added(r, shared), 100 * r["accuracy"]
      if regime.startswith("taps_lam"):
        taps.append((x, y, f"lam {int(regime[len('taps_lam'):]) / 100:g}"))
        continue
      if regime.startswith("swr_c"):
        swr.append((x, y, f"c {int(regime[len('swr_c'):]) / 100:g}"))
        continue
      ax.scatter([x], [y], marker="s", zorder=3)
      ax.annotate(regime.replace("_last_layer", "+LL").replace("top_from_", "top: "), (x, y),
                  fontsize=7, xytext=(4, -9), textcoords="offset points")
    taps.sort()
    ax.plot([p[0] for p in taps], [p[1] for p in taps], "o-", color="C3", label="TAPS")
    for x, y, text in taps:
      ax.annotate(text, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if swr:
      swr.sort()
      ax.plot([p[0] for p in swr], [p[1] for p in swr], "^-", color="C4", label="SWR")
      for x, y, text in swr:
        ax.annotate(text, (x, y), fontsize=7, xytext=(4, -9), textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("task-specific parameters (% of the shared base)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(d)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  common.save_figure(fig, path)


def main(argv):
  del argv
  from k4p1.methods.taps.report import plot_layer_map
  from k4p1.files import atomic_write_text
  datasets = _DATASETS.value[:1] if _SMOKE.value else _DATASETS.value
  lrs = _LRS.value[:1] if _SMOKE.value else _LRS.value
  taps_regimes = [f"taps_lam{lam}" for lam in _LAMS.value]
  options = f"statistics={_STATISTICS.value}" + (f",score_lr={_SCORE_LR.value:g}"
                                                 if _SCORE_LR.value else "")
  out = (None if _SMOKE.value else cells._load(_OUT.value)) or {
      "benchmark": "taps_table", "config": "configs/transfer_table.py", "smoke": _SMOKE.value,
      "backbone": _BACKBONE.value, "options": options, **common.machine(), "rows": [],
      "cell_seconds": {}}
  # A resumed file keeps its cells: refuse settings they were not measured with.
  checks = [("options (--statistics, --score_lr)", out.get("options"), options)]
  if _SWR_CS.value and any(r["regime"].startswith("swr_c") for r in out["rows"]):
    checks.append(("--swr_beta", out.get("swr_beta", 0.0), _SWR_BETA.value))
  for what, stored, given in checks:
    if out["rows"] and stored != given:
      raise app.UsageError(f"{_OUT.value} holds cells measured with {what} {stored!r}, not "
                           f"{given!r}: give those to resume it, or another --out.")
  out["swr_beta"] = _SWR_BETA.value if _SWR_CS.value else out.get("swr_beta", 0.0)
  options += f",swr_beta={_SWR_BETA.value:g}" if _SWR_BETA.value else ""
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="k4p1_taps_")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)

  def run(dataset, lr, regimes):
    done = {(r["dataset"], r["lr"], r["regime"]) for r in out["rows"]}
    todo = [g for g in regimes if (dataset, float(lr), g) not in done]
    if not todo:
      return
    rows, seconds = cells.run_cell(_BACKBONE.value, dataset, lr, _SMOKE.value, workdir,
                                   f"{options},regimes={'+'.join(todo)}")
    out["rows"].extend(rows)
    out["cell_seconds"][f"{dataset},{lr},{'+'.join(todo)}"] = round(seconds, 1)
    common.write_result(_OUT.value, out, quiet=True)
    print(f"{dataset} lr={lr} ({seconds:.0f}s): " + "  ".join(
        f"{r['regime']}={100 * r['accuracy']:.1f}" for r in rows), flush=True)

  # Resumed: a run over one dataset keeps the other's rows, regimes and map.
  tops, swrs = dict(out.get("top_regimes", {})), dict(out.get("swr_regimes", {}))
  for d in datasets:
    for lr in lrs:
      run(d, lr, BASE_REGIMES + taps_regimes)
    matched = _best(out["rows"], d, f"taps_lam{_MATCH.value}")
    start, cost = top_start(matched["taps"]["added_parameters"], _BACKBONE.value)
    tops[d] = f"top_from_{start}"
    print(f"{d}: TAPS (lam {int(_MATCH.value) / 100:g}) added "
          f"{matched['taps']['added_parameters']:,} parameters; the manual baseline fine-tunes "
          f"from {start} ({cost:,})", flush=True)
    for lr in lrs:
      run(d, lr, [tops[d]])
    if _SWR_CS.value:
      # In % of every base weight (the table's column; SWR's c counts learned weights only,
      # 1.5% fewer on the dogs MobileNetV2).
      match = max(1, round(100 * matched["taps"]["added_parameters"] / shared_parameters()))
      swrs[d] = [f"swr_c{int(c)}" for c in dict.fromkeys([*_SWR_CS.value, str(match)])]
      print(f"{d}: SWR at c = {', '.join(str(int(r[5:]) / 100) for r in swrs[d])} (the last: "
            f"TAPS's {match}%)", flush=True)
      for lr in lrs:
        run(d, lr, swrs[d])
  shared = shared_parameters()
  out["shared_parameters"] = shared
  out["top_regimes"] = tops
  out["swr_regimes"] = swrs
  common.write_result(_OUT.value, out, quiet=True)
  regimes = (BASE_REGIMES + taps_regimes + sorted(set(tops.values())) +
             sorted({r for rs in swrs.values() for r in rs}, key=lambda r: int(r[5:])))
  text = markdown(out["rows"], shared, regimes)
  if _TABLE.value:
    atomic_write_text(_TABLE.value, text)
  if _PLOT.value:
    plot_accuracy(out["rows"], shared, regimes, _PLOT.value)
  if _LAYER_MAP.value:
    maps, names = {}, None
    for d in sorted({r["dataset"] for r in out["rows"]}):
      for regime in taps_regimes:
        r = _best(out["rows"], d, regime)
        if r and "taps" in r:
          maps[f"{d}, lam {int(regime[len('taps_lam'):]) / 100:g}"] = r["taps"]["active"]
          names = r["taps"]["layers"]
    plot_layer_map(maps, names, _LAYER_MAP.value,
                   title=f"TAPS task-specific layers ({_BACKBONE.value} MobileNetV2)")
  print(text)
  print(f"wrote {_OUT.value}" + "".join(f", {p}" for p in (_TABLE.value, _PLOT.value,
                                                           _LAYER_MAP.value) if p))


if __name__ == "__main__":
  app.run(main)
