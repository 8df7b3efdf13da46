"""One small register/lookup for everything chosen by name in a config.

Backbones, data sources, patch kinds, strategies, optimizers and signature kinds each have one
`Registry`. A module registers its entries when it is imported; `lookup` fails with a
`ConfigError` that lists what is known and suggests the closest name. Registering a name twice
is a programming error and raises at import time.

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
    where = where or self.field
    in_where = f" in {where}" if where else ""
    raise ConfigError(f"Unknown {self.kind} '{name}'{in_where}."
                      f"{did_you_mean(name, self._entries)} Known: {', '.join(self._entries)}. "
                      f"Received: {name!r}")

  def names(self) -> list[str]:
    return list(self._entries)

  def items(self):
    return self._entries.items()

  def __contains__(self, name) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)


def _dotted(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{_dotted(node.value)}.{node.attr}"
  return ""


def declared_names(package_dir: str, spellings: tuple[str, ...]) -> list[str]:
  """Names registered by the modules under `package_dir`, read from source, not imported.

  Counts calls `S("name", ...)` (decorators included) whose callee is spelled as one of
  `spellings` (e.g. 'BACKBONES.register', 'register_backbone') with a literal first argument.
  It lets a binary check a configured name before TensorFlow loads; a test keeps it equal to
  the imported registry.
  """
  names = []
  for folder, _, files in sorted(os.walk(package_dir)):
    for file in sorted(files):
      if not file.endswith(".py"):
        continue
      with open(os.path.join(folder, file), encoding="utf-8") as f:
        tree = ast.parse(f.read(), file)
      for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and _dotted(node.func) in spellings and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
          names.append(node.args[0].value)
  return names


class DeclaredRegistry(Registry):
  """The names of a registry as its package declares them, for checks before any import.

  `lookup` fails exactly as the real registry's does (same message); it returns None.

  Example:
    DeclaredRegistry("backbone", "backbone.name", "k4p1/backbones",
                     ("BACKBONES.register", "register_backbone")).lookup("mobilenet_v3")
  """

  def __init__(self, kind: str, field: str, package_dir: str, spellings: tuple[str, ...]):
    super().__init__(kind, field)
    for name in declared_names(package_dir, spellings):
      self._entries.setdefault(name, None)
