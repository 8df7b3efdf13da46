"""What a method declares, and where every registered entry comes from.

A *method* (TAPS, SWR, multi-task, multi-resolution with cascades, ...) is one folder under
k4p1/methods/ whose `__init__.py` registers a `Method` in METHODS: the tasks it claims, the
phases it trains them in, what it adds to reports, files and exports. The core (config,
assembly, model, trainer, steps, export, experiment, the binaries) reaches a method only
through METHODS and names none; methods never import each other.

Every registry (k4p1.registry.Registry) imports the plug-ins on its first read (`load`):
every package under k4p1/methods/, then the user's modules, named by `$K4P1_PLUGINS` or the
config field `plugins` (comma separated; a module name or a path to a .py file). A user's module
registers entries exactly as k4p1's own do (a backbone with @BACKBONES.register, a patch kind
with PATCH_KINDS.register, a method, a sampler, an export format), and config validation,
which runs before TensorFlow loads, reads the names those modules declare from their source.

Example (k4p1/methods/taps/__init__.py, shortened):
  METHODS.register("taps", Method(
      name="taps", description="TAPS: training picks which layers get a task-specific delta",
      summary=report.taps_summary, format_summary=report.format_trained))
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import sys
from typing import Callable, Optional

from k4p1.errors import ConfigError
from k4p1.registry import Registry

PLUGINS_ENV = "K4P1_PLUGINS"
_K4P1_DIR = os.path.dirname(os.path.abspath(__file__))
# The folders whose packages are plug-ins of the core (each subpackage is imported by `load`).
PLUGIN_DIRS = ("methods",)


@dataclasses.dataclass(frozen=True)
class Method:
  """One method family, declared once (in k4p1/methods/<name>/__init__.py).

  Every hook is optional; the core calls the ones a method has.

  Attributes:
    name: the registry key; also the key of its summary in a metrics.json task row.
    description: one line for --help and the README.
    claims: (spec, task spec) -> bool: the method trains this task in phases of its own.
    phases: (trainer, task, claimed) -> [Phase] for one claimed task (`claimed`: every task
      the method claims, in task order); a method training several tasks at once returns its
      phase for the first of them and [] for the rest.
    trains_shared: (spec) -> bool: the run changes the shared weights (the experiment then
      writes base.weights.h5, which deploy.py rebuilds from).
    summary: (models, task) -> dict or None: what metrics.json records for the task.
    format_summary: (models, task, summary) -> text printed after the results table.
    describe_task: (models, task) -> text (or '') printed by --mode=params for each task.
    describe_run: (spec, models) -> text (or '') printed by --mode=params once.
    after_training: (spec, trainer, workdir) -> {key: value}: run-level work after the
      evaluation (the cascade); the values go into metrics.json; it prints what it made.
    signatures: (spec, workdir) -> {signature kind: items}: signatures the run's SavedModel
      gains (k4p1.export.saved_model.SIGNATURE_KINDS).
    signature_names: (spec) -> [text]: how those signatures are listed in messages.
    read_signature_file: (signature kind, path) -> items, or None when the kind is not the
      method's: a file the method wrote, read back for deploy.py's --signature_files.
  """
  name: str
  description: str
  claims: Optional[Callable] = None
  phases: Optional[Callable] = None
  trains_shared: Optional[Callable] = None
  summary: Optional[Callable] = None
  format_summary: Optional[Callable] = None
  describe_task: Optional[Callable] = None
  describe_run: Optional[Callable] = None
  after_training: Optional[Callable] = None
  signatures: Optional[Callable] = None
  signature_names: Optional[Callable] = None
  read_signature_file: Optional[Callable] = None


METHODS = Registry("method")


def plugin_packages() -> list[str]:
  """k4p1's own plug-in packages (k4p1.methods.taps, ...), found on disk, not listed."""
  names = []
  for folder in PLUGIN_DIRS:
    path = os.path.join(_K4P1_DIR, folder)
    names += [f"k4p1.{folder}.{m.name}" for m in pkgutil.iter_modules([path]) if m.ispkg]
  return sorted(names)


def user_plugins(configured: str = "") -> list[str]:
  """The user's plug-in modules: `$K4P1_PLUGINS`, then the config's `plugins`, in order."""
  names = []
  for text in (os.environ.get(PLUGINS_ENV, ""), configured):
    names += [x.strip() for x in str(text or "").split(",") if x.strip()]
  return list(dict.fromkeys(names))


def plugin_file(name: str) -> str:
  """The source file of plug-in `name` (a .py path or a module name), found without running
  it (a module's parent packages are imported).

  Raises:
    ConfigError: no such file or module.
  """
  if name.endswith(".py"):
    if not os.path.isfile(name):
      raise ConfigError(f"Plug-in file not found: {name!r} (plugins / ${PLUGINS_ENV}). "
                        f"Relative paths are read from {os.getcwd()}.")
    return os.path.abspath(name)
  try:
    found = importlib.util.find_spec(name)
  except (ImportError, ValueError):
    found = None
  if found is None or not found.origin or not found.origin.endswith(".py"):
    raise ConfigError(f"Plug-in module {name!r} not found (plugins / ${PLUGINS_ENV}): give an "
                      f"importable module name or a path to a .py file.")
  return found.origin


_loaded_user: set = set()


def _import(name: str):
  if not name.endswith(".py"):
    return importlib.import_module(name)
  path = os.path.abspath(name)
  module_name = "k4p1_plugin_" + os.path.splitext(os.path.basename(path))[0]
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


def load(configured: str = ""):
  """Imports k4p1's plug-in packages and the user's plug-ins (each once).

  Raises:
    ConfigError: a user plug-in is missing.
  """
  importlib.import_module("k4p1.patches")  # the patch kinds of the core
  for name in plugin_packages():
    importlib.import_module(name)
  for name in user_plugins(configured):
    key = os.path.abspath(name) if name.endswith(".py") else name
    if key not in _loaded_user:
      plugin_file(name)  # a clear error for a missing one
      _import(name)
      _loaded_user.add(key)
