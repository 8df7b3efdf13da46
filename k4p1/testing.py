"""Helpers for tests: tiny backbones and configs that run in seconds on a CPU.

Example:
  backbone = tiny_mobilenet_v2()
  models = TaskModels(backbone)
  models.add(tiny_task("a", "scale_bias,last_layer"), num_classes=3)
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from k4p1 import patches
from k4p1.backbones import build_backbone
from k4p1.config import (BackboneSpec, DatasetSpec, TaskSpec, base_config, dataset_config,
                         task_config)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_CONFIG = os.path.join(REPO_ROOT, "configs", "digits.py") + ":smoke"
MULTIRES_SMOKE_CONFIG = os.path.join(REPO_ROOT, "configs", "multires.py") + ":smoke"


def run_binary(script: str, *args, timeout: float = 900) -> subprocess.CompletedProcess:
  """`python SCRIPT ARGS...` from the repository root (TensorFlow's C++ logs quiet), captured.

  Example:
    out = run_binary("train.py", "--config=configs/digits.py:smoke", "--workdir=/tmp/w")
    assert out.returncode == 0, out.stderr
  """
  return subprocess.run([sys.executable, os.path.join(REPO_ROOT, script), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def tiny_mobilenet_v2(alpha=0.35, size=32, seed=0):
  return build_backbone(BackboneSpec("mobilenet_v2", alpha=alpha, input_size=size,
                                     weights="none", seed=seed))


def calibrated_mobilenet_v2(alpha=0.35, size=32, seed=0, batches=4):
  """A random MobileNetV2 whose BN statistics match its activations (like a trained base).

  Random weights with the initial statistics (mean 0, variance 1) make activations vanish in
  inference mode (~1e-12 at the logits), which hides every gradient below float32 resolution.
  """
  import keras
  from k4p1.model import recompute_batch_statistics
  backbone = tiny_mobilenet_v2(alpha, size, seed)
  bns = [l for l in backbone.model.layers if isinstance(l, keras.layers.BatchNormalization)]
  batches = [(random_images(16, size, seed=i) / 127.5 - 1, None) for i in range(batches)]
  recompute_batch_statistics(backbone.model, bns, batches)
  return backbone


def tiny_task(name, patch, statistics="batch", train_base=False) -> TaskSpec:
  return TaskSpec(name=name, dataset=DatasetSpec(source="digits"),
                  patch=patches.parse_patch(patch, statistics, train_base))


def random_images(n=4, size=32, seed=0) -> np.ndarray:
  return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def tiny_config(source="digits", name="", steps=4, patch="scale_bias,last_layer",
                classes=("0,1,2", "3,4,5")):
  """Two tasks on a MobileNetV2 0.35 @32: a base-training task, then a patched one."""
  c = base_config()
  c.backbone.update(name="mobilenet_v2", alpha=0.35, input_size=32, weights="none")
  c.train.update(batch_size=8, eval_batch_size=32, checkpoint_every=2, progress=False,
                 bn_recompute_batches=4)
  c.optimizer.lr = 0.01
  ds_a = dataset_config(source=source, name=name, classes=classes[0], augment="none",
                        train_examples=64, eval_examples=32)
  ds_b = dataset_config(source=source, name=name, classes=classes[1], augment="flip",
                        train_examples=64, eval_examples=32)
  c.tasks.base = task_config(dataset=ds_a, patch="last_layer", train_base=True, steps=steps)
  c.tasks.patched = task_config(dataset=ds_b, patch=patch, steps=steps)
  c.task_order = "base,patched"
  return c


class SmokeRunError(RuntimeError):
  """`train.py --config=configs/digits.py:smoke` failed (the message holds its stderr tail)."""


@functools.lru_cache(maxsize=None)
def _smoke_run(config: str) -> tuple[str, str, str]:
  """(workdir, stdout, error): the run of `config`, done once per process; error "" = success."""
  root = tempfile.mkdtemp(prefix="k4p1_smoke_")
  atexit.register(shutil.rmtree, root, True)
  workdir = os.path.join(root, "run")
  try:
    out = run_binary("train.py", f"--config={config}", f"--workdir={workdir}")
  except subprocess.TimeoutExpired as e:
    return workdir, "", f"timed out after {e.timeout} s"
  if out.returncode != 0:
    return workdir, out.stdout, f"exit code {out.returncode}:\n{out.stderr[-3000:]}"
  return workdir, out.stdout, ""


def smoke_run_workdir(config: str = SMOKE_CONFIG) -> str:
  """A workdir of `train.py --config=CONFIG` (default configs/digits.py:smoke), trained once
  per process; MULTIRES_SMOKE_CONFIG gives a multi-resolution run with a cascade.

  Shared by every test that calls it (deploy, TFLite, serving, benchmark smokes): read it, never
  write to it; a test that changes a workdir copies this one first (shutil.copytree). The folder
  is removed when the interpreter exits. A failed run is cached too (one attempt per process)
  and raises SmokeRunError in every caller. What it printed: `smoke_run_stdout(config)`.
  """
  workdir, _, error = _smoke_run(config)
  if error:
    raise SmokeRunError(f"train.py --config={config} failed: {error}")
  return workdir


def smoke_run_stdout(config: str = SMOKE_CONFIG) -> str:
  """What the (cached) smoke run of `config` printed on stdout."""
  smoke_run_workdir(config)
  return _smoke_run(config)[1]


def process_alive(pid: int) -> bool:
  """Whether process `pid` exists and is not a zombie (read from /proc: Linux)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(")")[-1].split()[0] != "Z"
  except (FileNotFoundError, ProcessLookupError):
    return False
