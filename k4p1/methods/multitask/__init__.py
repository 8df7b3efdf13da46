"""Joint multi-task training (the paper's section 5.3): K tasks at once on one shared backbone.

  joint.py     the joint phase: summed or sampled steps, learning-rate balancing, its loop body
  samplers.py  which task a sampled step trains: registered sampler classes (SAMPLERS)

The tasks named in `multitask.tasks` are this method's: one phase, `joint`, trains them
together; the shared weights learn from every task, each task's own parameters only from its
loss. Under the parameter-server strategy the sampled steps are the paper's asynchronous
workers per task.
"""

from k4p1.methods.multitask import samplers  # noqa: F401  (registers the samplers)
from k4p1.plugins import METHODS, Method


def _claims(spec, task) -> bool:
  return task.name in spec.multitask.tasks


def _phases(trainer, task: str, claimed: list) -> list:
  from k4p1.methods.multitask.joint import joint_phase
  return [joint_phase(trainer, claimed)] if task == claimed[0] else []


def _trains_shared(spec) -> bool:
  return bool(spec.multitask.tasks)


def _describe_run(spec, models) -> str:
  if not spec.multitask.tasks:
    return ""
  learnable = sum(int(v.shape.num_elements()) for v in models.shared_learnable_variables())
  return (f"Trained jointly ({spec.multitask.step} steps): {', '.join(spec.multitask.tasks)}; "
          f"the shared weights' {learnable:,} learnable parameters learn from all of them, each "
          f"task's own parameters only from its loss.")


METHODS.register("multitask", Method(
    name="multitask",
    description="joint multi-task training: tasks at once on one shared backbone, summed or "
                "sampled steps (workers per task on parameter servers)",
    claims=_claims, phases=_phases, trains_shared=_trains_shared, describe_run=_describe_run))
