r"""The paper's Table 5 and appendix C on real data: one network at several resolutions,
three ways, and the cascades built from each.

Runs `train.py --config=configs/multires.py:REGIME,data=DATA` for each regime (patch,
all_shared, independent) and dataset (CIFAR-10, Fashion-MNIST on the trained MobileNetV2 1.0
@160 of $K4P1_DATA_DIR, at 160/128/96/64 px; the config's scale); a run whose workdir holds
metrics.json is read, not rerun (delete it to measure again). Writes to --out: per regime the
accuracy at each resolution, the parameters in all (configs/multires.py --mode=params'
accounting), wall time and the greedy cascade (validation and test share: accuracy, mean
multiply-adds, exits), plus the candidate cascades; a markdown table (--table) and an
accuracy-vs-cost plot of the candidate cascades against the single resolutions (--plot).

  K4P1_DATA_DIR=../shared/data python bench/multires_table.py --workdir=/tmp/mr_runs
Smoke (the digits, a few steps): python bench/multires_table.py --smoke --out=/tmp/t5.json
"""

import json
import os
import tempfile
import time

import common  # noqa: F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/multires_table.json", "Result JSON.")
_TABLE = flags.DEFINE_string("table", "docs/multires_table.md", "Markdown table ('' = none).")
_PLOT = flags.DEFINE_string("plot", "docs/cascade_accuracy_vs_cost.png",
                            "Accuracy-vs-cost figure ('' = none).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Root of the runs' workdirs ('' = temporary); "
                               "runs are ROOT/<data>_<regime>.")
_SMOKE = flags.DEFINE_bool("smoke", False, "The digits smoke setup: a pipeline check only.")
_DATA = flags.DEFINE_list("data", ["cifar10", "fashion_mnist"], "configs/multires.py data=.")
_REGIMES = flags.DEFINE_list("regimes", ["patch", "all_shared", "independent"],
                             "configs/multires.py regimes.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(regime, data, smoke):
  from k4p1 import config as config_lib
  arg = f"{regime},smoke" if smoke else f"{regime},data={data}"
  config = config_lib.load(os.path.join(ROOT, "configs", "multires.py") + ":" + arg, lock=False)
  config.train.progress = False
  if smoke:  # a pipeline check: a few steps, no SavedModel (keeps the CI slow tier short)
    config.multitask.steps = 8
    config.export.enabled = False
  return config


def _run(regime, data, workdir, smoke):
  from k4p1 import experiment
  from k4p1.methods.multires import CASCADE_FILE
  metrics = os.path.join(workdir, "metrics.json")
  if not os.path.exists(metrics):
    start = time.time()
    experiment.run(_config(regime, data, smoke), workdir, "train")
    print(f"{data} {regime}: {time.time() - start:.0f} s", flush=True)
  with open(metrics) as f:
    result = json.load(f)
  with open(os.path.join(workdir, CASCADE_FILE)) as f:
    return result, json.load(f)


def _totals(data, smoke):
  """{regime: parameters in all}: the params-mode accounting (nothing trained)."""
  from k4p1 import experiment
  with tempfile.TemporaryDirectory() as tmp:
    result = experiment.run(_config("patch", data, smoke), tmp, "params")
  totals = {"patch": result["totals"]["this run"]["total"]}
  totals.update({k: v["total"] for k, v in result["totals"].items() if k != "this run"})
  return totals


def _row(regime, metrics, cascade, total):
  c = cascade["cascade"]
  ref = cascade["reference"]
  single = cascade["single_models"]
  return {
      "regime": regime,
      "accuracy": {t["task"]: t["accuracy"] for t in metrics["tasks"]},
      "total_parameters": total,
      "joint_steps": metrics["tasks"][0].get("joint_steps"),
      "train_seconds": metrics["tasks"][0].get("train_seconds"),
      "wall_seconds": metrics.get("wall_seconds"),
      "multiply_adds": cascade["multiply_adds"],
      "cascade": {
          "stages": cascade["stages"], "reference": ref,
          **{f"{split}_accuracy": c[split]["accuracy"] for split in ("validation", "test")},
          **{f"{split}_reference_accuracy": single[split][ref]["accuracy"]
             for split in ("validation", "test")},
          "test_cost_ratio": c["test"]["mean_cost"] / single["test"][ref]["mean_cost"],
          "validation_cost_ratio": (c["validation"]["mean_cost"] /
                                    single["validation"][ref]["mean_cost"]),
          "test_exits": c["test"]["exits"],
      },
      "single_models_test": single["test"],
      "candidates": [{"tolerance": k["tolerance"], "stages": k["stages"],
                      "test_accuracy": k["test"]["accuracy"],
                      "test_mean_cost": k["test"]["mean_cost"],
                      "validation_accuracy": k["validation"]["accuracy"],
                      "validation_mean_cost": k["validation"]["mean_cost"]}
                     for k in cascade["candidates"]],
  }


def _markdown(results) -> str:
  lines = []
  for data, rows in results.items():
    tasks = list(rows[0]["accuracy"])
    lines += [f"**{data}** (accuracy on the eval split; cascade on its test half)", "",
              "| resolution | " + " | ".join(r["regime"] for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for t in tasks:
      lines.append(f"| {t[1:]}x{t[1:]} | " +
                   " | ".join(f"{100 * r['accuracy'][t]:.1f}%" for r in rows) + " |")
    lines.append("| parameters in all | " +
                 " | ".join(f"{r['total_parameters']:,}" for r in rows) + " |")
    lines.append("| cascade: test accuracy (most accurate alone) | " + " | ".join(
        f"{100 * r['cascade']['test_accuracy']:.1f}% ({100 * r['cascade']['test_reference_accuracy']:.1f}%)"
        for r in rows) + " |")
    lines.append("| cascade: multiply-adds vs most accurate (test) | " + " | ".join(
        f"{r['cascade']['test_cost_ratio']:.3f}" for r in rows) + " |")
    lines.append("| cascade stages | " + " | ".join(
        " → ".join(f"{s['model'][1:]}@{s['threshold']:.2f}" for s in r["cascade"]["stages"])
        for r in rows) + " |")
    lines.append("")
  return "\n".join(lines)


def _plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
  colors = {"patch": "tab:blue", "all_shared": "tab:orange", "independent": "tab:green"}
  for ax, (data, rows) in zip(axes[0], results.items()):
    for r in rows:
      color = colors.get(r["regime"], "gray")
      singles = sorted(r["single_models_test"].items(), key=lambda kv: kv[1]["mean_cost"])
      ax.plot([s["mean_cost"] / 1e6 for _, s in singles],
              [100 * s["accuracy"] for _, s in singles], "o-", color=color, alpha=0.6,
              label=f"{r['regime']}: single resolutions")
      for name, s in singles:
        ax.annotate(name[1:], (s["mean_cost"] / 1e6, 100 * s["accuracy"]), fontsize=7,
                    xytext=(3, -9), textcoords="offset points", color=color)
      ax.scatter([k["test_mean_cost"] / 1e6 for k in r["candidates"]],
                 [100 * k["test_accuracy"] for k in r["candidates"]], marker="x", color=color,
                 label=f"{r['regime']}: cascades (tolerance 0-5 points)")
      chosen = next(k for k in r["candidates"] if k["tolerance"] == 0.0)
      ax.scatter([chosen["test_mean_cost"] / 1e6], [100 * chosen["test_accuracy"]], s=120,
                 facecolors="none", edgecolors=color, linewidths=2)
    ax.set_xlabel("mean multiply-adds per image (M)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{data}: cascades vs single resolutions (circled: tolerance 0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  common.save_figure(fig, path)


def main(argv):
  del argv
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="k4p1_table5_")
  datasets = ["digits"] if _SMOKE.value else _DATA.value
  results = {}
  for data in datasets:
    totals = _totals(data, _SMOKE.value)
    rows = []
    for regime in _REGIMES.value:
      metrics, cascade = _run(regime, data, os.path.join(root, f"{data}_{regime}"), _SMOKE.value)
      rows.append(_row(regime, metrics, cascade, totals[regime]))
    results[data] = rows
  out = {"benchmark": "multires_table", "config": "configs/multires.py", "smoke": _SMOKE.value,
         **common.machine(), "results": results}
  common.write_result(_OUT.value, out)
  table = _markdown(results)
  print(table)
  if _TABLE.value:
    from k4p1.files import atomic_write_text
    atomic_write_text(_TABLE.value, "<!-- written by bench/multires_table.py -->\n" + table)
  if _PLOT.value:
    _plot(results, _PLOT.value)


if __name__ == "__main__":
  app.run(main)
