"""Config files: `configs/NAME.py[:ARG]` loaded as train.py's --config loads them, and the one
argument parser their ARG uses (`parse_arg`). Re-exported by k4p1.config.

Example:
  config = load("configs/digits.py:smoke")
  a = parse_arg("full,lr=0.1", positional="regime", regime="scale_bias", lr=0.045)
"""

from __future__ import annotations

import os

import ml_collections

from k4p1.errors import ConfigError
from k4p1.registry import did_you_mean as _did_you_mean


def load_module(path: str, name: str = ""):
  """Imports a Python file (a config under configs/) as a module."""
  import importlib.util
  if not os.path.exists(path):
    raise ConfigError(f"Config file not found: {path!r}.")
  spec = importlib.util.spec_from_file_location(
      name or os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path!r} defines no get_config(): it is not a k4p1 config file.")
  return module


def parse_arg(arg, positional: str = "", **defaults) -> ml_collections.ConfigDict:
  """A config file's ARG, big_vision style: 'value,key=value,...' with typed defaults.

  Each value takes the type of its default (int, float, bool, str); a bare first value sets
  `positional`; commas inside parentheses are part of a value (patch=taps(lam=1,tau=0.1)).
  Unknown keys and bad values fail with a ConfigError.

  Example:
    parse_arg("full,backbone=inception_v3", positional="regime", regime="scale_bias",
              backbone="mobilenet_v2")   # -> regime='full', backbone='inception_v3'
  """
  out = ml_collections.ConfigDict(defaults)
  items, depth, current = [], 0, ""
  for ch in str(arg or ""):  # commas inside parentheses belong to a value: patch=taps(a=1,b=2)
    depth += (ch == "(") - (ch == ")")
    if ch == "," and depth == 0:
      items.append(current)
      current = ""
    else:
      current += ch
  items.append(current)
  for i, item in enumerate(x.strip() for x in items if x.strip()):
    key, eq, value = item.partition("=")
    if not eq:
      if i or not positional:
        raise ConfigError(f"Config argument {item!r} must be key=value (keys: "
                          f"{', '.join(defaults)}). Received: {arg!r}")
      key, value = positional, item
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"Unknown config argument '{key}'.{_did_you_mean(key, defaults)} "
                        f"Keys: {', '.join(defaults)}. Received: {arg!r}")
    kind = type(defaults[key])
    try:
      out[key] = (value.strip().lower() in ("1", "true", "yes")) if kind is bool \
          else kind(value.strip())
    except ValueError:
      raise ConfigError(f"Config argument {key} must be a {kind.__name__}. "
                        f"Received: {key}={value!r}") from None
  return out


def config_file(name: str, arg: str = "", near: str = __file__) -> ml_collections.ConfigDict:
  """get_config(arg) of another config file in the same folder as `near` (for aliases)."""
  path = os.path.join(os.path.dirname(os.path.abspath(near)), name)
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def load(path_and_arg: str, lock: bool = True) -> ml_collections.ConfigDict:
  """Loads 'configs/NAME.py[:ARG]': get_config(ARG) (or get_config()) of that file.

  The same `FILE:ARG` convention as train.py's --config. With `lock`, a typo in a later
  override (`config.optimizer.lrr = 1`) raises instead of adding a field.

  Example:
    config = load("configs/digits.py:smoke")
  """
  path, _, arg = str(path_and_arg).partition(":")
  module = load_module(path)
  config = module.get_config(arg) if arg else module.get_config()
  if lock:
    config.lock()
  return config


def from_json(path: str) -> ml_collections.ConfigDict:
  """The config a train.py run wrote to its workdir (config.json)."""
  import json
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: expected a train.py workdir's config.json.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
