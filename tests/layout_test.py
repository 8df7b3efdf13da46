"""The import graph follows the data flow: config at the bottom, train/ never imports export/."""

import ast
import glob
import os

import tensorflow as tf

from k4p1.testing import REPO_ROOT


def _k4p1_imports(path):
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("k4p1")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("k4p1"):
      found.add(node.module)
      found |= {f"{node.module}.{a.name}" for a in node.names}
  return found


class LayoutTest(tf.test.TestCase):

  def test_train_never_imports_export(self):
    files = glob.glob(os.path.join(REPO_ROOT, "k4p1", "train", "*.py"))
    self.assertNotEmpty(files)
    for path in files:
      bad = sorted(i for i in _k4p1_imports(path)
                   if i.startswith(("k4p1.export", "k4p1.analysis")) or i == "k4p1.experiment")
      self.assertEmpty(bad, f"{os.path.relpath(path, REPO_ROOT)} imports {bad}")

  def test_config_is_at_the_bottom(self):
    for name in ("config.py", "registry.py", "errors.py", "files.py"):
      imports = _k4p1_imports(os.path.join(REPO_ROOT, "k4p1", name))
      allowed = {"k4p1.errors", "k4p1.errors.ConfigError", "k4p1.registry",
                 "k4p1.registry.did_you_mean", "k4p1.registry.DeclaredRegistry",
                 "k4p1.errors.K4P1Error"}
      self.assertEmpty(imports - allowed, f"k4p1/{name} imports {sorted(imports - allowed)}")

  def test_a_patch_kind_is_one_file(self):
    """Every module of k4p1/patches is imported by the package itself (no list to edit)."""
    from k4p1 import patches
    self.assertIn("bias", patches.PATCH_KINDS)
    init = open(os.path.join(REPO_ROOT, "k4p1", "patches", "__init__.py")).read()
    self.assertNotIn("k4p1.patches.bias", init)  # found by pkgutil, not named


if __name__ == "__main__":
  tf.test.main()
