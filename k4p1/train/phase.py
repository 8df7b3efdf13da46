"""A phase: one stage of training, the seam between the trainer and the methods.

The trainer runs phases; it does not know which method made them. A task's default phase is
named after it and trains what its patch says; a method (k4p1.plugins.Method.phases) gives the
tasks it claims phases of its own: stages with their own variables, steps, start and finish
hooks, or a phase that trains several tasks at once with a loop body of its own (`run`).

Example:
  Phase("flowers", "flowers", steps=1000)                       # the default
  Phase("kws.policy", "kws", 300, variables=policy_variables, optimizer="adam")
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of training one task (or several at once).

  Attributes:
    name: unique in the run; names the step counter and optimizer in the checkpoint (a task's
      default phase is named after the task).
    task: the task it trains (with `tasks`: the first of them).
    steps: how many steps it runs.
    variables: optional (models) -> the variables it trains; default: what the task's spec
      trains (TaskModels.trainable_variables).
    lr: its initial learning rate (0: the task's, else the optimizer's).
    tasks: every task a phase that trains several at once trains; each also gets a step
      counter of its own, `<phase>__<task>` (the steps that trained it).
    flags: 'auto': with `variables`, exactly the layers owning them are trainable (every
      other layer, BN included, runs in inference mode); 'task': the task's own flags (its
      patch's BN layers use batch statistics) whatever `variables` says.
    start: optional (trainer, phase) -> None, run once when the phase begins (not on resume:
      what it changes is in the checkpoint), e.g. SWR binarizing its policy.
    finish: optional (trainer, phase) -> None, after the last step, before statistics are
      recomputed and the checkpoint written.
    step: optional (trainer, phase, [(optimizer, variables)]) -> (step_fn(iterator),
      read_extra() -> {name: value}): a step of its own (SWR's policy step); it must add to
      trainer.metrics and increment the phase's step counter, as make_train_step does.
    rate_groups: ((group, (models) -> variables, learning rate), ...): variables the phase
      trains with their own optimizer and rate (key `<phase>__<group>`).
    optimizer: a registered optimizer name for this phase ('' = optimizer.name), e.g. SWR's
      policy always trains with Adam, as its paper.
    optimizers: optional (trainer, phase) -> {checkpoint key: built optimizer}, instead of the
      trainer's own (one per variable group): for a phase with a loop body of its own.
    run: optional (trainer, phase) -> {task: training stats}: the phase's whole loop body
      instead of the trainer's single-task one (it drives trainer.loop).
  """
  name: str
  task: str
  steps: int
  variables: Optional[Callable] = None
  lr: float = 0.0
  tasks: tuple = ()
  flags: str = "auto"
  start: Optional[Callable] = None
  finish: Optional[Callable] = None
  step: Optional[Callable] = None
  rate_groups: tuple = ()
  optimizer: str = ""
  optimizers: Optional[Callable] = None
  run: Optional[Callable] = None

  def counter_names(self) -> list[str]:
    """The step counters the phase owns in the checkpoint (its own, then one per task)."""
    return [self.name] + [f"{self.name}__{t}" for t in self.tasks]

  def trains(self, task: str) -> bool:
    return task in self.tasks if self.tasks else self.task == task

  def counter_of(self, task: str) -> str:
    """The counter of the steps that trained `task`."""
    return f"{self.name}__{task}" if self.tasks else self.name
