r"""SWR's Table 1 (and Table 2, Figure 2) at this machine's scale: a multilingual KWS backbone
transferred to a real English set and a held-out language.

  1. --pretrained: the base.weights.h5 and patch file of a configs/kws.py:pretrain run on the
     generated corpus (bench/make_kws_corpus.py), a BC-ResNet-8 whose 12 concept classes are
     the Speech Commands ones;
  2. for each target (`english`: the real Speech Commands subset in $K4P1_DATA_DIR; `mandarin`:
     the corpus's held-out language) and fold (5-fold, class-stratified), each method:
       multilingual   the pretrained model itself, evaluated (no training: same label set)
       last_layer     a new classifier
       scale_bias     BN scale, bias and statistics + classifier
       full           fine-tune everything (lr x 0.5)
       taps           TAPS (lam --taps_lam) + task BN + classifier
       swr_C          SWR at target cost C (two-stage, BN statistics updated, affine frozen;
                      the costs of one variant share stage 1, --share_stage1)
       ablations:     swr_C_not_staged, swr_C_affine, swr_C_supernet_init, swr_C_uniform,
                      swr_C_no_supernet
  3. writes every cell to --out (resumed: finished cells are kept), the table (mean and spread
     over folds, parameters relative to one backbone, multiplies) to --table, and the SWR
     policy's achieved ratio against c (Figure 2a) and the layers it selects per c (Figure 2b)
     to --plot_ratio / --plot_layers.

  K4P1_DATA_DIR=../shared/data python bench/swr_table.py --pretrained=/tmp/kws_pretrain \
      --corpus=/tmp/kws_corpus --folds=0,1,2 --epochs=10 --beta=10
Res15 (pretrained with configs/kws.py:pretrain,backbone=res15): add --backbone=res15 and its own
--out / --table (the base's parameter count differs).
Smoke (2 steps per stage, one fold, generated data):
  python bench/swr_table.py --smoke --out=/tmp/s.json --table= --plot_ratio= --plot_layers=
"""

import hashlib
import json
import math
import os
import shutil
import tempfile

import common  # noqa: F401  (puts the repository on the import path)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from k4p1.methods.swr.train import STAGE1_DIR  # noqa: E402

ROOT = common.REPO_ROOT
KWS = os.path.join(ROOT, "configs", "kws.py")
SWR = os.path.join(ROOT, "configs", "swr_kws.py")

_OUT = flags.DEFINE_string("out", "bench/results/swr_kws_table.json", "Result JSON (resumed).")
_TABLE = flags.DEFINE_string("table", "docs/swr_kws_table.md", "Markdown table ('' = none).")
_PLOT_RATIO = flags.DEFINE_string("plot_ratio", "docs/swr_cost_control.png",
                                  "Figure 2a: achieved ratio against c ('' = none).")
_PLOT_LAYERS = flags.DEFINE_string("plot_layers", "docs/swr_layers.png",
                                   "Figure 2b: selected layers per c ('' = none).")
_PRETRAINED = flags.DEFINE_string("pretrained", "", "Workdir of a configs/kws.py:pretrain run "
                                  "(its base.weights.h5 and patches/kws.k4p1.npz).")
_CORPUS = flags.DEFINE_string("corpus", "", "bench/make_kws_corpus.py's output (for the "
                              "held-out language target).")
_TARGETS = flags.DEFINE_list("targets", ["english", "mandarin"], "english, mandarin.")
_FOLDS = flags.DEFINE_list("folds", ["0", "1", "2"], "Held-out folds of 5 (one cell each).")
_METHODS = flags.DEFINE_list(
    "methods", ["multilingual", "last_layer", "scale_bias", "full", "taps", "swr_0.1",
                "swr_0.3", "swr_0.5"], "Methods (module docstring).")
_EPOCHS = flags.DEFINE_float("epochs", 10.0, "Epochs per stage (the paper: 30).")
_LR = flags.DEFINE_float("lr", 0.001, "Adam's initial rate (cosine-annealed); full: half.")
_TAPS_LAM = flags.DEFINE_float("taps_lam", 0.5, "TAPS's lambda.")
_TAPS_SCORE_LR = flags.DEFINE_float("taps_score_lr", 0.01, "TAPS scores' own rate (at the "
                                    "cell's 0.001 the scores barely move in a short run).")
_BETA = flags.DEFINE_float("beta", 1.0, "SWR's cost-loss weight (the paper: 1).")
_BACKBONE = flags.DEFINE_string("backbone", "bc_resnet", "bc_resnet or res15.")
_SMOKE = flags.DEFINE_bool("smoke", False, "2 steps per stage, one fold, generated keywords.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where cells train ('' = a temporary folder).")
_SHARE_STAGE1 = flags.DEFINE_bool(
    "share_stage1", True, "SWR cells differing only in c share one super-net and policy (stage "
    "1 does not depend on c): the first trains stage 1, the others start from it "
    "(train.init_from) and train stage 2 only, with the same result as retraining it. "
    "--noshare_stage1 retrains it per c.")


def _load(path):
  if path and os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def target_data(target: str) -> str:
  """configs/kws.py's data= for a target."""
  if _SMOKE.value:
    return "synthetic"
  if target == "english":
    return "subset"
  if target == "mandarin":
    if not _CORPUS.value:
      raise app.UsageError("--corpus is needed for the mandarin target.")
    return os.path.join(_CORPUS.value, "heldout_cmn")
  raise app.UsageError(f"Unknown target {target!r} (english, mandarin).")


def method_arg(method: str, target: str, fold: str, weights: str) -> tuple[str, str]:
  """(config path, its ARG) for a trained method."""
  common_args = [f"data={target_data(target)}", f"fold={fold}", f"weights={weights}",
                 f"backbone={_BACKBONE.value}", f"lr={_LR.value}"]
  if _SMOKE.value:
    common_args += ["tau=1"]
  if method.startswith("swr_"):
    parts = method.split("_")
    c = float(parts[1])
    ablation = "_".join(parts[2:])
    options = {"": [], "not_staged": ["staged=false"], "affine": ["bn=affine"],
               "supernet_init": ["init=supernet"], "uniform": ["weighting=uniform"],
               "no_supernet": ["supernet=0"]}
    if ablation not in options:
      raise app.UsageError(f"Unknown SWR variant {method!r}.")
    return SWR, ",".join([f"c={c}", f"epochs={_EPOCHS.value}", f"beta={_BETA.value}"] +
                         common_args + options[ablation])
  patch = {"last_layer": "last_layer", "scale_bias": "scale_bias+last_layer",
           "full": "full+last_layer",
           "taps": f"taps(lam={_TAPS_LAM.value},score_lr={_TAPS_SCORE_LR.value})"
                   f"+scale_bias+last_layer"}.get(method)
  if patch is None:
    raise app.UsageError(f"Unknown method {method!r}.")
  args = [a for a in common_args if not a.startswith("lr=")]
  lr = _LR.value * (0.5 if method == "full" else 1.0)
  return KWS, ",".join([f"patch={patch}", f"epochs={_EPOCHS.value}", f"lr={lr}"] + args)


def stage1_dir(method, target, fold, root) -> str:
  """Where the SWR cells of one variant, target and fold keep their shared stage 1 under
  `root` ('' when the method has none to share: not SWR, not staged, or --noshare_stage1)."""
  if not method.startswith("swr_") or variant(method) == "not_staged" or \
      not _SHARE_STAGE1.value:
    return ""
  return os.path.join(root, f"{variant(method) or 'swr'}_{target}_{fold}")


def run_cell(method, target, fold, weights, workdir, stage1_root) -> dict:
  config, arg = method_arg(method, target, fold, weights)
  cell_dir = os.path.join(workdir, f"{method}_{target}_{fold}")
  flags = ["--config.optimizer.schedule=cosine"]
  if _SMOKE.value:
    flags += ["--config.tasks.kws.steps=2"]
  shared = stage1_dir(method, target, fold, stage1_root)
  resumed = os.path.exists(os.path.join(cell_dir, "checkpoints"))  # an interrupted cell
  reuse = bool(shared) and os.path.isdir(os.path.join(shared, STAGE1_DIR)) and not resumed
  if reuse:  # another target cost of this variant trained stage 1: train stage 2 only
    arg += f",stage1={shared}"
  metrics, seconds = common.run_train(f"{config}:{arg}", cell_dir, flags, keep=bool(shared))
  if shared:
    kept = os.path.join(cell_dir, STAGE1_DIR)
    if not reuse and os.path.isdir(kept) and not os.path.isdir(os.path.join(shared, STAGE1_DIR)):
      os.makedirs(shared, exist_ok=True)
      os.replace(kept, os.path.join(shared, STAGE1_DIR))
    shutil.rmtree(cell_dir, ignore_errors=True)
  (t,) = [t for t in metrics["tasks"] if t["task"] == "kws"]
  learned = sum(c["learned"] for c in t["components"].values()) if "components" in t else None
  return {"method": method, "target": target, "fold": int(fold), "accuracy": t["accuracy"],
          "balanced_accuracy": t["balanced_accuracy"], "eval_examples": t["eval_examples"],
          "train_examples": t["train_examples"], "steps": t["steps_done"],
          "task_specific": t["task_specific"], "learned_task_parameters": learned,
          "shared": t.get("shared"), "seconds": round(seconds, 1),
          # A shared cell's seconds count its stage 2 only.
          **({"stage1": "shared" if reuse else "trained"} if shared else {}),
          **({"swr": t["swr"]} if "swr" in t else {}),
          **({"taps": {k: t["taps"][k] for k in ("active_layers", "added_parameters")}}
             if "taps" in t else {})}


def multilingual_cell(target, fold, pretrained) -> dict:
  """The pretrained model on the target's held-out fold (same 12 concept labels)."""
  from k4p1 import experiment
  from k4p1.config import load
  from k4p1.data import load_task_data
  from k4p1.export.patch_files import assemble
  import tensorflow as tf
  config, arg = method_arg("last_layer", target, fold, "none")
  spec = experiment.resolve(load(f"{config}:{arg}"))
  models = assemble(spec.backbone, [os.path.join(pretrained, "patches", "kws.k4p1.npz")],
                    base_weights=os.path.join(pretrained, "base.weights.h5"))
  (name,) = list(models.tasks)
  task = models.tasks[name]
  data = load_task_data(spec.task("kws").dataset, task.input_spec)
  if tuple(data.class_names) != tuple(task.class_names):
    raise RuntimeError(f"The pretrained classes {task.class_names} are not the target's "
                       f"{data.class_names}.")
  correct = total = 0
  for x, y in data.eval_batches(100):
    pred = tf.argmax(task.model(x, training=False), -1, output_type=tf.int32).numpy()
    correct += int((pred == y.numpy()).sum())
    total += len(pred)
  return {"method": "multilingual", "target": target, "fold": int(fold),
          "accuracy": correct / total, "eval_examples": total, "task_specific": 0,
          "learned_task_parameters": 0}


def summarize(rows, base_learned: int) -> list[dict]:
  """Per method: per target the mean accuracy, its spread (half the 95% t-interval over
  folds), the folds and, for SWR and TAPS, the mean added parameters / base; and #params
  relative to one backbone with one task per target (the paper's column)."""
  from scipy import stats
  out = []
  for method in dict.fromkeys(r["method"] for r in rows):
    entry = {"method": method}
    added = 0.0
    for target in dict.fromkeys(r["target"] for r in rows):
      cells = [r for r in rows if r["method"] == method and r["target"] == target]
      if not cells:
        continue
      accs = [r["accuracy"] for r in cells]
      half = float(stats.t.ppf(0.975, len(accs) - 1) * np.std(accs, ddof=1) /
                   math.sqrt(len(accs))) if len(accs) > 1 else float("nan")
      entry[target] = {"mean": float(np.mean(accs)), "ci95_half": half,
                       "folds": sorted(r["fold"] for r in cells)}
      chosen = [r["swr"]["ratio"] if "swr" in r else
                r["taps"]["added_parameters"] / base_learned for r in cells
                if "swr" in r or "taps" in r]
      if chosen:
        entry[target]["added_ratio"] = float(np.mean(chosen))
      learned = [r["learned_task_parameters"] for r in cells
                 if r.get("learned_task_parameters") is not None]
      added += float(np.mean(learned)) if learned else 0.0
    entry["params_relative"] = 1.0 + added / base_learned
    out.append(entry)
  return out


def markdown(summary, targets, multiply_adds: int) -> str:
  """The table: accuracy (95% half-interval over folds) per target, the folds, the
  parameters relative to one base, the added ratio SWR / TAPS chose, and multiply-adds (every
  method folds into the base's graph)."""
  per_target = " / ".join(targets)
  lines = ["| method | " + " | ".join(targets) + f" | folds ({per_target}) | #params | "
           f"added / base ({per_target}) | #mult |",
           "|---|" + "---:|" * len(targets) + "---|---:|---|---:|"]
  for e in summary:
    cells, folds, ratios = [], [], []
    for t in targets:
      s = e.get(t)
      if s is None:
        cells.append("")
        folds.append("0")
        ratios.append("-")
        continue
      folds.append(str(len(s["folds"])))
      cells.append(f"{100 * s['mean']:.1f}" + (f" ± {100 * s['ci95_half']:.1f}"
                                               if not math.isnan(s["ci95_half"]) else ""))
      ratios.append(f"{s['added_ratio']:.2f}" if "added_ratio" in s else "-")
    lines.append(f"| {e['method']} | " + " | ".join(cells) + f" | {' / '.join(folds)} | "
                 f"{e['params_relative']:.2f}x | {' / '.join(ratios)} | "
                 f"{multiply_adds / 1e6:.1f}M |")
  return "\n".join(lines) + "\n"


VARIANT_LABELS = {"": "SWR (parameter weighting)", "uniform": "uniform weighting",
                  "no_supernet": "no super-net", "not_staged": "not staged",
                  "affine": "+ BN affine", "supernet_init": "super-net init"}


def variant(method: str) -> str:
  """An SWR method's ablation ('' for the paper's SWR): swr_0.3_affine -> 'affine'."""
  return "_".join(method.split("_")[2:])


def plot_ratio(rows, path):
  """Figure 2a: the binarized policy's added ratio against c, averaged over every cell of a
  variant (the policy does not depend on the cell's own c; the band spans min to max)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.2, 4.2))
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="ideal")
  cells = [r for r in rows if "swr" in r]
  for v in dict.fromkeys(variant(r["method"]) for r in cells):
    sweeps = np.array([[p["ratio"] for p in r["swr"]["sweep"]] for r in cells
                       if variant(r["method"]) == v])
    cs = [p["c"] for p in next(r for r in cells if variant(r["method"]) == v)["swr"]["sweep"]]
    cells_text = f"{len(sweeps)} cell" + ("s" if len(sweeps) > 1 else "")
    line, = ax.plot(cs, sweeps.mean(0), marker="o", ms=3,
                    label=f"{VARIANT_LABELS.get(v, v)} ({cells_text})")
    ax.fill_between(cs, sweeps.min(0), sweeps.max(0), color=line.get_color(), alpha=0.15)
  ax.set_xlabel("target cost c")
  ax.set_ylabel("added parameters / base")
  ax.legend(fontsize=7)
  ax.set_title("SWR cost control (Figure 2a)")
  fig.tight_layout()
  common.save_figure(fig, path)


def plot_layers(rows, path):
  from k4p1.methods.taps.report import plot_layer_map
  cell = next((r for r in rows if "swr" in r), None)
  if cell is None:
    return
  layers = cell["swr"]["layers"]
  grid = {f"c={p['c']:.2f}": [i in set(p["selected"]) for i in range(len(layers))]
          for p in cell["swr"]["sweep"][1::2]}
  plot_layer_map(grid, layers, path, title=f"SWR: selected layers per target cost "
                 f"({cell['method']}, {cell['target']} fold {cell['fold']})")
  print(f"wrote {path}")


def main(argv):
  del argv
  if not _SMOKE.value and not _PRETRAINED.value:
    raise app.UsageError("--pretrained=WORKDIR of a configs/kws.py:pretrain run is required.")
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="swr_table-")
  pretrained = _PRETRAINED.value
  if _SMOKE.value and not pretrained:
    pretrained = os.path.join(workdir, "pretrain")
    if not os.path.exists(os.path.join(pretrained, "base.weights.h5")):
      common.run_train(f"{KWS}:pretrain,data=synthetic,tau=1,steps=4", pretrained,
                       ["--config.export.enabled=false"], keep=True)
  weights = os.path.join(pretrained, "base.weights.h5")
  folds = _FOLDS.value[:1] if _SMOKE.value else _FOLDS.value
  targets = _TARGETS.value[:1] if _SMOKE.value else _TARGETS.value
  result = _load(_OUT.value) or {"benchmark": "swr_kws_table", "rows": []}
  settings = {"epochs_per_stage": _EPOCHS.value, "lr": _LR.value, "backbone": _BACKBONE.value,
              "beta": _BETA.value, "taps_lam": _TAPS_LAM.value,
              "taps_score_lr": _TAPS_SCORE_LR.value, "smoke": _SMOKE.value}
  changed = {k: (result[k], v) for k, v in settings.items() if k in result and result[k] != v}
  if result["rows"] and changed:
    raise app.UsageError(f"{_OUT.value} holds cells measured with other settings "
                         f"(stored, given): {changed}. Give those settings to resume it, or "
                         f"another --out.")
  # Not a setting that changes results: stage 1 does not depend on c, and a run from a shared
  # stage 1 reproduces the retrained one exactly (tests/swr_test.py); rows say which they did.
  result.update({**common.machine(), **settings, "pretrained": pretrained,
                 "share_stage1": _SHARE_STAGE1.value})
  done = {(r["method"], r["target"], r["fold"]) for r in result["rows"]}
  # Shared stage 1s live under a folder named after the settings that make them (a rerun with
  # other settings in the same --workdir does not pick them up).
  digest = hashlib.sha256(json.dumps([settings, pretrained], sort_keys=True).encode())
  stage1_root = os.path.join(workdir, "stage1", digest.hexdigest()[:12])
  for target in targets:
    for fold in folds:
      for method in _METHODS.value:
        if (method, target, int(fold)) in done:
          continue
        row = (multilingual_cell(target, fold, pretrained) if method == "multilingual"
               else run_cell(method, target, fold, weights, workdir, stage1_root))
        result["rows"].append(row)
        print(f"{target} fold {fold} {method}: {100 * row['accuracy']:.1f}%", flush=True)
        common.write_result(_OUT.value, result, quiet=True)
      for method in _METHODS.value:  # this fold's shared stage 1s (a few MB each) are done
        if shared := stage1_dir(method, target, fold, stage1_root):
          shutil.rmtree(shared, ignore_errors=True)
  from k4p1.backbones import build_backbone
  from k4p1.config import BackboneSpec
  # configs/kws.py's widths: BC-ResNet-8 (tau 1 in the smoke), Res15 at its own 45 maps.
  alpha = 8.0 if _BACKBONE.value == "bc_resnet" and not _SMOKE.value else 1.0
  base = build_backbone(BackboneSpec(_BACKBONE.value, alpha=alpha, input_size=16000,
                                     weights="none"))
  base_learned = sum(int(np.prod(v.shape)) for v in base.model.trainable_variables)
  from k4p1.analysis.cost import multiply_adds
  mult = multiply_adds(base.model, base.model.input_shape[1:])["total"]
  result["base_learned_parameters"] = base_learned
  result["base_multiply_adds"] = mult
  result["summary"] = summarize(result["rows"], base_learned)
  common.write_result(_OUT.value, result)
  if _TABLE.value:
    with open(_TABLE.value, "w") as f:
      f.write(markdown(result["summary"], list(dict.fromkeys(r["target"]
                                                             for r in result["rows"])), mult))
    print(f"wrote {_TABLE.value}")
  if _PLOT_RATIO.value:
    plot_ratio(result["rows"], _PLOT_RATIO.value)
  if _PLOT_LAYERS.value:
    plot_layers(result["rows"], _PLOT_LAYERS.value)


if __name__ == "__main__":
  app.run(main)
