"""Every config under configs/ loads and validates; bad fields fail clearly."""

import glob
import importlib.util
import os
from unittest import mock

import tensorflow as tf
from absl.testing import parameterized

from k4p1 import config as config_lib
from k4p1 import experiment
from k4p1.testing import REPO_ROOT, tiny_config

# configs/*.py are train.py configs; configs/analysis/ holds bench-script settings.
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*.py")))
ANALYSIS_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "analysis", "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


class ConfigFilesTest(tf.test.TestCase, parameterized.TestCase):

  def test_there_are_configs(self):
    self.assertGreaterEqual(len(CONFIG_FILES), 5)

  @parameterized.parameters(*[(path,) for path in CONFIG_FILES])
  def test_config_validates(self, path):
    config = _load(path)
    if config.backbone.name == "keras_file" and not config.backbone.model_file:
      with config.unlocked():
        config.backbone.model_file = "/some/model.h5"
    if config.backbone.name == "ssd_mobilenet_v2" and not config.backbone.weights:
      with config.unlocked():
        config.backbone.weights = "/some/frozen_inference_graph.pb"
    spec = experiment.resolve(config)
    self.assertNotEmpty(spec.tasks)
    for task in spec.tasks:
      self.assertTrue(task.patch.kinds or task.patch.train_head or task.patch.train_base)


  def test_transfer_table_cells(self):
    path = os.path.join(REPO_ROOT, "configs", "transfer_table.py")
    spec = importlib.util.spec_from_file_location("transfer_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("dogs,fashion_mnist,0.15")
    with config.unlocked():
      config.backbone.model_file = config.backbone.model_file or "/some/model.h5"
    tasks = config_lib.validate(config).tasks
    self.assertEqual([t.name for t in tasks], list(module.REGIMES))
    self.assertEqual({t.lr for t in tasks}, {0.15})
    self.assertEqual({t.dataset.source for t in tasks}, {"fashion_mnist"})
    self.assertEqual(config.backbone.name, "keras_file")
    self.assertEqual(module.get_config("ssd,cifar10,0.045,smoke").tasks.last_layer.steps, 2)
    frozen = module.get_config("ssd,cifar10,0.045,frozen")
    self.assertEqual(frozen.tasks.scale_bias_last_layer.statistics, "frozen")
    with self.assertRaisesRegex(ValueError, "BACKBONE,DATASET,LR.*Received: 'ssd,mnist,0.1'"):
      module.get_config("ssd,mnist,0.1")
    subset = module.get_config("dogs,-,0.0015,data=arrays:/d/signs.npz,statistics=recompute,"
                               "regimes=last_layer+scale_bias_last_layer,size=96,epochs=4")
    with subset.unlocked():
      subset.backbone.model_file = subset.backbone.model_file or "/some/model.h5"
    spec = config_lib.validate(subset)
    self.assertEqual([t.name for t in spec.tasks], ["last_layer", "scale_bias_last_layer"])
    self.assertEqual({(t.dataset.source, t.dataset.path, t.epochs) for t in spec.tasks},
                     {("arrays", "/d/signs.npz", 4.0)})
    self.assertEqual(spec.backbone.input_size, 96)
    self.assertEqual(spec.tasks[1].patch.option("scale_bias", "statistics"), "recompute")
    named = module.get_config("dogs,cifar10,0.0045,regimes=taps_lam25+top_from_block_14_expand")
    with named.unlocked():
      named.backbone.model_file = named.backbone.model_file or "/some/model.h5"
    taps, top = experiment.resolve(named).tasks
    self.assertEqual((taps.name, taps.patch.option("taps", "lam")), ("taps_lam25", 0.25))
    self.assertEqual(taps.patch.kinds, frozenset({"taps", "scale_bias"}))
    self.assertEqual(top.patch.option("top", "start"), "block_14_expand")
    fast = module.get_config("dogs,cifar10,0.0045,regimes=taps_lam100,score_lr=0.05")
    self.assertEqual(fast.tasks.taps_lam100.patch, "taps(lam=1,score_lr=0.05),scale_bias,last_layer")
    swr = module.get_config("dogs,cifar10,0.0045,regimes=swr_c30+swr_c80,swr_beta=10")
    self.assertEqual(swr.tasks.swr_c30.patch, "swr(c=0.3,beta=10),bn_stats,last_layer")
    self.assertEqual(swr.tasks.swr_c80.patch, "swr(c=0.8,beta=10),bn_stats,last_layer")
    self.assertEqual(module.get_config("dogs,cifar10,0.0045,regimes=swr_c10").tasks.swr_c10.patch,
                     "swr(c=0.1),bn_stats,last_layer")
    for bad, message in (("ssd,cifar10,0.1,regimes=lastlayer", "unknown regimes"),
                         ("ssd,cifar10,0.1,regimes=taps_lamx", "taps_lam<N>"),
                         ("ssd,cifar10,0.1,statistics=mean", "statistics must be one of"),
                         ("ssd,-,0.1", "give DATASET, or '-' with data")):
      with self.assertRaisesRegex(config_lib.ConfigError, message):
        module.get_config(bad)
    self.assertEqual(set(module.LR_GRIDS), set(module.BACKBONES))

  @mock.patch.dict(os.environ, {"K4P1_DATA_DIR": "/some/data"})  # dogs and ssd files
  def test_transfer_regimes_backbones_and_aliases(self):
    module = config_lib.load_module(os.path.join(REPO_ROOT, "configs", "transfer.py"))
    for regime in module.REGIMES:
      for backbone in module.BACKBONES:
        spec = experiment.resolve(module.get_config(f"{regime},backbone={backbone}"))
        self.assertEqual(spec.tasks[0].lr, module.REGIMES[regime][2])
    full = experiment.resolve(module.get_config("full,lr=0.01,epochs=2"))
    self.assertEqual((full.tasks[0].lr, full.tasks[0].epochs), (0.01, 2.0))
    self.assertEqual(full.tasks[0].patch.kinds, frozenset({"full"}))
    # The former files are aliases of it, field for field.
    for alias, arg in (("mobilenet_v2_scale_bias_frozen.py", "scale_bias_frozen"),
                       ("inception_v3_scale_bias.py", "scale_bias,backbone=inception_v3")):
      self.assertEqual(_load(os.path.join(REPO_ROOT, "configs", alias)).to_dict(),
                       module.get_config(arg).to_dict())
    with self.assertRaisesRegex(config_lib.ConfigError, "unknown regime 'scale_bais'"):
      module.get_config("scale_bais")
    with self.assertRaisesRegex(config_lib.ConfigError, "Did you mean 'lr'"):
      module.get_config("full,lrr=0.1")
    with self.assertRaisesRegex(config_lib.ConfigError, "must be a float"):
      module.get_config("full,lr=fast")

  @mock.patch.dict(os.environ, {"K4P1_DATA_DIR": "/some/data"})  # names the dogs model file
  def test_transfer_data_argument_equals_the_long_form_overrides(self):
    module = config_lib.load_module(os.path.join(REPO_ROOT, "configs", "transfer.py"))
    short = module.get_config("data=image_folder:/data/GTSRB-32px,patch=scale_bias+last_layer,"
                              "backbone=dogs,size=64,epochs=3,lr=0.01")
    # What a user had to write before: the flowers config and its overrides, one by one.
    long = module.get_config("scale_bias,backbone=dogs")
    with long.unlocked():
      long.tasks.gtsrb_32px = long.tasks.flowers
      del long.tasks["flowers"]
    long.backbone.input_size = 64
    task = long.tasks.gtsrb_32px
    task.update(epochs=3.0, lr=0.01, patch="scale_bias,last_layer")
    task.dataset.update(source="image_folder", name="", path="/data/GTSRB-32px", flip=False,
                        eval_crop=1.0)
    self.assertEqual(config_lib.validate(short), config_lib.validate(long))
    self.assertEqual(config_lib.validate(short).tasks[0].name, "gtsrb_32px")  # named after data
    spec = config_lib.validate(module.get_config("data=arrays:/d/signs.npz,name=Signs,flip=true"))
    self.assertEqual((spec.tasks[0].name, spec.tasks[0].dataset.source,
                      spec.tasks[0].dataset.flip), ("signs", "arrays", True))
    flowers = config_lib.validate(module.get_config("")).tasks[0]
    self.assertEqual((flowers.name, flowers.dataset.flip, flowers.dataset.eval_crop),
                     ("flowers", True, 0.875))  # the paper's setup keeps its augmentation
    with self.assertRaisesRegex(config_lib.ConfigError, "unknown data source 'imagefolder'.*Did "
                                "you mean 'image_folder'"):
      module.get_config("data=imagefolder:/x")
    with self.assertRaisesRegex(config_lib.ConfigError, "needs a path"):
      module.get_config("data=arrays")

  def test_declared_names_equal_the_registries(self):
    from k4p1 import patches
    from k4p1.backbones import BACKBONES
    from k4p1.data import DATA_SOURCES
    from k4p1.train.optimizers import OPTIMIZERS
    from k4p1.train.strategies import STRATEGIES
    from k4p1.methods.multitask.samplers import SAMPLERS
    imported = {"backbone": BACKBONES, "data source": DATA_SOURCES,
                "patch kind": patches.PATCH_KINDS, "strategy": STRATEGIES,
                "optimizer": OPTIMIZERS, "sampler": SAMPLERS}
    self.assertEqual(set(imported), set(config_lib.DECLARED_REGISTRIES))
    for kind, registry in imported.items():
      self.assertEqual(sorted(config_lib.declared(kind).names()), sorted(registry.names()), kind)
      self.assertEqual(config_lib.declared(kind).field, registry.field)
    config = tiny_config()
    config.tasks.patched.patch = "scale_bais"
    with self.assertRaisesRegex(config_lib.ConfigError, "Unknown patch kind 'scale_bais' in "
                                "tasks.patched.patch. Did you mean 'scale_bias'"):
      config_lib.validate(config)  # no registry imported by config.py: read from the source

  def test_ssd_backbone_needs_weights(self):
    config = tiny_config()
    config.backbone.update(name="ssd_mobilenet_v2", weights="imagenet")
    with self.assertRaisesRegex(config_lib.ConfigError, "frozen_inference_graph.pb"):
      config_lib.validate(config)

  @parameterized.parameters(*[(path,) for path in ANALYSIS_FILES])
  def test_analysis_config_loads(self, path):
    config = _load(path)
    self.assertNotIn("backbone", config)  # not a train.py config: it belongs in configs/analysis/


class ParseArgTest(tf.test.TestCase):

  def test_types_positional_and_commas_inside_parentheses(self):
    from k4p1.config import parse_arg
    a = parse_arg("smoke,patch=taps(lam=0.5,score_lr=0.01)+last_layer,lr=0.1,flip=true",
                  positional="variant", variant="", patch="", lr=0.0, flip=False)
    self.assertEqual((a.variant, a.patch, a.lr, a.flip),
                     ("smoke", "taps(lam=0.5,score_lr=0.01)+last_layer", 0.1, True))
    with self.assertRaisesRegex(config_lib.ConfigError, "must be a float"):
      parse_arg("lr=fast", lr=0.0)
    with self.assertRaisesRegex(config_lib.ConfigError, "Unknown config argument 'lrr'"):
      parse_arg("lrr=0.1", lr=0.0)


class ValidationTest(tf.test.TestCase):

  def test_locked_config_rejects_typos(self):
    config = tiny_config()
    config.lock()
    with self.assertRaisesRegex(AttributeError, "lrr"):
      config.optimizer.lrr = 0.1

  def test_unknown_backbone(self):
    config = tiny_config()
    config.backbone.name = "mobilenet_v3"
    with self.assertRaisesRegex(config_lib.ConfigError, "Unknown backbone 'mobilenet_v3'.*Did "
                                "you mean 'mobilenet_v2'"):
      experiment.resolve(config)

  def test_unknown_patch_kind_names_the_task(self):
    config = tiny_config()
    config.tasks.patched.patch = "scale_bias,dw"
    with self.assertRaisesRegex(config_lib.ConfigError, r"Unknown patch kind 'dw' in "
                                r"tasks.patched.patch"):
      experiment.resolve(config)

  def test_task_order_must_name_known_tasks(self):
    config = tiny_config()
    config.task_order = "base,patchd"
    with self.assertRaisesRegex(config_lib.ConfigError, "Did you mean 'patched'"):
      config_lib.validate(config)

  def test_bad_classes(self):
    config = tiny_config()
    config.tasks.base.dataset.classes = "0,one"
    with self.assertRaisesRegex(config_lib.ConfigError, "comma-separated integers"):
      config_lib.validate(config)

  def test_export_tasks_must_exist(self):
    config = tiny_config()
    config.export.tasks = "base,cars"
    with self.assertRaisesRegex(config_lib.ConfigError, "export.tasks names 'cars'"):
      config_lib.validate(config)

  def test_task_order(self):
    config = tiny_config()
    self.assertEqual(config_lib.task_order(config), ["base", "patched"])
    config.task_order = ""
    self.assertEqual(config_lib.task_order(config), ["base", "patched"])


if __name__ == "__main__":
  tf.test.main()
