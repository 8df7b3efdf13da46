"""One cell of the transfer table: train.py on configs/transfer_table.py, its rows back.

Shared by bench/transfer_table.py (the learning-rate sweep) and bench/taps_table.py.

Example:
  rows, seconds = run_cell("dogs", "cifar10", "0.0045", False, "/tmp/cells",
                           "statistics=frozen,regimes=last_layer+taps_lam50")
"""

import json
import os

import common

CONFIG = os.path.join(common.REPO_ROOT, "configs", "transfer_table.py")


def _load(path):
  """A result JSON written earlier (to resume), or None."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def run_cell(backbone, dataset, lr, smoke, workdir, options=""):
  """Runs train.py on one cell; returns its per-regime rows (raises with the binary's stderr)."""
  arg = f"{backbone},{dataset},{lr}" + (f",{options}" if options else "") + \
      (",smoke" if smoke else "")
  cell_dir = os.path.join(workdir, f"{backbone}_{dataset}_{lr}".replace("-", "data"))
  metrics, seconds = common.run_train(f"{CONFIG}:{arg}", cell_dir)
  rows = [{"backbone": backbone, "dataset": dataset, "lr": float(lr), "regime": t["task"],
           "accuracy": t["accuracy"], "balanced_accuracy": t.get("balanced_accuracy"),
           "eval_examples": t["eval_examples"],
           "train_examples": t.get("train_examples"), "steps": t["steps_done"],
           "trainable": t["trainable"], "task_specific": t["task_specific"],
           "train_seconds": t.get("train_seconds"),
           **({"taps": t["taps"]} if "taps" in t else {}),
           **({"swr": t["swr"]} if "swr" in t else {})} for t in metrics["tasks"]]
  return rows, seconds
