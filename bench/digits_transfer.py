r"""Accuracy of the embedded default (configs/digits.py) over several seeds.

Pretrain MobileNetV2 0.35 @32 on digits 0-4, then learn digits 5-9 with the last layer only and
with a scale-and-bias patch + last layer. Writes accuracy per task and seed, and mean / min / max.

Run (about 3 minutes per seed on 2 cores):
  python bench/digits_transfer.py --seeds=0,1,2,3,4 --out=bench/results/digits_transfer.json
Smoke: python bench/digits_transfer.py --smoke --out=/tmp/digits.json
"""

import os
import shutil
import tempfile

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT = flags.DEFINE_string("out", "bench/results/digits_transfer.json", "Result JSON path.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2,3,4", "Comma-separated seeds.")
_SMOKE = flags.DEFINE_bool("smoke", False, "3 steps per task, one seed: pipeline check only.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(smoke):
  from k4p1 import config as config_lib
  path = os.path.join(ROOT, "configs", "digits.py")
  return config_lib.load(path + (":smoke" if smoke else ""), lock=False)


def main(argv):
  del argv
  from k4p1 import experiment
  machine = common.machine()  # the load average before measuring
  seeds = [0] if _SMOKE.value else [int(s) for s in _SEEDS.value.split(",")]
  runs = []
  for seed in seeds:
    config = _config(_SMOKE.value)
    config.backbone.seed = seed
    config.train.seed = seed
    config.train.progress = False
    config.export.enabled = False
    workdir = tempfile.mkdtemp()
    try:
      result = experiment.run(config, workdir, "train")
    finally:
      shutil.rmtree(workdir, ignore_errors=True)
    runs.append({"seed": seed, "tasks": {r["task"]: {
        "accuracy": r["accuracy"], "balanced_accuracy": r["balanced_accuracy"],
        "eval_examples": r["eval_examples"],
        "trainable": r["trainable"], "task_specific": r["task_specific"],
        "patch_file_bytes": r.get("patch_file_bytes"),
        "train_seconds": r.get("train_seconds")} for r in result["tasks"]}})
  summary = {}
  for task in runs[0]["tasks"]:
    accs = [run["tasks"][task]["accuracy"] for run in runs]
    summary[task] = {"mean": sum(accs) / len(accs), "min": min(accs), "max": max(accs)}
  out = {"benchmark": "digits_transfer", "config": "configs/digits.py", "smoke": _SMOKE.value,
         **machine, "seeds": seeds, "summary": summary, "runs": runs}
  common.write_result(_OUT.value, out, quiet=True)
  print(f"\n{'task':<26}{'mean':>8}{'min':>8}{'max':>8}   ({len(seeds)} seeds)")
  for task, s in summary.items():
    print(f"{task:<26}{100 * s['mean']:>7.2f}%{100 * s['min']:>7.2f}%{100 * s['max']:>7.2f}%")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
