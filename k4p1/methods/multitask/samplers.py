"""Which task a `sampled` joint step trains: registered sampler classes (multitask.sampler).

A sampler has TF Model Garden's `TaskSampler` shape: `task_cumulative_distribution(step)` is
the cumulative probability of each task at a step; `task(step)` draws the task of that step as
a pure function of (seed, step), so every process agrees and a resumed run continues the same
sequence. A new sampler is one registered class (here or in a plug-in module, k4p1.plugins):

  @SAMPLERS.register("smallest_first")
  class SmallestFirst(Sampler):
    def probabilities(self, step=1):
      p = 1.0 / self.sizes
      return p / p.sum()

Example:
  sampler = TaskSampler("proportional", {"cifar10": 50000, "fashion": 60000}, seed=0)
  sampler.task(step=7)   # the same task for the same step in every process and on resume
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from k4p1.registry import Registry

SAMPLERS = Registry("sampler", field="multitask.sampler")


class Sampler:
  """Draws each joint step's task from `probabilities(step)`.

  Args:
    sizes: {task: training examples}, in task order.
    seed: the draws' seed.
    temperature: a starting temperature (the annealed sampler's).
    total_steps: the joint steps of the run.
    workers: {task: workers assigned to it} (the workers sampler's).
  """

  def __init__(self, sizes: dict, seed: int = 0, temperature: float = 2.0,
               total_steps: int = 1, workers: Optional[dict] = None):
    self.tasks = list(sizes)
    self.sizes = np.array([float(sizes[t]) for t in self.tasks])
    self.seed, self.temperature, self.total_steps = seed, temperature, max(1, total_steps)
    self.workers = dict(workers or {})

  def probabilities(self, step: int = 1) -> np.ndarray:
    """Each task's probability at joint step `step` (1-based)."""
    raise NotImplementedError

  def task_cumulative_distribution(self, step: int = 1) -> np.ndarray:
    return np.cumsum(self.probabilities(step))

  def task(self, step: int) -> str:
    """The task of joint step `step` (1-based)."""
    u = np.random.RandomState([self.seed % (2 ** 31), step]).uniform()
    index = np.searchsorted(self.task_cumulative_distribution(step), u, side="right")
    return self.tasks[int(index.clip(0, len(self.tasks) - 1))]


@SAMPLERS.register("round_robin")
class RoundRobin(Sampler):
  """Every task in turn."""

  def probabilities(self, step: int = 1) -> np.ndarray:
    return np.full(len(self.tasks), 1.0 / len(self.tasks))

  def task(self, step: int) -> str:
    return self.tasks[(step - 1) % len(self.tasks)]


@SAMPLERS.register("proportional")
class Proportional(Sampler):
  """Tasks drawn in proportion to their training examples."""

  def probabilities(self, step: int = 1) -> np.ndarray:
    return self.sizes / self.sizes.sum()


@SAMPLERS.register("annealed")
class Annealed(Sampler):
  """Probabilities proportional to size ** (1 / T), T falling linearly from `temperature` to 1
  over the run (Model Garden's annealed sampler)."""

  def probabilities(self, step: int = 1) -> np.ndarray:
    t = self.temperature + (1.0 - self.temperature) * min(1.0, (step - 1) / self.total_steps)
    weights = self.sizes ** (1.0 / t)
    return weights / weights.sum()


@SAMPLERS.register("workers")
class Workers(Sampler):
  """A weighted round robin: each task gets steps in proportion to the workers assigned to it
  (multitask.workers; the paper's workers dedicated to tasks)."""

  def __init__(self, sizes: dict, **kwargs):
    super().__init__(sizes, **kwargs)
    # One cycle: every task as many times as it has workers.
    self.cycle = [t for t in self.tasks for _ in range(self.workers.get(t, 1))]

  def probabilities(self, step: int = 1) -> np.ndarray:
    return np.array([self.cycle.count(t) / len(self.cycle) for t in self.tasks])

  def task(self, step: int) -> str:
    return self.cycle[(step - 1) % len(self.cycle)]


def TaskSampler(kind: str, sizes: dict, seed: int = 0, temperature: float = 2.0,  # noqa: N802
                total_steps: int = 1, workers: Optional[dict] = None) -> Sampler:
  """The registered sampler `kind` over `sizes` (raises ConfigError for an unknown kind)."""
  cls = SAMPLERS.lookup(kind, "multitask.sampler")
  return cls(sizes, seed=seed, temperature=temperature, total_steps=total_steps,
             workers=workers)
