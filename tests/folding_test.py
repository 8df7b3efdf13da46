"""Section 4: the preimage of [0.2, 0.4] under the folding network, counted exactly."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from k4p1.analysis import folding

LO, HI = 0.2, 0.4
GRID = np.linspace(-2.0, 3.0, 2_000_001)


def _grid_components(b0):
  """Independent count on a dense grid with the plain NumPy network."""
  b = folding.figure2_biases(b0)
  y = folding.q_numpy(folding.q_numpy(GRID, b[0]), b[1])
  inside = (y >= LO) & (y <= HI)
  return int(inside[0]) + int(np.sum(inside[1:] & ~inside[:-1]))


class FoldingTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      # The paper's Figure 2 panels ...
      (0.0, 4), (-0.075, 3), (-0.125, 2), (-0.425, 1),
      # ... and its stated ranges: 4 above -0.05, 3 in (-0.1, -0.05], 2 in (-0.4, -0.1],
      # 1 in [-0.45, -0.4], none below -0.45.
      (-0.04, 4), (-0.06, 3), (-0.09, 3), (-0.2, 2), (-0.35, 2), (-0.41, 1), (-0.44, 1),
      (-0.46, 0), (-0.6, 0))
  def test_component_counts(self, b0, expected):
    biases = folding.figure2_biases(b0)
    self.assertEqual(folding.count_components(biases, LO, HI), expected)
    self.assertEqual(_grid_components(b0), expected)

  @parameterized.parameters(0.0, -0.075, -0.125, -0.425)
  def test_interval_endpoints_are_exact(self, b0):
    biases = folding.figure2_biases(b0)
    f = folding.folding_network(biases)
    numpy_f = lambda x: folding.q_numpy(folding.q_numpy(x, biases[0]), biases[1])
    # The piecewise-linear form equals the network everywhere.
    self.assertAllClose(f(GRID), numpy_f(GRID), atol=1e-12)
    intervals = folding.preimage_intervals(biases, LO, HI)
    for a, b in intervals:
      for end in (a, b):  # each endpoint lies exactly on the band's edge
        self.assertLess(min(abs(numpy_f(end) - LO), abs(numpy_f(end) - HI)), 1e-12)
      self.assertBetween(float(numpy_f((a + b) / 2)), LO, HI)
    for (_, b), (a, _) in zip(intervals[:-1], intervals[1:]):  # gaps really leave the band
      mid = numpy_f(np.linspace(b, a, 101)[1:-1])
      self.assertTrue(np.any((mid < LO) | (mid > HI)))

  def test_deeper_network_folds_more(self):
    zero = (0.0, 0.0, 0.0)
    self.assertEqual(folding.count_components([zero] * 3, LO, HI), 8)  # 2^k with k = 3


if __name__ == "__main__":
  tf.test.main()
