"""What the binaries (train.py, deploy.py) share: one-line errors, quiet TensorFlow, k4p1's log.

- `parse_flags` is the `flags_parser` of `app.run`: any bad flag, a typo in a `--config.a.b`
  override or a bad `--config=FILE:ARG` prints one `error: ...` line (with a "did you mean")
  and exits 2, before TensorFlow is imported.
- `setup_logging` runs first in `main`: TensorFlow's own log lines (its C++ start-up lines,
  its Python warnings) are hidden unless `--verbosity` >= 1 (debug); k4p1's own info lines
  (statistics recomputed, checkpoint restored, resumed at step N) show as `k4p1: ...`.
- `import_tensorflow` imports TensorFlow with its start-up lines filtered out.

This module imports neither TensorFlow nor Keras.

Example:
  def main(argv):
    cli.setup_logging()
    ...
  app.run(main, flags_parser=cli.parse_flags)
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import tempfile

from absl import flags
from absl import logging

from k4p1.errors import K4P1Error

_K4P1_DIR = os.path.dirname(os.path.abspath(__file__))
# TensorFlow's C++ start-up lines: written before absl logging is initialised, so
# TF_CPP_MIN_LOG_LEVEL does not hide them (oneDNN notice, CPU feature guard, CUDA probing).
_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} |"
                    r"E\d{4} .*(cuInit|cuda|CUDA|cuDNN|cuFFT|cuBLAS)|To enable the following "
                    r"instructions|.*rebuild TensorFlow with the appropriate compiler flags)")


def fail(message: str, hint: str = ""):
  """Prints `error: message` (plus an optional hint line) and exits with status 2."""
  print(f"error: {message}", file=sys.stderr)
  if hint:
    print(hint, file=sys.stderr)
  sys.exit(2)


def _config_override_error(argv, error, flag: str, default: str) -> str:
  """A clear message for an unknown `--config.a.b` field (ml_collections raises a chain)."""
  from k4p1 import config as config_lib
  from k4p1.registry import did_you_mean
  found = re.search(r"\w+", str(error.args[0] if error.args else error))
  key = found.group(0) if found else ""
  path_and_arg = default
  for arg in argv[1:]:
    if arg.startswith(f"--{flag}="):
      path_and_arg = arg.split("=", 1)[1]
  for arg in argv[1:]:
    match = re.match(rf"--{flag}\.([\w.]+)(=.*)?$", arg)
    if not match or key not in match.group(1).split("."):
      continue
    path = match.group(1)
    parts = path.split(".")
    parent = ".".join(parts[:parts.index(key)])
    try:
      node = config_lib.load(path_and_arg, lock=False)
      for part in filter(None, parent.split(".")):
        node = node[part]
      known = sorted(node.keys())
    except Exception:  # the config itself does not load: name the field anyway
      known = []
    prefix = f"{parent}." if parent else ""
    suggestion = did_you_mean(key, known).replace("'", f"'{prefix}", 1)
    fields = f" Fields of {flag}{'.' + parent if parent else ''}: {', '.join(known)}." \
        if known else ""
    return (f"unknown config field '{prefix}{key}' in {arg}.{suggestion}{fields} Every field "
            f"and its default is documented in k4p1/config.py.")
  return f"unknown config field {key!r}. Every field is documented in k4p1/config.py."


def _k4p1_error_in(text: str) -> str:
  """The message of a k4p1 error quoted in a flag error's text (config files raise them)."""
  found = re.findall(r"k4p1\.errors\.\w+: (.*)", text)
  return found[-1] if found else ""


def define_config_file(name: str, default: str, help_text: str):
  """config_flags.DEFINE_config_file (locked), failing with one `error:` line on bad input.

  ml_collections applies `--name.a.b=value` overrides when the flag is defined (reading
  sys.argv), so an unknown field fails here, before absl parses anything.
  """
  from ml_collections import config_flags
  for i, arg in enumerate(sys.argv[1:], 1):
    value = arg.split("=", 1)[1] if arg.startswith(f"--{name}=") else \
        sys.argv[i + 1] if arg == f"--{name}" and i + 1 < len(sys.argv) else None
    if value is not None and not os.path.isfile(value.split(":")[0]):
      fail(f"config file {value.split(':')[0]!r} not found (--{name}={value}). Configs ship "
           f"under configs/, e.g. --{name}=configs/transfer.py:data=image_folder:/path.")
  try:
    return config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)
  except K4P1Error as e:
    fail(str(e))
  except (AttributeError, KeyError) as e:
    fail(_config_override_error(sys.argv, e, name, default))


def parse_flags(argv):
  """absl `flags_parser`: parses argv; any error is one `error:` line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except K4P1Error as e:  # raised by a config file's get_config(ARG)
    fail(str(e))
  except flags.Error as e:
    fail(_k4p1_error_in(str(e)) or str(e),
         f"Run `{os.path.basename(argv[0])} --help` for every flag.")
  except (AttributeError, KeyError) as e:  # an unknown --config.a.b field
    fail(_config_override_error(argv, e, "config", ""))


class _K4P1Lines(std_logging.Filter):
  """Lets through k4p1's own records (info and up) and other libraries' errors only."""

  def filter(self, record):
    return record.levelno >= std_logging.ERROR or \
        os.path.abspath(record.pathname).startswith(_K4P1_DIR)


class _Format(std_logging.Formatter):
  """`k4p1: message` for info, `k4p1 warning: message` above it."""

  def format(self, record):
    level = "" if record.levelno <= std_logging.INFO else f" {record.levelname.lower()}"
    return f"k4p1{level}: {record.getMessage()}"


def tensorflow_verbose() -> bool:
  """Whether the user asked for TensorFlow's own log lines (--verbosity >= 1)."""
  return "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present and \
      flags.FLAGS.verbosity >= 1


def setup_logging():
  """k4p1's info lines on stderr as `k4p1: ...`; TensorFlow's hidden unless --verbosity >= 1."""
  verbose = tensorflow_verbose()
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    handler.setFormatter(_Format())
    handler.addFilter(_K4P1Lines())
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


def import_tensorflow():
  """Imports TensorFlow; unless verbose, drops its C++ start-up lines (keeps anything else)."""
  if "tensorflow" in sys.modules or tensorflow_verbose():
    import tensorflow as tf
    return tf
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf
      tf.get_logger().setLevel(std_logging.ERROR)
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines():
        if not _NOISE.match(line):
          print(line, file=sys.stderr)
  return tf
