"""Golden parameter counts (exact), for the paper's backbones at their real sizes."""

import tensorflow as tf
from absl.testing import parameterized

from k4p1.backbones import build_backbone
from k4p1.config import BackboneSpec
from k4p1.model import TaskModels
from k4p1.analysis.report import format_parameter_report, parameter_report, task_parameters
from k4p1.testing import tiny_task


class GoldenCountsTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.mnv2 = build_backbone(BackboneSpec("mobilenet_v2", alpha=1.0, input_size=224,
                                           weights="none"))

  def test_mobilenet_v2_224(self):
    models = TaskModels(self.mnv2)
    models.add(tiny_task("sb", "scale_bias,last_layer"), 1000)
    models.add(tiny_task("dw", "depthwise,last_layer"), 1000)
    models.add(tiny_task("ll", "last_layer"), 1000)
    models.add(tiny_task("stats", "bn_stats,last_layer"), 1000)
    models.add(tiny_task("rand", "scale_bias"), 1000)
    models.add(tiny_task("full", "full,last_layer"), 1000)
    sb = task_parameters(models, "sb")
    self.assertEqual(sb["shared"], 2_257_984)
    self.assertEqual(sb["components"]["scale_bias"], {"learned": 34_112, "fixed": 34_112})
    self.assertEqual(sb["components"]["last_layer"], {"learned": 1_281_000, "fixed": 0})
    self.assertEqual(sb["trainable"], 34_112 + 1_281_000)
    self.assertEqual(sb["task_specific"], 68_224 + 1_281_000)
    dw = task_parameters(models, "dw")
    self.assertEqual(dw["components"]["depthwise"], {"learned": 64_224, "fixed": 0})
    self.assertEqual(dw["trainable"], 64_224 + 1_281_000)
    ll = task_parameters(models, "ll")
    self.assertEqual(ll["components"], {"last_layer": {"learned": 1_281_000, "fixed": 0}})
    stats = task_parameters(models, "stats")
    self.assertEqual(stats["components"]["bn_stats"], {"learned": 0, "fixed": 68_224})
    rand = task_parameters(models, "rand")
    self.assertEqual(rand["trainable"], 34_112)
    self.assertEqual(rand["components"]["last_layer"], {"learned": 0, "fixed": 1_281_000})
    full = task_parameters(models, "full")
    self.assertEqual(full["trainable"], 3_538_984 - 34_112)  # 3,538,984 with top minus BN stats
    self.assertEqual(full["task_specific"], 3_538_984)
    text = format_parameter_report(parameter_report(models))
    self.assertIn("34,112", text)
    self.assertIn("64,224", text)

  def test_inception_v3_299_adds_gamma(self):
    backbone = build_backbone(BackboneSpec("inception_v3", input_size=299, weights="none"))
    models = TaskModels(backbone)
    models.add(tiny_task("sb", "scale_bias,last_layer"), 1000)
    sb = task_parameters(models, "sb")
    self.assertEqual(sb["shared"], 23_851_784 - 2_049_000)  # no top
    self.assertEqual(sb["components"]["scale_bias"], {"learned": 34_432, "fixed": 34_432})
    self.assertEqual(sb["components"]["last_layer"]["learned"], 2_049_000)


class ReadmeReportTest(tf.test.TestCase):

  def test_readme_parameter_report_is_what_the_command_prints(self):
    import contextlib
    import io
    import os
    import re
    from k4p1 import config as config_lib
    from k4p1 import experiment
    from k4p1.testing import REPO_ROOT
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
      readme = f.read()
    command, quoted = re.search(
        r"```\n\$ python train.py --config=(\S+) --mode=params --workdir=\S+\n(.*?)```",
        readme, re.S).groups()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      experiment.run(config_lib.load(os.path.join(REPO_ROOT, command)), self.get_temp_dir(),
                     "params")
    self.assertEqual(printed.getvalue().strip(), quoted.strip())


if __name__ == "__main__":
  tf.test.main()
