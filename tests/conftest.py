import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LARGE_SKIP_REASON = "large test: run with --run_large (CI's slow tier)"


def pytest_addoption(parser):
  parser.addoption("--run_large", action="store_true", default=False,
                   help="Also run the tests marked `large` (CI's slow tier; see .ci/run).")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--run_large"):
    return
  skip = pytest.mark.skip(reason=LARGE_SKIP_REASON)
  for item in items:
    if item.get_closest_marker("large") is not None:
      item.add_marker(skip)
