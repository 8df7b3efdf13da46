"""The cluster a process belongs to, read from TF_CONFIG without importing TensorFlow.

`check(strategy)` refuses a cluster the strategy cannot run on before anything starts (e.g.
`parameter_server` without parameter-server tasks); `task()` says which task this process is.

Example:
  TF_CONFIG='{"cluster": {"chief": [...], "worker": [...], "ps": [...]},
              "task": {"type": "worker", "index": 0}}'
  task()   # -> ("worker", 0)
"""

from __future__ import annotations

import json
import os

from k4p1.errors import ConfigError

# strategy -> jobs its cluster must have (and a launcher command that makes one)
NEEDS = {
    "parameter_server": (("chief", "worker", "ps"), "python -m k4p1.launch --workers=2 --ps=1"),
    "multi_worker_mirrored": (("worker",), "python -m k4p1.launch --workers=1 --ps=0"),
}


def tf_config() -> dict:
  """TF_CONFIG as a dict ({} when unset)."""
  text = os.environ.get("TF_CONFIG", "")
  if not text:
    return {}
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"TF_CONFIG is not valid JSON ({e}). Received: {text[:200]!r}") from None


def task() -> tuple[str, int] | None:
  """(job, index) of this process in TF_CONFIG, or None outside a cluster."""
  t = tf_config().get("task")
  return (t["type"], int(t.get("index", 0))) if t else None


def num_workers() -> int:
  return len(tf_config().get("cluster", {}).get("worker", []))


def check(strategy: str):
  """Raises ConfigError if TF_CONFIG cannot serve `strategy` (or names this task wrongly)."""
  if strategy not in NEEDS:
    return
  jobs, launcher = NEEDS[strategy]
  config = tf_config()
  cluster = config.get("cluster", {})
  missing = [j for j in jobs if not cluster.get(j)]
  if missing:
    raise ConfigError(
        f"runtime.strategy={strategy!r} needs a cluster with {', '.join(jobs)} tasks in "
        f"TF_CONFIG; it has {sorted(cluster) or 'none'} (missing: {', '.join(missing)}). Start "
        f"a local one with `{launcher} -- python train.py ...`, or set TF_CONFIG on each task "
        f"of a real cluster.")
  t = config.get("task", {})
  if t.get("type") not in cluster or not 0 <= int(t.get("index", -1)) < len(cluster[t["type"]]):
    raise ConfigError(f"TF_CONFIG's task {t} is not a task of its cluster {sorted(cluster)}.")


def check_workers(strategy: str, workers: tuple):
  """Under a parameter-server cluster, `multitask.workers` must account for every worker."""
  if strategy != "parameter_server" or not workers:
    return
  assigned, present = sum(n for _, n in workers), num_workers()
  if assigned != present:
    raise ConfigError(f"multitask.workers assigns {assigned} workers "
                      f"({', '.join(f'{t}:{n}' for t, n in workers)}) but the cluster has "
                      f"{present}: make them equal (k4p1.launch --workers={assigned}).")
