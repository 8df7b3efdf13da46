r"""The paper's Table 4 on real data: two tasks trained jointly on one backbone, three ways.

Runs `train.py --config=configs/multitask.py:REGIME` for each regime (CIFAR-10 + Fashion-MNIST on
the trained MobileNetV2 1.0 @160 of $K4P1_DATA_DIR at the config's scale), and the `patch`
regime again on a local parameter-server cluster (`python -m k4p1.launch --workers=2 --ps=1`,
sampled steps) and, as its control, with the same sampled steps in one process, then writes per task accuracy, the run's total parameters (the shared base once
plus every task's own) and wall time to --out and a markdown table to stdout. A regime whose
workdir already holds metrics.json is read, not rerun (delete it to measure again).

  K4P1_DATA_DIR=../shared/data python bench/multitask_table.py \
      --out=bench/results/multitask_table.json --workdir=/tmp/k4p1_table4
Smoke (the digits, a few steps): python bench/multitask_table.py --smoke --out=/tmp/t4.json
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/multitask_table.json", "Result JSON.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Root of the runs' workdirs ('' = temporary).")
_SMOKE = flags.DEFINE_bool("smoke", False, "The digits smoke setup: a pipeline check only.")
_REGIMES = flags.DEFINE_list("regimes", ["patch", "last_layer", "independent"],
                             "configs/multitask.py regimes run in one process.")
_PS = flags.DEFINE_bool("parameter_server", True, "Also run `patch` on a local PS cluster.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, arg, workdir, cluster):
  metrics = os.path.join(workdir, "metrics.json")
  if not os.path.exists(metrics):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"),
           f"--config={os.path.join(ROOT, 'configs', 'multitask.py')}:{arg}",
           f"--workdir={workdir}", "--config.train.progress=false"]
    if cluster:  # in a private network namespace when one is available (loopback only)
      from k4p1 import launch as launch_lib
      command = " ".join([sys.executable, "-m", "k4p1.launch", "--workers=2", "--ps=1",
                          "--grace_seconds=5", "--timeout=3600", "--"] + cmd)
      cmd = (launch_lib.in_private_network(command) if launch_lib.private_network_available()
             else ["sh", "-c", command])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    env.pop("TF_CONFIG", None)
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
    print(f"{name}: {time.time() - start:.0f} s", flush=True)
  with open(metrics) as f:
    return json.load(f)


def row(name, metrics):
  tasks = metrics["tasks"]
  shared = tasks[0]["shared"]
  uses_base = any(t["task_specific"] < shared for t in tasks)  # independent: private copies
  own = sum(t["task_specific"] for t in tasks)
  return {
      "regime": name,
      "accuracy": {t["task"]: t["accuracy"] for t in tasks},
      "task_specific": {t["task"]: t["task_specific"] for t in tasks},
      "total_parameters": own + (shared if uses_base else 0),
      "steps": {t["task"]: t["steps_done"] for t in tasks},
      "joint_steps": tasks[0].get("joint_steps"),
      "train_seconds": tasks[0].get("train_seconds"),
      "wall_seconds": metrics.get("wall_seconds"),
  }


def main(argv):
  del argv
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="k4p1_table4_")
  smoke = ",smoke" if _SMOKE.value else ""
  machine = common.machine()
  runs = [(r, f"{r}{smoke}", False) for r in _REGIMES.value]
  if _PS.value:  # and its control: the same sampled steps in one process, synchronously
    runs.append(("patch_sampled", f"patch{smoke},sampled", False))
    runs.append(("patch_parameter_server", f"patch{smoke},parameter_server", True))
  rows = [row(name, _run(name, arg, os.path.join(root, name), cluster))
          for name, arg, cluster in runs]
  out = {"benchmark": "multitask_table", "config": "configs/multitask.py", "smoke": _SMOKE.value,
         **machine, "rows": rows}
  common.write_result(_OUT.value, out)
  tasks = list(rows[0]["accuracy"])
  print("| regime | " + " | ".join(tasks) + " | total parameters | steps | wall time |")
  print("|---|" + "---:|" * (len(tasks) + 3))
  for r in rows:
    print(f"| {r['regime']} | " + " | ".join(f"{100 * r['accuracy'][t]:.1f}%" for t in tasks) +
          f" | {r['total_parameters']:,} | {r['joint_steps']} | {r['wall_seconds']:.0f} s |")


if __name__ == "__main__":
  app.run(main)
