"""What every benchmark shares: the import path, machine facts, load check, result and figure
writing.

Benchmarks run as `python bench/NAME.py`, so Python puts bench/ (not the repository) on the
path; importing this module adds the repository root once.

Example:
  import common  # noqa: F401  (first: makes `import k4p1` work)
  common.write_result(path, {"benchmark": "x", **common.machine(), "results": rows})
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


def machine() -> dict:
  """CPU count, platform, library versions and the load average when measuring started."""
  import keras
  import tensorflow as tf
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                      "tensorflow": tf.__version__, "keras": keras.__version__,
                      "load_average_1min_at_start": round(load, 2)}}


def warn_if_busy(threshold: float = 0.5):
  """Prints a warning when the machine is not quiet (timings would not be trustworthy)."""
  if hasattr(os, "getloadavg") and os.getloadavg()[0] > threshold:
    print(f"warning: load average {os.getloadavg()[0]:.2f} > {threshold}: other work is "
          f"running; speed figures from this run are not trustworthy.", file=sys.stderr)


def write_result(path: str, result: dict, quiet: bool = False):
  """Writes the result JSON atomically (creating its folder) and, unless quiet, says where."""
  from k4p1.files import atomic_write_json
  atomic_write_json(path, result)
  if not quiet:
    print(f"wrote {path}")


def save_figure(fig, path: str, dpi: int = 110):
  """Saves a matplotlib figure atomically (a temporary file, then a rename), closes it, says where."""
  import matplotlib.pyplot as plt
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=dpi)
  os.replace(tmp, path)
  plt.close(fig)
  print(f"wrote {path}")


def run_train(config: str, workdir: str, flags=(), keep: bool = False) -> tuple[dict, float]:
  """Runs `train.py --config=CONFIG --workdir=WORKDIR FLAGS` in a subprocess (no progress bar).

  Returns its metrics.json and the wall seconds; removes the workdir afterwards unless `keep`
  (a full-copy regime's checkpoints are tens of MB). Raises RuntimeError with the binary's
  stderr when it fails.
  """
  cmd = [sys.executable, os.path.join(REPO_ROOT, "train.py"), f"--config={config}",
         f"--workdir={workdir}", "--config.train.progress=false", *flags]
  start = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  if not keep:
    shutil.rmtree(workdir, ignore_errors=True)
  return metrics, time.time() - start
