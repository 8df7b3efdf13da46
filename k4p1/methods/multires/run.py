"""What a multi-resolution run does after training: Streeter's greedy cascade over
`cascade.tasks`, written to WORKDIR/cascade.json and printed against its most accurate model.

Example:
  result = build_cascade(spec, trainer)       # what cascade.json holds
  print(format_cascade(result))
"""

from __future__ import annotations

import json
import os

from k4p1.methods.multires.cascade import Cascade

CASCADE_FILE = "cascade.json"
CANDIDATE_TOLERANCES = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.05)


def build_cascade(spec, trainer) -> dict:
  """Streeter's greedy cascade over `spec.cascade.tasks` (cascade.py).

  Built on the `validation` share of the eval split, measured on the rest; costs are each
  task model's multiply-adds at its resolution. Also builds the candidate cascades of
  CANDIDATE_TOLERANCES (the accuracy-vs-cost curve). Returns what cascade.json holds.
  """
  import numpy as np
  from k4p1.methods.multires import cascade as cascade_lib
  from k4p1.analysis.cost import multiply_adds
  c = spec.cascade
  models = trainer.models
  outputs, labels = {}, None
  for t in c.tasks:
    outputs[t], y = trainer.predict(t)
    if labels is not None and not np.array_equal(labels, y):
      raise ValueError(f"Cascade task {t} sees other eval labels than {c.tasks[0]}: a cascade "
                       f"needs its models evaluated on the same examples.")
    labels = y
  costs = {t: multiply_adds(models.tasks[t].model, models.tasks[t].input_spec.shape)["total"]
           for t in c.tasks}
  val, test = cascade_lib.stratified_split(labels, c.validation)
  split = {"validation": ({t: p[val] for t, p in outputs.items()}, labels[val]),
           "test": ({t: p[test] for t, p in outputs.items()}, labels[test])}

  def measured(cascade):
    return {name: cascade_lib.evaluate(cascade, p, y, costs) for name, (p, y) in split.items()}

  built = {tolerance: cascade_lib.greedy_cascade(*split["validation"], costs, tolerance,
                                                 thresholds=c.thresholds)
           for tolerance in sorted(set(CANDIDATE_TOLERANCES) | {c.tolerance})}
  chosen = built[c.tolerance]
  candidates = [{"tolerance": t, **k.to_json(), **measured(k)} for t, k in built.items()]
  singles = {name: cascade_lib.single_model_results(p, y, costs)
             for name, (p, y) in split.items()}
  best = min(c.tasks, key=lambda t: (-singles["validation"][t]["accuracy"], costs[t]))
  return {"format": "k4p1-cascade-v1", **chosen.to_json(),
          "input_sizes": {t: models.tasks[t].input_spec.size for t in c.tasks},
          "tolerance": c.tolerance, "reference": best, "multiply_adds": costs,
          "split": {"validation_examples": int(val.size), "test_examples": int(test.size),
                    "validation_share": c.validation},
          "cascade": measured(chosen), "single_models": singles, "candidates": candidates}


def format_cascade(result: dict) -> str:
  """The cascade against its most accurate model (the paper's appendix C comparison)."""
  ref = result["reference"]
  stages = " -> ".join(f"{s['model']}@{s['threshold']:.3f}" for s in result["stages"])
  lines = [f"Cascade (Streeter's greedy, tolerance {100 * result['tolerance']:.2f} points, built "
           f"on {result['split']['validation_examples']} validation examples): {stages}"]
  header = f"  {'':<26}{'accuracy':>10}{'multiply-adds':>16}{'cost':>9}"
  for name in ("validation", "test"):
    single = result["single_models"][name][ref]
    cascade = result["cascade"][name]
    lines += [f"  {name} ({cascade['examples']} examples)", header,
              f"  {'most accurate: ' + ref:<26}{100 * single['accuracy']:>9.2f}%"
              f"{single['mean_cost'] / 1e6:>15.1f}M{'1.000':>9}",
              f"  {'cascade':<26}{100 * cascade['accuracy']:>9.2f}%"
              f"{cascade['mean_cost'] / 1e6:>15.1f}M"
              f"{cascade['mean_cost'] / single['mean_cost']:>9.3f}",
              "  exits per stage: " + ", ".join(f"{100 * e:.1f}%" for e in cascade["exits"])]
  return "\n".join(lines)


def cascade_stages(path: str) -> list:
  """The stages of a cascade.json ([] when there is none)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(Cascade.from_json(json.load(f)).stages)
