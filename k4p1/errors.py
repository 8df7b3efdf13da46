"""Errors k4p1 raises on bad input. Binaries print `error: <message>` and exit 2 for any of them.

Every message says what was wrong and what to do. This module imports nothing from k4p1, so
any module (config.py at the bottom of the import graph included) can raise these.

Example:
  try:
    experiment.run(config, workdir)
  except K4P1Error as e:
    print(f"error: {e}")
"""


class K4P1Error(Exception):
  """Base class: bad input a user can fix (a config value, a file, a request)."""


class ConfigError(K4P1Error, ValueError):
  """A config value is invalid; the message says which field and how to fix it."""


class DataError(K4P1Error, ValueError):
  """A dataset cannot be read; the message says what is missing and how to provide it."""


class PatchFileError(K4P1Error, ValueError):
  """A patch file does not fit the model it is loaded onto."""


class DeployError(K4P1Error, ValueError):
  """A deployment request (export, TFLite, mixed serving) cannot be carried out; says why."""
