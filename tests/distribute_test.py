"""The custom loop gives the same training result under the default and a 2-replica strategy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts",
                      "strategy_equivalence.py")


def _train(strategy, patch):
  out = subprocess.run([sys.executable, SCRIPT, strategy, patch], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  if out.returncode != 0:
    raise AssertionError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


class StrategyEquivalenceTest(tf.test.TestCase):
  """Each case trains twice in subprocesses (~30 s): one patch in the fast tier, one large."""

  def test_mirrored_over_two_cpus_equals_default_scale_bias(self):
    self._check("scale_bias,last_layer")

  @pytest.mark.large
  def test_mirrored_over_two_cpus_equals_default_depthwise(self):
    self._check("depthwise,last_layer")

  def _check(self, patch):
    default = _train("default", patch)
    mirrored = _train("mirrored", patch)
    self.assertEqual((default["replicas"], mirrored["replicas"]), (1, 2))
    self.assertGreater(default["moved"], 1e-3)  # training really changed the patch
    # Cross-replica sums add in another order: allow 1% of the largest update, which still
    # catches a wrongly scaled loss (a factor of 2 moves values by ~100% of the update).
    for a, b in zip(default["values"], mirrored["values"]):
      np.testing.assert_allclose(a, b, atol=0.01 * default["moved"], rtol=0)


if __name__ == "__main__":
  tf.test.main()
