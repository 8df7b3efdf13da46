"""One small register/lookup for everything chosen by name in a config.

Backbones, data sources, patch kinds, methods, samplers, strategies, optimizers, export formats
and signature kinds each have one `Registry`. A module registers its entries when it is
imported; the first read of any registry imports every plug-in first (k4p1.plugins.load: k4p1's
own method folders and the user's modules), so an entry registered outside the registry's own
package is found too. `lookup` fails with a `ConfigError` that lists what is known and suggests
the closest name. Registering a name twice is a programming error and raises at import time.

Example:
  BACKBONES = Registry("backbone", field="backbone.name")

  @BACKBONES.register("mobilenet_v2")
  def build_mobilenet_v2(spec): ...

  BACKBONES.lookup("mobilenet_v3")   # ConfigError: Unknown backbone 'mobilenet_v3'. Did you
                                     # mean 'mobilenet_v2'? Known: ...
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib
import os
from typing import Any, Callable, Iterator

from k4p1.errors import ConfigError


def did_you_mean(value: str, choices) -> str:
  """' Did you mean 'x'?' for the closest choice, or ''."""
  close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
  return f" Did you mean '{close[0]}'?" if close else ""


class Registry:
  """Named entries of one kind (e.g. backbone builders), registered once each.

  Args:
    kind: what an entry is, for messages ('backbone', 'patch kind', ...).
    field: the config field that names an entry, for messages ('backbone.name').
  """

  def __init__(self, kind: str, field: str = ""):
    self.kind = kind
    self.field = field
    self._entries: dict[str, Any] = {}

  def _load_plugins(self):
    """Imports every plug-in once (k4p1.plugins.load), before the first read."""
    global _plugins_loaded
    if not _plugins_loaded:
      _plugins_loaded = True
      importlib.import_module("k4p1.plugins").load()

  def register(self, name: str, value: Any = None) -> Callable:
    """Registers `value` under `name`; without `value`, returns a decorator.

    Raises:
      ValueError: `name` is already registered.
    """
    def add(obj):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice (second time by "
                         f"{getattr(obj, '__module__', obj)}).")
      self._entries[name] = obj
      return obj
    return add if value is None else add(value)

  def lookup(self, name: str, where: str = "") -> Any:
    """The entry named `name`.

    Raises:
      ConfigError: no such entry; says what is known and the closest name.
    """
    if name in self._entries:
      return self._entries[name]
    self._load_plugins()
    if name in self._entries:
      return self._entries[name]
    where = where or self.field
    in_where = f" in {where}" if where else ""
    raise ConfigError(f"Unknown {self.kind} '{name}'{in_where}."
                      f"{did_you_mean(name, self._entries)} Known: {', '.join(self._entries)}. "
                      f"Received: {name!r}")

  def names(self) -> list[str]:
    self._load_plugins()
    return list(self._entries)

  def items(self):
    self._load_plugins()
    return self._entries.items()

  def values(self) -> list:
    self._load_plugins()
    return list(self._entries.values())

  def __contains__(self, name) -> bool:
    if name not in self._entries:
      self._load_plugins()
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    self._load_plugins()
    return iter(list(self._entries))

  def __len__(self) -> int:
    self._load_plugins()
    return len(self._entries)


_plugins_loaded = False


def _dotted(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{_dotted(node.value)}.{node.attr}"
  return ""


def python_files(path: str) -> list[str]:
  """`path` itself if it is a file, else every .py file under it (sorted)."""
  if os.path.isfile(path):
    return [path]
  return [os.path.join(folder, file) for folder, _, files in sorted(os.walk(path))
          for file in sorted(files) if file.endswith(".py")]


def declared_names(paths, spellings: tuple[str, ...]) -> list[str]:
  """Names registered by the modules at `paths` (files or folders), read from source, not
  imported.

  Counts calls `S("name", ...)` (decorators included) whose callee is spelled as one of
  `spellings` (e.g. 'BACKBONES.register', 'register_backbone') with a literal first argument.
  It lets a binary check a configured name before TensorFlow loads; a test keeps it equal to
  the imported registry.
  """
  names = []
  for path in [paths] if isinstance(paths, str) else paths:
    for file in python_files(path):
      names += [name for callee, name in _registrations(file, os.path.getmtime(file))
                if callee in spellings]
  return names


@functools.lru_cache(maxsize=None)
def _registrations(file: str, mtime: float) -> tuple:
  """((callee, literal first argument), ...) of every call in `file` (parsed once)."""
  del mtime  # part of the cache key only
  with open(file, encoding="utf-8") as f:
    tree = ast.parse(f.read(), file)
  return tuple((_dotted(node.func), node.args[0].value) for node in ast.walk(tree)
               if isinstance(node, ast.Call) and node.args
               and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
               and _dotted(node.func))


class DeclaredRegistry(Registry):
  """The names of a registry as its package declares them, for checks before any import.

  `lookup` fails exactly as the real registry's does (same message); it returns None.

  Example:
    DeclaredRegistry("backbone", "backbone.name", ["k4p1", "my_plugin.py"],
                     ("BACKBONES.register", "register_backbone")).lookup("mobilenet_v3")
  """

  def __init__(self, kind: str, field: str, paths, spellings: tuple[str, ...]):
    super().__init__(kind, field)
    for name in declared_names(paths, spellings):
      self._entries.setdefault(name, None)

  def _load_plugins(self):
    """Nothing is imported: the names come from the sources."""
