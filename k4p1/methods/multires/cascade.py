"""Model cascades (Streeter 2018, "Approximation Algorithms for Cascading Prediction Models"),
the paper's appendix C: several models of one task at different costs (one network at several
resolutions), run cheapest-first; an example leaves at the first stage confident enough.

A cascade is a list of stages (model, threshold): an example takes the first stage whose
confidence (the model's largest softmax probability) reaches the stage's threshold; the last
stage's threshold is 0, so it decides everything left. An example pays for every distinct
model run up to the stage that decides it.

`greedy_cascade` is Streeter's greedy construction on a validation split: starting from no
stage, it repeatedly appends the admissible stage with the most examples decided per unit of
added cost (a stage's cost is its model's, given the models already run: a model already run
costs nothing), until every example is decided. A stage is admissible while the cascade stays
at least as accurate as the reference model (the most accurate one, by default) minus
`tolerance` on the validation split: the accuracy it loses (or gains) against the reference on
the examples it decides is drawn from (or added to) a budget of tolerance x N correct answers,
and the reference itself at threshold 0 is always admissible, so the construction always ends.
Everything here is NumPy on precomputed predictions; signature.py serves a cascade.

Example:
  cascade = greedy_cascade(probabilities, labels, costs, tolerance=0.0)
  evaluate(cascade, test_probabilities, test_labels, costs)   # accuracy, mean cost, exits
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Stage:
  """Run `model`; decide the examples whose confidence is >= `threshold`."""
  model: str
  threshold: float

  def __post_init__(self):
    if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0):
      raise ValueError(f"Stage {self.model!r}: a threshold is a softmax confidence in [0, 1]. "
                       f"Received: {self.threshold!r}")


@dataclasses.dataclass(frozen=True)
class Cascade:
  """Stages in order; the last has threshold 0 (it decides every example left)."""
  stages: tuple

  def __post_init__(self):
    if not self.stages:
      raise ValueError("A cascade needs at least one stage.")
    if self.stages[-1].threshold != 0.0:
      raise ValueError(f"A cascade's last stage must decide every example left (threshold 0); "
                       f"{self.stages[-1].model!r} has {self.stages[-1].threshold}.")

  @property
  def models(self) -> list[str]:
    """Distinct models in the order they first run."""
    return list(dict.fromkeys(s.model for s in self.stages))

  def to_json(self) -> dict:
    return {"stages": [{"model": s.model, "threshold": float(s.threshold)} for s in self.stages]}

  @classmethod
  def from_json(cls, obj: dict) -> "Cascade":
    try:
      return cls(tuple(Stage(str(s["model"]), float(s["threshold"])) for s in obj["stages"]))
    except (KeyError, TypeError) as e:
      raise ValueError(f"Not a cascade definition (want {{'stages': [{{'model', 'threshold'}}, "
                       f"...]}}): {json.dumps(obj)[:200]}") from e


def _check(probabilities: dict, labels: np.ndarray, costs: dict):
  labels = np.asarray(labels)
  if labels.size == 0:
    raise ValueError("The split is empty: a cascade is built and measured on labelled examples "
                     "(give the validation split some examples).")
  for m, p in probabilities.items():
    if m not in costs:
      raise ValueError(f"Model {m!r} has no cost. Costs: {sorted(costs)}")
    if np.shape(p)[0] != labels.shape[0]:
      raise ValueError(f"Model {m!r} has {np.shape(p)[0]} predictions for {labels.shape[0]} "
                       f"labels.")
  return labels


def _confidence_and_correct(probabilities: dict, labels: np.ndarray):
  conf = {m: np.max(p, axis=-1) for m, p in probabilities.items()}
  correct = {m: np.argmax(p, axis=-1) == labels for m, p in probabilities.items()}
  return conf, correct


def candidate_thresholds(confidence: np.ndarray, count: int) -> np.ndarray:
  """`count` thresholds at the confidences' quantiles (distinct, descending), plus 0."""
  qs = np.quantile(confidence, np.linspace(0.0, 1.0, max(1, count)))
  return np.unique(np.concatenate([qs, [0.0]]))[::-1]


def greedy_cascade(probabilities: dict, labels, costs: dict, tolerance: float = 0.0,
                   reference: str | None = None, thresholds: int = 64) -> Cascade:
  """Streeter's greedy cascade (see the module docstring) on a validation split.

  Args:
    probabilities: {model: [N, classes] softmax outputs on the validation split}.
    labels: [N] true classes.
    costs: {model: cost of running it on one example} (e.g. multiply-adds).
    tolerance: accuracy (a fraction) the cascade may lose against `reference`.
    reference: the accuracy to keep; default the most accurate model (ties: the cheapest).
    thresholds: candidate thresholds per model (quantiles of its validation confidences).

  Raises:
    ValueError: an empty split, a model without a cost, tolerance outside [0, 1).
  """
  labels = _check(probabilities, labels, costs)
  if not 0.0 <= tolerance < 1.0:
    raise ValueError(f"tolerance is an accuracy in [0, 1). Received: {tolerance}")
  conf, correct = _confidence_and_correct(probabilities, labels)
  if reference is None:
    reference = min(probabilities, key=lambda m: (-int(correct[m].sum()), costs[m], m))
  n = labels.shape[0]
  budget = tolerance * n
  grid = {m: candidate_thresholds(conf[m], thresholds) for m in probabilities}
  undecided = np.ones(n, bool)
  run, stages = set(), []
  while undecided.any():
    best, best_key = None, None
    for m in sorted(probabilities):
      added = 0.0 if m in run else float(costs[m])
      for t in grid[m]:
        decide = undecided & (conf[m] >= t)
        count = int(decide.sum())
        if not count:
          continue
        loss = int(correct[reference][decide].sum()) - int(correct[m][decide].sum())
        if loss > budget + 1e-9:
          continue
        # Most examples decided per unit of added cost; free stages first; then more decided,
        # then cheaper, then the name (deterministic).
        ratio = math.inf if added == 0 else count / added
        key = (ratio, count, -added, m == reference, -t)
        if best_key is None or key > best_key:
          best, best_key = (m, float(t), decide, loss), key
    m, t, decide, loss = best  # the reference at 0 is always admissible: never None
    if undecided.sum() == decide.sum():
      t = 0.0  # it decides everything left: the final stage
    stages.append(Stage(m, t))
    run.add(m)
    budget -= loss
    undecided &= ~decide
  return Cascade(tuple(stages))


def run_cascade(cascade: Cascade, probabilities: dict):
  """(predicted classes [N], deciding stage index [N]) of `cascade` on precomputed outputs."""
  first = next(iter(probabilities.values()))
  n = np.shape(first)[0]
  predicted = np.full(n, -1, np.int64)
  stage_of = np.full(n, -1, np.int64)
  undecided = np.ones(n, bool)
  for i, stage in enumerate(cascade.stages):
    p = probabilities[stage.model]
    decide = undecided & (np.max(p, axis=-1) >= stage.threshold)
    predicted[decide] = np.argmax(p[decide], axis=-1)
    stage_of[decide] = i
    undecided &= ~decide
  return predicted, stage_of


def evaluate(cascade: Cascade, probabilities: dict, labels, costs: dict) -> dict:
  """Accuracy, mean cost per example and where examples exit, on one split.

  Returns {"accuracy", "mean_cost", "exits": [share decided at each stage], "examples"}.
  """
  labels = _check(probabilities, labels, costs)
  predicted, stage_of = run_cascade(cascade, probabilities)
  # An example deciding at stage i ran the distinct models of stages 0..i.
  per_stage, seen, total = [], set(), 0.0
  for s in cascade.stages:
    if s.model not in seen:
      seen.add(s.model)
      total += float(costs[s.model])
    per_stage.append(total)
  cost = np.asarray(per_stage)[stage_of]
  return {"accuracy": float(np.mean(predicted == labels)),
          "mean_cost": float(np.mean(cost)),
          "exits": [float(np.mean(stage_of == i)) for i in range(len(cascade.stages))],
          "examples": int(labels.shape[0])}


def single_model_results(probabilities: dict, labels, costs: dict) -> dict:
  """{model: {"accuracy", "mean_cost"}}: each model alone."""
  labels = _check(probabilities, labels, costs)
  return {m: {"accuracy": float(np.mean(np.argmax(p, -1) == labels)),
              "mean_cost": float(costs[m])} for m, p in probabilities.items()}


def stratified_split(labels, share: float) -> tuple[np.ndarray, np.ndarray]:
  """(first, second) index arrays: the first `share` of each class's examples (in order) and
  the rest. Deterministic; every class with >= 2 examples lands in both."""
  labels = np.asarray(labels)
  if not 0.0 < share < 1.0:
    raise ValueError(f"share must be in (0, 1). Received: {share}")
  first = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = min(len(idx) - 1, max(1, int(round(share * len(idx))))) if len(idx) > 1 else len(idx)
    first.extend(idx[:k].tolist())
  first = np.sort(np.asarray(first, np.int64))
  second = np.setdiff1d(np.arange(labels.shape[0]), first)
  if first.size == 0 or second.size == 0:
    raise ValueError(f"Splitting {labels.shape[0]} examples at {share} leaves one side empty: "
                     f"the eval split is too small to build and measure a cascade.")
  return first, second
