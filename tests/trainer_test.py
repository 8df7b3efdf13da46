"""The trainer's phases: explicit variables per phase, a step counter each, resume across them."""

import shutil
import tempfile

import numpy as np
import tensorflow as tf

from k4p1.experiment import resolve
from k4p1.train.trainer import Phase, Trainer
from k4p1.testing import tiny_config


def _phases(trainer):
  return [Phase("patched_head", "patched", 2,
                variables=lambda models: models.tasks["patched"].head.weights),
          Phase("patched", "patched", 3)]


def _spec():
  config = tiny_config(steps=3)
  del config.tasks["base"]
  config.task_order = "patched"
  return resolve(config)


class PhaseTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, True)

  def test_phases_train_their_variables_and_resume(self):
    trainer = Trainer(_spec(), self.workdir, phases=_phases)
    models = trainer.models
    head = {id(v) for v in models.tasks["patched"].head.weights}
    patch = [v for v in models.task_variables("patched") if id(v) not in head]
    patch_before = [v.numpy().copy() for v in patch]
    base_before = [v.numpy().copy() for v in models.base.variables]

    trainer.train_phase(trainer.phases[0])
    self.assertEqual(int(trainer.steps["patched_head"].numpy()), 2)
    self.assertEqual(int(trainer.steps["patched"].numpy()), 0)
    for v, before in zip(patch, patch_before):  # phase 1 trains the classifier only
      self.assertAllEqual(v.numpy(), before, msg=v.path)

    # A new process (a new Trainer on the same workdir) resumes after phase 1.
    again = Trainer(_spec(), self.workdir, phases=_phases)
    self.assertTrue(again.restore())
    self.assertEqual(again.train_phase(again.phases[0]), {})  # already done
    stats = again.train_phase(again.phases[1])
    self.assertEqual(stats["train_steps"], 3)
    self.assertEqual(again.phase_steps("patched"), 5)
    moved = [v.path for v, before in zip(
        [v for v in again.models.task_variables("patched") if id(v) not in
         {id(w) for w in again.models.tasks["patched"].head.weights}], patch_before)
        if not np.array_equal(v.numpy(), before)]
    self.assertNotEmpty(moved)  # phase 2 trains the patch
    for v, before in zip(again.models.base.variables, base_before):
      self.assertAllEqual(v.numpy(), before)  # the shared base never moves

  def test_default_phase_per_task_named_after_it(self):
    trainer = Trainer(resolve(tiny_config(steps=2)), self.workdir)
    self.assertEqual([(p.name, p.task, p.steps) for p in trainer.phases],
                     [("base", "base", 2), ("patched", "patched", 2)])
    self.assertEqual(set(trainer.steps), {"base", "patched"})

  def test_a_task_that_learns_nothing_by_gradient_recomputes_its_statistics(self):
    config = tiny_config(steps=2, patch="bn_stats")  # no last_layer: nothing has a gradient
    del config.tasks["base"]
    config.task_order = "patched"
    trainer = Trainer(resolve(config), self.workdir)
    models = trainer.models
    self.assertEmpty(models.trainable_variables("patched"))
    stats_before = [v.numpy().copy() for v in models.task_variables("patched")
                    if "moving" in v.name]
    head_before = [v.numpy().copy() for v in models.tasks["patched"].head.weights]
    self.assertEqual(trainer.train_phase(trainer.phases[0])["train_steps"], 2)
    moved = [not np.array_equal(v.numpy(), b) for v, b in zip(
        [v for v in models.task_variables("patched") if "moving" in v.name], stats_before)]
    self.assertTrue(all(moved))
    for v, before in zip(models.tasks["patched"].head.weights, head_before):
      self.assertAllEqual(v.numpy(), before)
    self.assertEqual(int(trainer.steps["patched"].numpy()), 2)

  def test_head_lr_gives_the_classifier_its_own_optimizer(self):
    config = tiny_config(steps=2)
    del config.tasks["base"]
    config.task_order = "patched"
    config.tasks.patched.head_lr = 1e-9  # the classifier barely moves; the patch does
    trainer = Trainer(resolve(config), self.workdir)
    models = trainer.models
    self.assertEqual(set(trainer.optimizers), {"patched", "patched__head"})
    head = models.tasks["patched"].head.weights
    head_ids = {id(v) for v in head}
    patch = [v for v in models.trainable_variables("patched") if id(v) not in head_ids]
    before = {id(v): v.numpy().copy() for v in head + patch}
    trainer.train_phase(trainer.phases[0])
    head_moved = max(float(np.abs(v.numpy() - before[id(v)]).max()) for v in head)
    patch_moved = max(float(np.abs(v.numpy() - before[id(v)]).max()) for v in patch)
    self.assertGreater(patch_moved, 1e-4)
    self.assertLess(head_moved, 1e-6)
    # The checkpoint holds both optimizers: a new trainer restores them.
    again = Trainer(resolve(config), self.workdir)
    self.assertTrue(again.restore())

  def test_recompute_statistics_first_then_keep_them(self):
    config = tiny_config(steps=2, patch="scale_bias(statistics=recompute),last_layer")
    del config.tasks["base"]
    config.task_order = "patched"
    trainer = Trainer(resolve(config), self.workdir)
    models = trainer.models
    moving = [v for v in models.task_variables("patched") if "moving" in v.name]
    base = [v.numpy().copy() for v in moving]
    recomputed = {}
    original = trainer.recompute_statistics

    def spy(name, seed, layers=None):
      original(name, seed, layers)
      if layers:  # the before-training recompute: remember what it produced
        recomputed.update({id(v): v.numpy().copy() for v in moving})
    trainer.recompute_statistics = spy
    trainer.train_phase(trainer.phases[0])
    self.assertLen(recomputed, len(moving))  # it ran, before training, on every patched BN
    # Fitted to the target (the random base's deep activations are tiny, so its first layers
    # show it: bn_Conv1 sees the images themselves)...
    changed = [v.path for v, b in zip(moving, base)
               if not np.allclose(recomputed[id(v)], b, rtol=1e-3, atol=1e-3)]
    self.assertTrue(any("bn_Conv1" in p for p in changed), changed)
    for v in moving:  # ...then kept while gamma and beta learn
      self.assertAllEqual(v.numpy(), recomputed[id(v)], msg=v.path)

  def test_phase_names_must_be_unique(self):
    with self.assertRaisesRegex(ValueError, "unique"):
      Trainer(_spec(), self.workdir,
              phases=lambda t: [Phase("a", "patched", 1), Phase("a", "patched", 1)])


if __name__ == "__main__":
  tf.test.main()
