"""SWR (scalable weight reparametrization): a policy conditioned on a target cost picks which
layers of a pretrained network get a task-specific delta; zero extra inference cost.

  kind.py    the `swr` patch kind (SwrPatch), the policy network and its decisions
  train.py   the stages as trainer phases: super-net, policy (hard Gumbel-softmax), reparam
  report.py  what SWR chose, and the achieved ratio over target costs

A task with an `swr` patch is this method's: it trains in SWR's phases, not the default one.
"""

from k4p1 import patches
from k4p1.methods.swr import kind, report
from k4p1.plugins import METHODS, Method


def _claims(spec, task) -> bool:
  return "swr" in task.patch.kinds


def _phases(trainer, task: str, claimed: list) -> list:
  from k4p1.methods.swr.train import swr_phases
  steps = trainer.total_steps(task) if trainer.with_data else 0
  return swr_phases(trainer, task, patches.options(trainer.spec.task(task).patch, "swr"), steps)


def _format_summary(models, task, summary):
  return report.format_swr(summary, task)


METHODS.register("swr", Method(
    name="swr",
    description="SWR: a policy conditioned on a target cost picks the layers that get a "
                "task-specific delta (super-net, policy, reparametrization stages)",
    claims=_claims, phases=_phases, summary=report.swr_summary,
    format_summary=_format_summary, describe_task=report.format_swr_layers))

__all__ = ["kind", "report"]
