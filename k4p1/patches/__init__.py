"""Model patches: task-specific parameters spread through a shared network.

One file per patch kind (scale_bias.py, depthwise.py, channel_scale_bias.py, full.py,
bias.py, ...): each declares its `PatchKind` in PATCH_KINDS. Every module of this package is
imported here, so a new kind is one new file and nothing else.

Example:
  from k4p1 import patches
  spec = patches.parse_patch("scale_bias(statistics=frozen),depthwise,last_layer")
  patched = patches.patch_model(base, "flowers", spec)
"""

import importlib
import pkgutil

from k4p1 import config as _config
from k4p1.patches.apply import PatchedModel, patch_layers_of, patch_model  # noqa: F401
from k4p1.patches.base import (PATCH_KINDS, NoOptions, PatchKind, PatchLayer, check, kind,
                               kinds_of, label, options, record, from_record, to_plain)  # noqa: F401
from k4p1.patches.graph import PatchGraph, all_layers, layers_followed_by_bn  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")


def parse_patch(text: str, statistics: str = "batch", train_base: bool = False,
                where: str = "patch") -> _config.PatchSpec:
  """Parses and checks 'scale_bias(statistics=frozen),depthwise,last_layer' (see config).

  Raises:
    ConfigError: unknown kind (with a "did you mean"), bad option, or conflicting kinds.
  """
  return check(_config.parse_patch(text, statistics, train_base, where), where)
