"""One cell of the transfer table: train.py on configs/transfer_table.py, its rows back.

Shared by bench/transfer_table.py (the learning-rate sweep) and bench/taps_table.py.

Example:
  rows, seconds = run_cell("dogs", "cifar10", "0.0045", False, "/tmp/cells",
                           "statistics=frozen,regimes=last_layer+taps_lam50")
"""

import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "transfer_table.py")


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
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={CONFIG}:{arg}",
         f"--workdir={cell_dir}", "--config.train.progress=false"]
  start = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  with open(os.path.join(cell_dir, "metrics.json")) as f:
    metrics = json.load(f)
  shutil.rmtree(cell_dir, ignore_errors=True)  # checkpoints of a full copy are ~40 MB per cell
  rows = [{"backbone": backbone, "dataset": dataset, "lr": float(lr), "regime": t["task"],
           "accuracy": t["accuracy"], "balanced_accuracy": t.get("balanced_accuracy"),
           "eval_examples": t["eval_examples"],
           "train_examples": t.get("train_examples"), "steps": t["steps_done"],
           "trainable": t["trainable"], "task_specific": t["task_specific"],
           "train_seconds": t.get("train_seconds"),
           **({"taps": t["taps"]} if "taps" in t else {})} for t in metrics["tasks"]]
  return rows, time.time() - start
