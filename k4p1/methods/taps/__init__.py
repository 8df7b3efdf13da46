"""TAPS (Wallingford et al., CVPR 2022): training picks which layers become task-specific.

  kind.py    the `taps` patch kind: a gated delta per layer, w + I(s >= tau) dw, and its L1
  report.py  which layers TAPS made task-specific, their cost, the layer map figure

TAPS trains in the ordinary phases (its L1 term and score rate come through its patch kind),
so its method adds only what reports say. It needs no method of its own to train jointly:
`multitask.tasks` with taps patches is joint TAPS (the paper's section 3.3).
"""

from k4p1.methods.taps import kind as _kind  # noqa: F401  (registers the `taps` patch kind)
from k4p1.methods.taps import report
from k4p1.plugins import METHODS, Method


def _format_trained(models, task, summary):
  return report.format_taps_layers(models, task)


def _describe_task(models, task):
  return report.format_taps_layers(models, task, trained=False)


METHODS.register("taps", Method(
    name="taps",
    description="TAPS: a gated weight delta per layer; an L1 penalty on the gates' scores "
                "picks which layers become task-specific",
    summary=report.taps_summary, format_summary=_format_trained, describe_task=_describe_task))
