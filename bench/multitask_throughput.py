r"""Joint multi-task training speed: one process against local clusters, as ratios in one run.

Runs `configs/multitask.py:smoke` (two digit tasks on MobileNetV2 0.35 @32, summed or sampled
steps) for --steps joint steps in four set-ups and reads each run's training images per second
(every task's images over the training wall time, from metrics.json):

  single              one process (runtime.strategy=default, sampled steps)
  multi_worker        multi_worker_mirrored, chief + 1 worker (2 synchronous processes, summed)
  ps_1_worker         parameter_server, 1 worker + 1 ps (+ the chief coordinating, sampled)
  ps_2_workers        parameter_server, 2 workers + 1 ps (sampled)

Clusters run under `python -m k4p1.launch` inside a private network namespace (`unshare
--net`: TF servers listen on every interface) when one is available. On a 2-core machine the
cluster's processes share the same two cores, so ratios below 1 measure coordination overhead,
not scaling.

Run:   python bench/multitask_throughput.py --out=bench/results/multitask_throughput.json
Smoke: python bench/multitask_throughput.py --smoke --out=/tmp/mt.json
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

from k4p1 import launch as launch_lib  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/multitask_throughput.json", "Result JSON.")
_STEPS = flags.DEFINE_integer("steps", 200, "Joint steps per run.")
_SMOKE = flags.DEFINE_bool("smoke", False, "10 steps, single and ps_1_worker only.")

SETUPS = {
    "single": ("", "sampled"),
    "multi_worker": ("--workers=1 --ps=0", "multi_worker_mirrored"),
    "ps_1_worker": ("--workers=1 --ps=1", "parameter_server"),
    "ps_2_workers": ("--workers=2 --ps=1", "parameter_server"),
}
def run_setup(name: str, steps: int, workdir: str, private: bool) -> dict:
  launch, option = SETUPS[name]
  train = [sys.executable, "train.py", f"--config=configs/multitask.py:smoke,{option}",
           f"--workdir={workdir}", f"--config.multitask.steps={steps}",
           "--config.train.progress=false", "--config.export.enabled=false",
           "--config.train.checkpoint_every=100000"]
  env = {**os.environ, "PYTHONPATH": common.REPO_ROOT}
  env.pop("TF_CONFIG", None)
  if launch:
    command = " ".join([sys.executable, "-m", "k4p1.launch", launch, "--grace_seconds=5",
                        "--timeout=1800", "--"] + train)
    cmd = launch_lib.in_private_network(command) if private else ["sh", "-c", command]
  else:
    cmd = train
  start = time.time()
  proc = subprocess.run(cmd, cwd=common.REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=2400)
  if proc.returncode != 0:
    raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
  with open(os.path.join(workdir, "metrics.json")) as f:
    rows = json.load(f)["tasks"]
  seconds = max(r["train_seconds"] for r in rows)
  images = sum(r["train_images_per_second"] * r["train_seconds"] for r in rows)
  return {"setup": name, "strategy": option if launch else "default", "launch": launch,
          "steps": steps, "train_seconds": round(seconds, 2),
          "images_per_second": round(images / max(seconds, 1e-9), 2),
          "steps_done": {r["task"]: r["steps_done"] for r in rows},
          "wall_seconds": round(time.time() - start, 1)}


def main(argv):
  del argv
  common.warn_if_busy()
  machine = common.machine()  # the load average before this benchmark's own processes
  private = launch_lib.private_network_available()
  if not private:
    print("warning: no private network namespace (unshare --net): the cluster's servers "
          "listen on every interface of this machine while the benchmark runs.",
          file=sys.stderr)
  steps = 10 if _SMOKE.value else _STEPS.value
  names = ["single", "ps_1_worker"] if _SMOKE.value else list(SETUPS)
  rows = []
  root = tempfile.mkdtemp(prefix="k4p1_mt_bench_")
  try:
    for name in names:
      row = run_setup(name, steps, os.path.join(root, name), private)
      rows.append(row)
      print(f"{name}: {row['images_per_second']} images/s ({row['train_seconds']} s)", flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  base = rows[0]["images_per_second"]
  for row in rows:
    row["ratio_to_single"] = round(row["images_per_second"] / base, 3)
  common.write_result(_OUT.value, {"benchmark": "multitask_throughput", "smoke": _SMOKE.value,
                                   **machine, "private_network": private,
                                   "results": rows})


if __name__ == "__main__":
  app.run(main)
