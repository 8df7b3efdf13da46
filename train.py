r"""k4p1 training binary: model patches for transfer and multi-task learning.

With no flags it runs the embedded default (configs/digits.py): pretrain a small MobileNetV2 on
digits 0-4 (scikit-learn's bundled digits), learn digits 5-9 with the last layer only and with a
scale-and-bias patch + last layer, print the comparison, and export a two-task SavedModel.

Usage:
  python train.py --config=FILE[:ARG] --workdir=DIR [--mode=MODE] [--config.FIELD=VALUE ...]

Your own data (one regime; the task is named after the data):
  python train.py --config=configs/transfer.py:data=image_folder:/data/signs,patch=scale_bias+last_layer
  python train.py --config=configs/transfer.py:backbone=dogs,data=arrays:/data/signs.npz,size=64
  (image_folder: ROOT/train/<class>/*.png and ROOT/test/<class>/*.png; arrays: an .npz with
  train_images, train_labels, test_images, test_labels and optional class_names.)
  Defaults for your data: no horizontal flips (flip=true turns them on: a flip changes the label
  of digits, text, signs), no evaluation crop (eval_crop=0.875 is Inception's), random resized
  crops in training (augment=none: resize only), each split shuffled once with a fixed seed,
  class-stratified subsets (train_examples=N), BN statistics recomputed on un-augmented images.
  configs/transfer.py's docstring lists every key; k4p1/config.py every field and its default.

Modes:
  train   train every unfinished task (resumes from the last checkpoint in --workdir), evaluate,
          write metrics.json, patch files and a SavedModel.
  eval    evaluate the last checkpoint.
  params  print the parameter report only (no data, no weights needed).
  export  export the SavedModel from the last checkpoint.

Output: a progress bar and `k4p1: ...` lines on stderr, the results table on stdout.
--verbosity=1 shows TensorFlow's own log lines too. Bad input: one `error: ...` line, exit 2.
"""

import os

from absl import app, flags

from k4p1 import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_CONFIG = os.path.join(_HERE, "configs", "digits.py")

_CONFIG = cli.define_config_file(
    "config", _DEFAULT_CONFIG,
    "Experiment config file (configs/*.py); fields overridable as --config.a.b=value; "
    "`--config=FILE:ARG` passes ARG to get_config (e.g. configs/digits.py:smoke, "
    "configs/transfer.py:data=image_folder:/path,patch=scale_bias+last_layer). "
    "Every field and its default is documented in k4p1/config.py.")
flags.declare_key_flag("config")  # defined through k4p1.cli: list it in this binary's --help
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for checkpoints, summaries, metrics, patch files and exports "
    "(default: ./k4p1_runs/<config name>). Rerunning with the same folder resumes.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "params", "export"],
                          "What to do (see the module docstring).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}: flags are written --name=value.",
             "Run `train.py --help` for every flag.")
  cli.setup_logging()
  from k4p1 import config as config_lib  # no TensorFlow: bad input fails in a fraction of a second
  from k4p1.errors import K4P1Error
  config_path = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or os.path.join(
      "k4p1_runs", os.path.splitext(os.path.basename(config_path.split(":")[0]))[0])
  from k4p1 import cluster
  try:
    spec = config_lib.validate(_CONFIG.value)
    config_lib.check_paths(spec, _MODE.value, workdir)
    cluster.check(spec.runtime.strategy)
    cluster.check_workers(spec.runtime.strategy, spec.multitask.workers)
    role = cluster.task()
    cli.import_tensorflow()
    if spec.runtime.strategy == "parameter_server" and role and role[0] in ("worker", "ps"):
      from k4p1.train.strategies import serve_forever
      serve_forever(*role)  # the chief's coordinator drives this process until it is stopped
      return
    from k4p1 import experiment
    import tensorflow as tf
    try:
      experiment.run(_CONFIG.value, workdir, _MODE.value)
    except tf.errors.UnavailableError as e:  # a parameter server (or a peer) went away
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      who = "a parameter server" if "ps" in str(e) or "PSUnavailable" in type(e).__name__ \
          else "a task of the cluster"
      cli.fail(f"{who} stopped responding ({type(e).__name__}: {first[:300]}). Training stops: "
               f"rerun the same command to resume from the last checkpoint in {workdir}.")
  except (K4P1Error, FileNotFoundError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
