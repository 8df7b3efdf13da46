"""Joint multi-task training (k4p1/methods/multitask): steps, samplers, rate balancing, end to end."""

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from k4p1 import config as config_lib
from k4p1 import experiment
from k4p1.model import TaskModels
from k4p1.testing import REPO_ROOT, calibrated_mobilenet_v2, random_images, tiny_config, tiny_task
from k4p1.methods.multitask import joint as joint_lib
from k4p1.methods.multitask.joint import JointSchedule, make_summed_step
from k4p1.methods.multitask.samplers import TaskSampler
from k4p1.train.steps import StepMetrics, classification_loss
from k4p1.train.trainer import Trainer

MULTITASK = os.path.join(REPO_ROOT, "configs", "multitask.py")


def _joint_config(step="summed", steps=4):
  config = tiny_config(steps=steps, patch="scale_bias,last_layer")
  config.tasks.base.patch = "scale_bias,last_layer"
  config.tasks.base.train_base = False
  config.multitask.update(tasks="base,patched", step=step, steps=steps)
  config.train.log_every = 2
  return config


class SummedStepTest(tf.test.TestCase):

  def test_gradients_are_the_weighted_sum_of_the_tasks(self):
    models = TaskModels(calibrated_mobilenet_v2())
    for name in ("a", "b"):
      models.add(tiny_task(name, "scale_bias,last_layer", statistics="frozen"), 3)
    shared = models.shared_learnable_variables()
    used = set()
    for t in ("a", "b"):
      used |= {id(v) for v in models.tasks[t].model.variables}
    shared = [v for v in shared if id(v) in used]
    own = {t: [v for v in models.trainable_variables(t) if id(v) not in {id(s) for s in shared}]
           for t in ("a", "b")}
    batches = {t: (random_images(4, seed=i), np.arange(4) % 3) for i, t in enumerate("ab")}
    weights = {"a": 1.0, "b": 0.5}
    # The manual computation: per-task gradients, weighted and summed.
    manual = {}
    for t in ("a", "b"):
      with tf.GradientTape() as tape:
        logits = models.tasks[t].model(batches[t][0], training=True)
        loss = weights[t] * classification_loss(logits, batches[t][1], 3, 4)
      for v, g in zip(shared + own["a"] + own["b"],
                      tape.gradient(loss, shared + own["a"] + own["b"])):
        if g is not None:
          manual[id(v)] = manual.get(id(v), 0.0) + g.numpy()
    before = {id(v): v.numpy().copy() for v in shared + own["a"] + own["b"]}
    lr = 0.1
    groups = [(keras.optimizers.SGD(lr), shared), (keras.optimizers.SGD(lr), own["a"]),
              (keras.optimizers.SGD(lr), own["b"])]
    for opt, variables in groups:
      opt.build(variables)
    dataset = tf.data.Dataset.from_tensors(tuple(
        (tf.constant(batches[t][0]), tf.constant(batches[t][1], tf.int32)) for t in "ab"))
    strategy = tf.distribute.get_strategy()
    metrics = {t: StepMetrics.create(f"m_{t}") for t in "ab"}
    counter = tf.Variable(0, dtype=tf.int64)
    step = make_summed_step(strategy, {t: models.tasks[t].model for t in "ab"}, groups,
                            {"a": 4, "b": 4}, {"a": 3, "b": 3}, weights, 0.0, metrics, [counter])
    step(iter(dataset))
    self.assertEqual(int(counter.numpy()), 1)
    checked = 0
    for v in shared + own["a"] + own["b"]:
      if id(v) in manual:
        self.assertAllClose(v.numpy(), before[id(v)] - lr * manual[id(v)], rtol=1e-4,
                            atol=1e-6, msg=v.path)
        checked += 1
    self.assertGreater(checked, len(own["a"]))  # shared and both tasks' own were checked
    loss_a, _, n = metrics["a"].read_and_reset()
    self.assertEqual(n, 1)
    self.assertGreater(loss_a, 0.0)


class SamplerAndScheduleTest(tf.test.TestCase):

  def test_sampler_proportions(self):
    sizes = {"big": 3000, "small": 1000}
    proportional = TaskSampler("proportional", sizes, seed=0)
    draws = [proportional.task(s) for s in range(1, 4001)]
    self.assertAllClose(draws.count("big") / 4000, 0.75, atol=0.025)
    self.assertEqual(draws, [proportional.task(s) for s in range(1, 4001)])  # resumable
    self.assertEqual([TaskSampler("round_robin", sizes).task(s) for s in range(1, 5)],
                     ["big", "small", "big", "small"])
    by_workers = TaskSampler("workers", sizes, workers={"big": 1, "small": 2})
    self.assertEqual([by_workers.task(s) for s in range(1, 7)],
                     ["big", "small", "small", "big", "small", "small"])
    self.assertAllClose(by_workers.probabilities(), [1 / 3, 2 / 3])
    annealed = TaskSampler("annealed", sizes, temperature=4.0, total_steps=100)
    self.assertAllClose(annealed.probabilities(1), np.array([3 ** 0.25, 1]) / (3 ** 0.25 + 1))
    self.assertAllClose(annealed.probabilities(101), [0.75, 0.25])  # ends proportional

  def test_joint_schedule_follows_the_joint_step(self):
    step = tf.Variable(0, dtype=tf.int64)
    schedule = JointSchedule(0.1, 10, 0.5, step)
    self.assertAllClose(float(schedule(123)), 0.1)  # the optimizer's own count is ignored
    step.assign(25)
    self.assertAllClose(float(schedule(0)), 0.025)

  def test_learning_rate_balancing(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, True)
    config = _joint_config()
    config.tasks.base.dataset.train_examples = 64
    config.tasks.patched.dataset.train_examples = 32
    config.optimizer.decay_epochs = 2.0
    trainer = Trainer(experiment.resolve(config), workdir)
    joint = trainer.phases[0]
    # batch 8: 8 and 4 steps per epoch; balanced: both decay every 2 epochs of the longer.
    self.assertEqual(joint_lib.joint_decay_steps(trainer, joint), {"base": 16, "patched": 16})
    config.multitask.balance_lr = False
    trainer = Trainer(experiment.resolve(config), tempfile.mkdtemp())
    self.assertEqual(joint_lib.joint_decay_steps(trainer, trainer.phases[0]), {"base": 16, "patched": 8})


class JointTrainingTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, True)

  def test_sampled_shared_moves_under_every_task_a_patch_only_under_its_own(self):
    config = _joint_config("sampled", steps=1)
    config.multitask.sampler = "round_robin"
    trainer = Trainer(experiment.resolve(config), self.workdir)
    (joint,) = trainer.phases
    self.assertEqual(joint.tasks, ("base", "patched"))
    shared, shared_of, own = joint_lib.joint_variables(trainer, joint)
    snapshot = lambda vs: [v.numpy().copy() for v in vs]  # noqa: E731
    moved = lambda vs, before: [not np.array_equal(v.numpy(), b)  # noqa: E731
                                for v, b in zip(vs, before)]
    before = {k: snapshot(v) for k, v in (("shared", shared), ("base", own["base"]),
                                          ("patched", own["patched"]))}
    trainer.train_phase(joint)  # one step: round robin trains `base`
    self.assertTrue(any(moved(shared, before["shared"])))
    self.assertTrue(any(moved(own["base"], before["base"])))
    self.assertFalse(any(moved(own["patched"], before["patched"])))
    self.assertEqual({t: trainer.phase_steps(t) for t in joint.tasks}, {"base": 1, "patched": 0})

  def test_summed_end_to_end_resumes_and_exports(self):
    config = _joint_config("summed", steps=4)
    result = experiment.run(config, self.workdir, "train")
    rows = {r["task"]: r for r in result["tasks"]}
    self.assertEqual({t: rows[t]["steps_done"] for t in rows}, {"base": 4, "patched": 4})
    self.assertTrue(os.path.exists(os.path.join(self.workdir, "base.weights.h5")))
    self.assertLen(os.listdir(os.path.join(self.workdir, "patches")), 2)
    again = Trainer(experiment.resolve(config), self.workdir)
    self.assertTrue(again.restore())
    self.assertTrue(again.phase_done(again.phases[0]))
    # What deploy.py rebuilds from the run (the jointly trained base + each task's patch file)
    # computes what the trained task models compute.
    from k4p1.export.patch_files import assemble
    patches = sorted(os.path.join(self.workdir, "patches", p)
                     for p in os.listdir(os.path.join(self.workdir, "patches")))
    deployed = assemble(again.spec.backbone, patches,
                        os.path.join(self.workdir, "base.weights.h5"))
    x = random_images(4)
    for task in ("base", "patched"):
      self.assertAllClose(deployed.tasks[task].model(x, training=False),
                          again.models.tasks[task].model(x, training=False),
                          rtol=1e-4, atol=1e-5)

  def test_bad_multitask_configs(self):
    for tasks, message in (("base,base", "more than once"), ("base", "at least two tasks"),
                           ("base,cars", "names 'cars', which is not a task")):
      config = _joint_config()
      config.multitask.tasks = tasks
      with self.assertRaisesRegex(config_lib.ConfigError, message):
        config_lib.validate(config)
    config = _joint_config()
    config.multitask.sampler = "proportionnal"
    with self.assertRaisesRegex(config_lib.ConfigError, "Did you mean 'proportional'"):
      config_lib.validate(config)
    for workers, step, message in (
        ("base:1,cars:1", "sampled", "names 'cars', which is not a joint task"),
        ("base:2", "sampled", r"leaves \['patched'\] with no worker"),
        ("base=1,patched=1", "sampled", "write task:count pairs"),
        ("base:1,patched:1", "summed", "needs multitask.step='sampled'")):
      config = _joint_config(step)
      config.multitask.workers = workers
      with self.assertRaisesRegex(config_lib.ConfigError, message):
        config_lib.validate(config)
    config = _joint_config("sampled")
    config.multitask.workers = "base:1,patched:2"
    self.assertEqual(config_lib.validate(config).multitask.workers,
                     (("base", 1), ("patched", 2)))

  def test_multitask_config_regimes(self):
    module = config_lib.load_module(MULTITASK)
    for regime, kinds in (("patch", {"scale_bias"}), ("last_layer", set()),
                          ("independent", {"full"})):
      spec = config_lib.validate(module.get_config(f"{regime},smoke"))
      self.assertEqual(spec.multitask.tasks, ("digits_0_4", "digits_5_9"))
      self.assertEqual({k for t in spec.tasks for k in t.patch.kinds}, kinds)
    self.assertEqual(config_lib.validate(module.get_config("smoke,sampled")).multitask.step,
                     "sampled")
    with self.assertRaisesRegex(config_lib.ConfigError, "unknown argument"):
      module.get_config("smoke,async")


if __name__ == "__main__":
  tf.test.main()
