"""Model cascades: Streeter's greedy construction against brute force, evaluation by hand, and
bad input (k4p1/methods/multires/cascade.py)."""

import itertools
import json

import numpy as np
from absl.testing import absltest

from k4p1.methods.multires import cascade as cascade_lib
from k4p1.methods.multires.cascade import Cascade, Stage


def _probs(confidence, predicted, classes=3):
  """[N, classes] rows whose arg max is `predicted` with max probability `confidence`."""
  n = len(confidence)
  p = np.zeros((n, classes))
  for i, (c, k) in enumerate(zip(confidence, predicted)):
    p[i, :] = (1.0 - c) / (classes - 1)
    p[i, k] = c
  return p


def _brute_force(probabilities, labels, costs, tolerance, max_stages=3):
  """The cheapest cascade of up to `max_stages` stages over every model and candidate
  threshold that keeps accuracy >= the best single model's - tolerance (independent of the
  greedy code: it only uses `evaluate`)."""
  grid = {m: cascade_lib.candidate_thresholds(np.max(p, -1), 64)
          for m, p in probabilities.items()}
  stages = [Stage(m, float(t)) for m in probabilities for t in grid[m]]
  target = max(np.mean(np.argmax(p, -1) == labels) for p in probabilities.values()) - tolerance
  best = None
  for k in range(1, max_stages + 1):
    for seq in itertools.product(stages, repeat=k - 1):
      for last in probabilities:
        c = Cascade(tuple(seq) + (Stage(last, 0.0),))
        r = cascade_lib.evaluate(c, probabilities, labels, costs)
        if r["accuracy"] >= target - 1e-12 and (best is None or r["mean_cost"] < best[0] - 1e-12):
          best = (r["mean_cost"], c)
  return best


class GreedyCascadeTest(absltest.TestCase):

  def test_two_models_known_optimum(self):
    # The cheap model is right and sure on 70 examples, unsure (and wrong) on 30; the expensive
    # one is always right. Optimum: cheap at a threshold in (0.5, 0.9], then expensive:
    # cost 1 + 0.3 * 10 = 4.0 at 100% accuracy.
    labels = np.zeros(100, np.int64)
    cheap = _probs([0.9] * 70 + [0.5] * 30, [0] * 70 + [1] * 30)
    big = _probs([0.8] * 100, [0] * 100)
    probabilities, costs = {"cheap": cheap, "big": big}, {"cheap": 1.0, "big": 10.0}
    c = cascade_lib.greedy_cascade(probabilities, labels, costs)
    self.assertEqual([s.model for s in c.stages], ["cheap", "big"])
    self.assertGreater(c.stages[0].threshold, 0.5)
    self.assertLessEqual(c.stages[0].threshold, 0.9)
    r = cascade_lib.evaluate(c, probabilities, labels, costs)
    self.assertAlmostEqual(r["mean_cost"], 4.0)
    self.assertEqual(r["accuracy"], 1.0)
    self.assertEqual(r["exits"], [0.7, 0.3])
    self.assertAlmostEqual(_brute_force(probabilities, labels, costs, 0.0)[0], 4.0)

  def test_three_models_match_brute_force(self):
    rng = np.random.RandomState(0)
    n = 60
    labels = rng.randint(0, 3, n)
    # small: sure and right on the first 30; medium: sure and right on the first 45;
    # large: right everywhere, never sure. Optimum: small, medium, large.
    def model(right_until, sure):
      conf = np.where(np.arange(n) < right_until, sure, 0.4)
      pred = np.where(np.arange(n) < right_until, labels, (labels + 1) % 3)
      return _probs(conf, pred)
    probabilities = {"small": model(30, 0.95), "medium": model(45, 0.9),
                     "large": _probs([0.5] * n, labels)}
    costs = {"small": 1.0, "medium": 3.0, "large": 10.0}
    greedy = cascade_lib.greedy_cascade(probabilities, labels, costs)
    r = cascade_lib.evaluate(greedy, probabilities, labels, costs)
    best_cost, best = _brute_force(probabilities, labels, costs, 0.0)
    self.assertAlmostEqual(r["mean_cost"], best_cost)
    self.assertEqual([s.model for s in greedy.stages], ["small", "medium", "large"])
    self.assertEqual(r["accuracy"], 1.0)
    # by hand: 1 + 30/60 * 3 + 15/60 * 10
    self.assertAlmostEqual(r["mean_cost"], 1 + 0.5 * 3 + 0.25 * 10)

  def test_tolerance_trades_accuracy_for_cost(self):
    labels = np.zeros(100, np.int64)
    cheap = _probs([0.9] * 95 + [0.6] * 5, [0] * 95 + [1] * 5)  # 95% right, the rest unsure
    big = _probs([0.8] * 100, [0] * 100)
    probabilities, costs = {"cheap": cheap, "big": big}, {"cheap": 1.0, "big": 10.0}
    strict = cascade_lib.greedy_cascade(probabilities, labels, costs, tolerance=0.0)
    loose = cascade_lib.greedy_cascade(probabilities, labels, costs, tolerance=0.05)
    self.assertEqual(cascade_lib.evaluate(strict, probabilities, labels, costs)["accuracy"], 1.0)
    r = cascade_lib.evaluate(loose, probabilities, labels, costs)
    self.assertEqual([s.model for s in loose.stages], ["cheap"])   # cheap alone: 95%
    self.assertAlmostEqual(r["accuracy"], 0.95)
    self.assertAlmostEqual(r["mean_cost"], 1.0)

  def test_accuracy_never_below_reference_on_random_models(self):
    rng = np.random.RandomState(3)
    labels = rng.randint(0, 5, 400)
    probabilities = {}
    for m, skill in (("a", 0.4), ("b", 0.6), ("c", 0.8)):
      logits = rng.normal(size=(400, 5))
      logits[np.arange(400), labels] += skill * 4 * rng.uniform(size=400)
      e = np.exp(logits - logits.max(-1, keepdims=True))
      probabilities[m] = e / e.sum(-1, keepdims=True)
    costs = {"a": 1.0, "b": 2.0, "c": 4.0}
    best = max(np.mean(np.argmax(p, -1) == labels) for p in probabilities.values())
    for tol in (0.0, 0.01, 0.03):
      c = cascade_lib.greedy_cascade(probabilities, labels, costs, tolerance=tol)
      r = cascade_lib.evaluate(c, probabilities, labels, costs)
      self.assertGreaterEqual(r["accuracy"], best - tol - 1e-12)
      self.assertLessEqual(r["mean_cost"], 4.0 + 1e-9)
      self.assertAlmostEqual(sum(r["exits"]), 1.0)

  def test_run_cascade_by_hand(self):
    p1 = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.3, 0.7], [0.1, 0.9], [0.55, 0.45]])
    c = Cascade((Stage("a", 0.8), Stage("b", 0.0)))
    predicted, stage = cascade_lib.run_cascade(c, {"a": p1, "b": p2})
    np.testing.assert_array_equal(predicted, [0, 1, 1])
    np.testing.assert_array_equal(stage, [0, 1, 0])
    r = cascade_lib.evaluate(c, {"a": p1, "b": p2}, np.array([0, 1, 0]), {"a": 2, "b": 5})
    self.assertAlmostEqual(r["accuracy"], 2 / 3)
    self.assertAlmostEqual(r["mean_cost"], (2 + 7 + 2) / 3)

  def test_json_round_trip(self):
    c = Cascade((Stage("r96", 0.75), Stage("r160", 0.0)))
    self.assertEqual(Cascade.from_json(json.loads(json.dumps(c.to_json()))), c)


class BadInputTest(absltest.TestCase):

  def test_threshold_outside_unit_interval(self):
    for t in (-0.1, 1.5, float("nan")):
      with self.assertRaisesRegex(ValueError, r"threshold is a softmax confidence in \[0, 1\]"):
        Stage("a", t)

  def test_last_stage_must_decide_everything(self):
    with self.assertRaisesRegex(ValueError, "last stage must decide every example"):
      Cascade((Stage("a", 0.5),))
    with self.assertRaisesRegex(ValueError, "at least one stage"):
      Cascade(())

  def test_empty_validation_split(self):
    with self.assertRaisesRegex(ValueError, "split is empty"):
      cascade_lib.greedy_cascade({"a": np.zeros((0, 3))}, np.zeros(0, np.int64), {"a": 1.0})

  def test_missing_cost_and_bad_tolerance(self):
    p = {"a": _probs([0.9], [0])}
    with self.assertRaisesRegex(ValueError, "has no cost"):
      cascade_lib.greedy_cascade(p, np.zeros(1, np.int64), {})
    with self.assertRaisesRegex(ValueError, "tolerance"):
      cascade_lib.greedy_cascade(p, np.zeros(1, np.int64), {"a": 1.0}, tolerance=1.5)

  def test_stratified_split(self):
    labels = np.array([0, 1, 0, 1, 0, 1, 2, 2])
    first, second = cascade_lib.stratified_split(labels, 0.5)
    self.assertEqual(sorted(np.concatenate([first, second]).tolist()), list(range(8)))
    for c in (0, 1, 2):
      self.assertTrue((labels[first] == c).any() and (labels[second] == c).any())
    with self.assertRaisesRegex(ValueError, "too small"):
      cascade_lib.stratified_split(np.array([0]), 0.5)


if __name__ == "__main__":
  absltest.main()
