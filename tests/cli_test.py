"""The binaries' first contact: bad input is one `error:` line, exit 2, before TensorFlow loads."""

import os
import subprocess
import sys
import tempfile

import tensorflow as tf
from absl.testing import parameterized

from k4p1.testing import REPO_ROOT

TRAIN = os.path.join(REPO_ROOT, "train.py")
DEPLOY = os.path.join(REPO_ROOT, "deploy.py")
DIGITS = os.path.join(REPO_ROOT, "configs", "digits.py")
TRANSFER = os.path.join(REPO_ROOT, "configs", "transfer.py")


def _without_tensorflow() -> dict:
  """An environment in which `import tensorflow` (or keras) fails loudly."""
  shadow = tempfile.mkdtemp()
  for name in ("tensorflow", "keras"):
    os.makedirs(os.path.join(shadow, name))
    with open(os.path.join(shadow, name, "__init__.py"), "w") as f:
      f.write(f"raise ImportError('TEST: {name} was imported before the error')\n")
  path = os.pathsep.join([shadow, REPO_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  env = {**os.environ, "PYTHONPATH": path}
  env.pop("TF_CONFIG", None)
  return env


class BadInputTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.env = _without_tensorflow()

  def _run(self, binary, *args):
    return subprocess.run([sys.executable, binary, *args], capture_output=True, text=True,
                          timeout=120, env=self.env, cwd=tempfile.gettempdir())

  @parameterized.named_parameters(
      ("config_field_typo", ["--config.optimizer.lrr=0.1"],
       r"^error: unknown config field 'optimizer.lrr' in --config.optimizer.lrr=0.1. Did you "
       r"mean 'optimizer.lr'\? Fields of config.optimizer: .*lr, momentum"),
      ("section_typo", ["--config.optimizerr.lr=1"],
       r"^error: unknown config field 'optimizerr'.*Did you mean 'optimizer'"),
      ("task_typo", ["--config.tasks.digits_0_44.steps=3"],
       r"^error: unknown config field 'tasks.digits_0_44'.*Did you mean 'tasks.digits_0_4'"),
      ("bad_value", ["--config.optimizer.lr=fast"],
       r"^error: flag --config.optimizer.lr=fast: could not convert string to float"),
      ("bad_mode", ["--mode=fit"], r"^error: flag --mode=fit: value should be one of"),
      ("patch_kind", ["--config.tasks.digits_0_4.patch=scale_bais"],
       r"^error: Unknown patch kind 'scale_bais' in tasks.digits_0_4.patch. Did you mean "
       r"'scale_bias'"),
      ("backbone", ["--config.backbone.name=mobilenet_v3"],
       r"^error: Unknown backbone 'mobilenet_v3'.*Did you mean 'mobilenet_v2'"),
      ("data_source", ["--config.tasks.digits_0_4.dataset.source=image_foldr"],
       r"^error: Unknown data source 'image_foldr'.*Did you mean 'image_folder'"),
      ("optimizer", ["--config.optimizer.name=adamw"],
       r"^error: Unknown optimizer 'adamw'.*Did you mean 'adam'"),
      ("missing_path", ["--config.tasks.digits_0_4.dataset.path=/nonexistent/data"],
       r"^error: tasks.digits_0_4.dataset.path file not found: '/nonexistent/data'"),
      ("missing_config", [f"--config={REPO_ROOT}/configs/nope.py"],
       r"^error: config file '.*configs/nope.py' not found"),
      ("config_argument", [f"--config={TRANSFER}:data=imagefolder:/x"],
       r"^error: configs/transfer.py: unknown data source 'imagefolder'. Did you mean "
       r"'image_folder'"),
      ("config_argument_key", [f"--config={TRANSFER}:patchh=scale_bias"],
       r"^error: Unknown config argument 'patchh'. Did you mean 'patch'"),
      ("stray_argument", ["params"], r"^error: unexpected arguments \['params'\]"),
      ("parameter_server_without_cluster",
       [f"--config={REPO_ROOT}/configs/multitask.py:smoke,parameter_server"],
       r"^error: runtime.strategy='parameter_server' needs a cluster with chief, worker, ps "
       r"tasks in TF_CONFIG.*python -m k4p1.launch --workers=2 --ps=1"),
  )
  def test_train_fails_in_one_line_without_tensorflow(self, args, pattern):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    out = self._run(TRAIN, f"--workdir={workdir}", *args)
    self.assertEqual(out.returncode, 2, out.stderr)
    self.assertRegex(out.stderr, pattern)
    lines = out.stderr.strip().splitlines()
    self.assertLen([l for l in lines if l.startswith("error:")], 1, out.stderr)
    self.assertLessEqual(len(lines), 2, out.stderr)  # the error, at most a --help hint
    self.assertNotIn("Traceback", out.stderr)
    self.assertNotIn("TEST:", out.stderr)  # TensorFlow was never imported
    self.assertFalse(os.path.exists(workdir))

  @parameterized.named_parameters(
      ("missing_out", ["--workdir=/tmp/x"], r"^error: --out is required"),
      ("no_source", ["--out=/tmp/x"], r"^error: pass exactly one of --workdir"),
      ("bad_format", ["--out=/tmp/x", "--workdir=/tmp/x", "--formats=onnx"],
       r"^error: unknown --formats \['onnx'\]. Known: saved_model, serving, tflite, folded"),
      ("missing_workdir", ["--out=/tmp/x", "--workdir=/nonexistent/run"],
       r"^error: /nonexistent/run/config.json not found"),
  )
  def test_deploy_fails_in_one_line_without_tensorflow(self, args, pattern):
    out = self._run(DEPLOY, *args)
    self.assertEqual(out.returncode, 2, out.stderr)
    self.assertRegex(out.stderr, pattern)
    self.assertNotIn("Traceback", out.stderr)
    self.assertNotIn("TEST:", out.stderr)


if __name__ == "__main__":
  tf.test.main()
