"""The layout rules: the import graph follows the data flow (config at the bottom, train/
never imports export/, no circle), and the methods are plug-ins of a small core: the core
imports no method and names none, and methods never import each other (README "Layout").

Run alone: python -m pytest -q tests/layout_test.py
"""

import ast
import glob
import io
import os
import re
import tokenize

import tensorflow as tf

from k4p1.testing import REPO_ROOT


K4P1 = os.path.join(REPO_ROOT, "k4p1")
METHODS_DIR = os.path.join(K4P1, "methods")
# The methods' names, and words that belong to one method only (its config section, its
# signature kind): the core spells none of them in code.
METHOD_NAMES = sorted(d for d in os.listdir(METHODS_DIR)
                      if os.path.isfile(os.path.join(METHODS_DIR, d, "__init__.py")))
VOCABULARY = {"multitask": ("joint", "sampler"), "multires": ("cascade",)}
# Core files that still hold a method's config section (issue 23's next step moves each into
# its method's folder); the test fails if another file joins them or one of them is clean.
PENDING = {"k4p1/config.py", "train.py"}


def _python_files(folder):
  return sorted(glob.glob(os.path.join(folder, "**", "*.py"), recursive=True))


def _core_files():
  """Every k4p1 file outside methods/ (k4p1/testing.py is the tests' helper), and the
  binaries."""
  files = [f for f in _python_files(K4P1) if not f.startswith(METHODS_DIR + os.sep)
           and os.path.basename(f) != "testing.py"]
  return files + [os.path.join(REPO_ROOT, b) for b in ("train.py", "deploy.py")]


def _module_name(path):
  rel = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _top_level_imports(path, modules):
  """The k4p1 modules `path` imports when it is imported (not inside functions); `from
  package import module` imports that module (its package is already importing)."""
  found = set()
  for node in ast.parse(open(path).read()).body:
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("k4p1")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("k4p1"):
      submodules = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
      found |= submodules or {node.module}
  return found


def _code_names(path):
  """The identifiers of `path`'s code (comments, docstrings and other strings left out)."""
  with open(path) as f:
    return [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(f.read()).readline)
            if t.type == tokenize.NAME]


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
    for name in ("config.py", "config_files.py", "registry.py", "errors.py", "files.py"):
      imports = _k4p1_imports(os.path.join(REPO_ROOT, "k4p1", name))
      allowed = {"k4p1.errors", "k4p1.errors.ConfigError", "k4p1.registry",
                 "k4p1.registry.did_you_mean", "k4p1.registry.DeclaredRegistry",
                 "k4p1.errors.K4P1Error", "k4p1.plugins", "k4p1.config_files"}
      imports = {i for i in imports if not i.startswith(("k4p1.plugins.", "k4p1.config_files."))}
      self.assertEmpty(imports - allowed, f"k4p1/{name} imports {sorted(imports - allowed)}")

  def test_a_patch_kind_is_one_file(self):
    """Every module of k4p1/patches is imported by the package itself (no list to edit)."""
    from k4p1 import patches
    self.assertIn("bias", patches.PATCH_KINDS)
    init = open(os.path.join(REPO_ROOT, "k4p1", "patches", "__init__.py")).read()
    self.assertNotIn("k4p1.patches.bias", init)  # found by pkgutil, not named

  def test_every_method_folder_is_registered(self):
    from k4p1.plugins import METHODS
    self.assertEqual(sorted(METHODS.names()), METHOD_NAMES)
    self.assertGreaterEqual(len(METHOD_NAMES), 4)

  def test_no_import_circle(self):
    modules = {_module_name(f): f for f in _python_files(K4P1)}
    graph = {m: {i for i in _top_level_imports(f, modules) if i in modules and i != m}
             for m, f in modules.items()}
    state, circles = {}, []

    def visit(m, stack):
      state[m] = "open"
      for n in sorted(graph[m]):
        if state.get(n) == "open":
          circles.append(stack[stack.index(n):] + [n])
        elif n not in state:
          visit(n, stack + [n])
      state[m] = "done"

    for m in sorted(graph):
      if m not in state:
        visit(m, [m])
    self.assertEmpty(circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles))

  def test_core_never_imports_methods(self):
    for path in _core_files():
      bad = sorted(i for i in _k4p1_imports(path) if i.startswith("k4p1.methods"))
      self.assertEmpty(bad, f"{os.path.relpath(path, REPO_ROOT)} imports {bad}: reach a "
                            f"method through k4p1.plugins.METHODS")

  def test_core_names_no_method(self):
    words = METHOD_NAMES + [w for ws in VOCABULARY.values() for w in ws]
    pattern = re.compile("|".join(words), re.IGNORECASE)
    naming = {}
    for path in _core_files():
      lines = sorted({line for line, name in _code_names(path) if pattern.search(name)})
      if lines:
        naming[os.path.relpath(path, REPO_ROOT)] = lines
    self.assertEqual(set(naming) - PENDING, set(), f"core files naming a method: {naming}")
    self.assertEqual(PENDING - set(naming), set(), "a pending file is clean: drop it from "
                                                   "PENDING")

  def test_methods_never_import_each_other(self):
    for name in METHOD_NAMES:
      for path in _python_files(os.path.join(METHODS_DIR, name)):
        bad = sorted(i for i in _k4p1_imports(path) if i.startswith("k4p1.methods.")
                     and i.split(".")[2] != name)
        self.assertEmpty(bad, f"{os.path.relpath(path, REPO_ROOT)} imports {bad}")

  def test_core_files_stay_small(self):
    def lines(name):
      with open(os.path.join(K4P1, name)) as f:
        return len(f.read().splitlines())
    self.assertLessEqual(lines("train/trainer.py"), 450)
    self.assertLessEqual(lines("experiment.py"), 200)
    self.assertLess(lines("config.py"), 862)  # its size at b09ea64, before the methods moved


if __name__ == "__main__":
  tf.test.main()
