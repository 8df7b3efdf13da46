r"""The transfer table and learning-rate sweep (paper Tables 2, 3, 6 and Figure 3).

For every backbone x dataset x learning rate, runs the train binary on
`configs/transfer_table.py:BACKBONE,DATASET,LR` (seven regimes as seven tasks on one frozen
backbone) and collects each regime's test accuracy, trainable and task-specific parameters.
Writes the results after every cell and skips cells already in --out, so an interrupted sweep
resumes where it stopped. Then draws accuracy against learning rate per regime (one panel per
backbone x dataset) and writes a markdown table of the best rate per regime.

Full sweep (2 backbones x 2 datasets x each backbone's rate grid; about an hour on 2 cores):
  K4P1_DATA_DIR=../shared/data python bench/transfer_table.py \
      --out=bench/results/transfer_table.json --plot=docs/transfer_lr_sweep.png \
      --table=docs/transfer_table.md
Your own data, two regimes, statistics recomputed first:
  python bench/transfer_table.py --backbones=dogs --data=image_folder:/data/signs \
      --regimes=last_layer,scale_bias_last_layer --statistics=recompute --out=/tmp/signs.json
Smoke (CI; 2 steps per regime, one cell per backbone, needs the shared data):
  K4P1_DATA_DIR=../shared/data python bench/transfer_table.py --smoke --out=/tmp/t.json \
      --plot=/tmp/t.png --table=/tmp/t.md
"""

import os
import tempfile

import common  # noqa: E402,F401  (puts the repository on the import path)
from transfer_cells import CONFIG, _load, run_cell  # noqa: E402

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/transfer_table.json", "Result JSON (resumed).")
_PLOT = flags.DEFINE_string("plot", "docs/transfer_lr_sweep.png", "Plot path ('' = none).")
_TABLE = flags.DEFINE_string("table", "docs/transfer_table.md", "Markdown table path ('' = none).")
_BACKBONES = flags.DEFINE_list("backbones", ["ssd", "dogs"], "Backbones (configs/transfer_table.py).")
_DATASETS = flags.DEFINE_list("datasets", ["cifar10", "fashion_mnist"], "Target datasets.")
_LRS = flags.DEFINE_list("lrs", [], "Learning rates (default: each backbone's grid, "
                         "configs/transfer_table.py LR_GRIDS, which brackets its optimum; the "
                         "paper's sweep is 0.0045 to 0.45 in factors of ~3).")
_SMOKE = flags.DEFINE_bool("smoke", False, "2 steps per regime, one rate: pipeline check only.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where cells train ('' = a temporary folder).")
_FROZEN = flags.DEFINE_bool("frozen", False, "Same as --statistics=frozen.")
_STATISTICS = flags.DEFINE_enum("statistics", "batch", ["batch", "frozen", "recompute"],
                                "Where scale-and-bias patches' BN statistics come from: the "
                                "target's batch statistics, the backbone's, or the target's "
                                "recomputed before training.")
_REGIMES = flags.DEFINE_list("regimes", [], "A subset of the regimes (default: all seven).")
_DATA = flags.DEFINE_string("data", "", "SOURCE:PATH of your own data (e.g. "
                            "image_folder:/data/signs), instead of --datasets.")
_SIZE = flags.DEFINE_integer("size", 0, "Input size (0: the config's 64).")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 0, "Training images (0: the config's).")
_EPOCHS = flags.DEFINE_float("epochs", 0.0, "Epochs (0: the config's).")



def cell_options() -> str:
  """The options after BACKBONE,DATASET,LR that the flags select (configs/transfer_table.py)."""
  statistics = "frozen" if _FROZEN.value else _STATISTICS.value
  options = [f"statistics={statistics}"]
  if _REGIMES.value:
    options.append("regimes=" + "+".join(_REGIMES.value))
  if _DATA.value:
    options.append(f"data={_DATA.value}")
  for key, flag in (("size", _SIZE), ("train_examples", _TRAIN_EXAMPLES), ("epochs", _EPOCHS)):
    if flag.value:
      options.append(f"{key}={flag.value:g}" if isinstance(flag.value, float) else
                     f"{key}={flag.value}")
  return ",".join(options)


def best_per_regime(rows):
  best = {}
  for r in rows:
    key = (r["backbone"], r["dataset"], r["regime"])
    if key not in best or r["accuracy"] > best[key]["accuracy"]:
      best[key] = r
  return best


def markdown_table(rows, regimes):
  best = best_per_regime(rows)
  pairs = sorted({(r["backbone"], r["dataset"]) for r in rows})
  lines = ["| regime | " + " | ".join(f"{b} -> {d}" for b, d in pairs) +
           " | trainable | task-specific |",
           "|---|" + "---|" * len(pairs) + "---:|---:|"]
  for regime in regimes:
    cells, params = [], None
    for b, d in pairs:
      r = best.get((b, d, regime))
      cells.append(f"{100 * r['accuracy']:.1f}% (lr {r['lr']:g})" if r else "-")
      params = params or r
    if params:
      lines.append(f"| {regime} | " + " | ".join(cells) +
                   f" | {params['trainable']:,} | {params['task_specific']:,} |")
  return "\n".join(lines) + "\n"


def sweep_tables(rows, regimes):
  """Every measured accuracy: one table per backbone -> dataset, regimes x learning rates."""
  out = []
  for b, d in sorted({(r["backbone"], r["dataset"]) for r in rows}):
    lrs = sorted({r["lr"] for r in rows if (r["backbone"], r["dataset"]) == (b, d)})
    acc = {(r["regime"], r["lr"]): r["accuracy"] for r in rows
           if (r["backbone"], r["dataset"]) == (b, d)}
    out.append(f"\n**{b} -> {d}**, test accuracy (%) by initial learning rate:\n")
    out.append("| regime | " + " | ".join(f"{lr:g}" for lr in lrs) + " |")
    out.append("|---|" + "---:|" * len(lrs))
    for regime in regimes:
      vals = [acc.get((regime, lr)) for lr in lrs]
      best = max(v for v in vals if v is not None)
      out.append(f"| {regime} | " + " | ".join(
          "-" if v is None else (f"**{100 * v:.1f}**" if v == best else f"{100 * v:.1f}")
          for v in vals) + " |")
  return "\n".join(out) + "\n"


def plot(rows, regimes, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  pairs = sorted({(r["backbone"], r["dataset"]) for r in rows})
  fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
  for ax, (b, d) in zip(axes[0], pairs):
    for regime in regimes:
      pts = sorted((r["lr"], r["accuracy"]) for r in rows
                   if (r["backbone"], r["dataset"], r["regime"]) == (b, d, regime))
      if pts:
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=regime)
    ax.set_xscale("log")
    ax.set_title(f"{b} -> {d}")
    ax.set_xlabel("initial learning rate")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  common.save_figure(fig, path)


def main(argv):
  del argv
  from k4p1.config import load_module
  from k4p1.files import atomic_write_text
  module = load_module(CONFIG)
  regimes = _REGIMES.value or list(module.REGIMES)  # also taps_lam<N>, top_from_<LAYER>
  options = cell_options()
  module.get_config(f"{_BACKBONES.value[0]},{'-' if _DATA.value else 'cifar10'},0.1,{options}")
  datasets = ["-"] if _DATA.value else _DATASETS.value
  datasets = datasets[:1] if _SMOKE.value else datasets
  previous = None if _SMOKE.value else _load(_OUT.value)
  if previous and previous.get("options", "statistics=batch") != options:
    raise SystemExit(f"{_OUT.value} holds a sweep with options {previous.get('options')!r}, "
                     f"not {options!r}: pass another --out.")
  out = previous or {
      "benchmark": "transfer_table", "config": "configs/transfer_table.py",
      "smoke": _SMOKE.value, "options": options, "data": _DATA.value,
      "scale_bias_statistics": "frozen" if _FROZEN.value else _STATISTICS.value,
      "settings": {"input_size": _SIZE.value or module.SIZE,
                   "train_examples": _TRAIN_EXAMPLES.value or module.TRAIN_EXAMPLES,
                   "eval_examples": module.EVAL_EXAMPLES, "epochs": _EPOCHS.value or module.EPOCHS},
      **common.machine(), "rows": [], "cell_seconds": {}}
  done = {(r["backbone"], r["dataset"], r["lr"]) for r in out["rows"]}
  cells = [(b, d, lr) for b in _BACKBONES.value for d in datasets
           for lr in (["0.045"] if _SMOKE.value else _LRS.value or module.LR_GRIDS[b])]
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="k4p1_transfer_")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  for i, (b, d, lr) in enumerate(cells):
    if (b, d, float(lr)) in done:
      print(f"[{i + 1}/{len(cells)}] {b} {d} lr={lr}: already in {_OUT.value}", flush=True)
      continue
    rows, seconds = run_cell(b, d, lr, _SMOKE.value, workdir, options)
    out["rows"].extend(rows)
    out["cell_seconds"][f"{b},{d},{lr}"] = round(seconds, 1)
    common.write_result(_OUT.value, out, quiet=True)
    summary = "  ".join(f"{r['regime']}={100 * r['accuracy']:.1f}" for r in rows)
    print(f"[{i + 1}/{len(cells)}] {b} {d} lr={lr} ({seconds:.0f}s): {summary}", flush=True)
  if _TABLE.value:
    atomic_write_text(_TABLE.value, markdown_table(out["rows"], regimes) +
                      sweep_tables(out["rows"], regimes))
  if _PLOT.value:
    plot(out["rows"], regimes, _PLOT.value)
  print(markdown_table(out["rows"], regimes))
  print(f"wrote {_OUT.value}" + (f", {_TABLE.value}" if _TABLE.value else "") +
        (f", {_PLOT.value}" if _PLOT.value else ""))


if __name__ == "__main__":
  app.run(main)
