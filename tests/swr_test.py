"""SWR: the policy network and its binarization, hard Gumbel-softmax straight-through gradients,
the cost loss against NumPy, gates as graph inputs, the stages under the trainer (stage 2 moves
only the selected deltas; the others stay exactly zero and cost nothing in the patch file),
folding with zero overhead, bad options, and the acceptance commands of configs/swr_kws.py."""

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from k4p1 import config as config_lib
from k4p1 import experiment, patches
from k4p1.config import base_config, dataset_config, task_config
from k4p1.errors import ConfigError
from k4p1.export import fold
from k4p1.model import TaskModels
from k4p1.methods.swr import kind as swr_patch
from k4p1.testing import REPO_ROOT, calibrated_mobilenet_v2, run_binary, tiny_task
from k4p1.methods.swr import train as swr

CONFIG = os.path.join(REPO_ROOT, "configs", "swr_kws.py")


def _models(patch="swr,bn_stats,last_layer"):
  models = TaskModels(calibrated_mobilenet_v2())
  models.add(tiny_task("t", patch), 5)
  return models


def _perturb_deltas(models, seed=0):
  rng = np.random.RandomState(seed)
  for layer in swr_patch.swr_layers(swr_patch.task_layers(models, "t")):
    for delta in layer.deltas:
      delta.assign(rng.normal(0, 0.05, delta.shape).astype(np.float32))


class PolicyTest(tf.test.TestCase):

  def test_policy_shapes_and_binarization_at_one_half(self):
    policy = swr_patch.build_policy(units=7, hidden=16, seed=1)
    logits = policy(np.array([[0.3], [0.6]], np.float32))
    self.assertEqual(logits.shape, (2, 7, 2))
    self.assertEqual(len(policy.trainable_variables), 6)   # three linear layers
    final = policy.get_layer("policy_logits")
    kernel, bias = final.get_weights()
    bias = np.array([[2.0, 0.0] if i % 2 == 0 else [0.0, 2.0] for i in range(7)]).ravel()
    final.set_weights([np.zeros_like(kernel), bias.astype(np.float32)])
    q = swr_patch.reparametrize_probability(policy(np.array([[0.3]], np.float32))[0]).numpy()
    np.testing.assert_allclose(q[0::2], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    models = _models()
    units = len(swr.unit_sizes(models, "t"))
    policy = models.tasks["t"].auxiliary["policy"]
    final = policy.get_layer("policy_logits")
    kernel, _ = final.get_weights()
    bias = np.array([[0.1, 0.0] if i % 3 == 0 else [0.0, 0.1] for i in range(units)]).ravel()
    final.set_weights([np.zeros_like(kernel), bias.astype(np.float32)])
    chosen = swr_patch.decisions(models, "t", 0.5)
    np.testing.assert_array_equal(chosen, np.arange(units) % 3 == 0)

  def test_hard_gumbel_is_binary_samples_the_softmax_and_passes_gradients(self):
    logits = tf.constant([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])
    draws = np.stack([swr.hard_gumbel_gates(logits, 1.0, [0, i]).numpy() for i in range(4000)])
    self.assertTrue(np.all((draws == 0) | (draws == 1)))
    want = tf.nn.softmax(logits)[:, 0].numpy()    # Gumbel-max samples the softmax exactly
    np.testing.assert_allclose(draws.mean(0), want, atol=0.03)
    with tf.GradientTape() as tape:
      tape.watch(logits)
      gates = swr.hard_gumbel_gates(logits, 0.5, [3, 4])
      total = tf.reduce_sum(gates * tf.constant([1.0, 2.0, 3.0]))
    grad = tape.gradient(total, logits).numpy()
    self.assertTrue(np.all(np.abs(grad[:, 0]) > 0))   # straight-through: the softmax's gradient
    np.testing.assert_allclose(grad[:, 0], -grad[:, 1], rtol=1e-6)

  def test_cost_loss_against_numpy(self):
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(9, 2)).astype(np.float32)
    sizes = rng.randint(10, 1000, 9).astype(np.float64)
    w = sizes / sizes.sum()
    for c in (0.0, 0.3, 1.0):
      q = np.exp(logits[:, 0]) / np.exp(logits).sum(-1)
      want = (np.sum(w * q) - c) ** 2
      got = float(swr.cost_loss(tf.constant(logits), c, w.astype(np.float32)))
      self.assertAllClose(got, want, rtol=1e-5, atol=1e-7)
    # Batched over target costs: the mean of each cost's loss.
    batch = rng.normal(size=(4, 9, 2)).astype(np.float32)
    cs = np.array([0.1, 0.4, 0.7, 0.9], np.float32)
    q = np.exp(batch[..., 0]) / np.exp(batch).sum(-1)
    want = np.mean((np.sum(w * q, -1) - cs) ** 2)
    self.assertAllClose(float(swr.cost_loss(tf.constant(batch), cs, w.astype(np.float32))),
                        want, rtol=1e-5, atol=1e-7)

  def test_temperature_is_cosine_annealed(self):
    self.assertAllClose(float(swr.temperature_at(0, 100, 2.0, 0.5)), 2.0)
    self.assertAllClose(float(swr.temperature_at(50, 100, 2.0, 0.5)), 1.25)
    self.assertAllClose(float(swr.temperature_at(100, 100, 2.0, 0.5)), 0.5)
    self.assertAllClose(float(swr.temperature_at(250, 100, 2.0, 0.5)), 0.5)

  def test_layer_weights(self):
    models = _models()
    sizes = np.array(swr.unit_sizes(models, "t"), np.float64)
    np.testing.assert_allclose(swr.layer_weights(models, "t"), sizes / sizes.sum())
    np.testing.assert_allclose(swr.layer_weights(models, "t", "uniform"), 1 / len(sizes))
    # MobileNetV2 0.35: every conv/dense of the base is gated (52 layers), BN is not.
    self.assertEqual(len(sizes), 52)

  def test_bad_options(self):
    for text, pattern in [("swr(c=1.5)", r"\[0, 1\]"), ("swr(c=-0.1)", r"\[0, 1\]"),
                          ("swr(c_min=0.8,c_max=0.2)", "c_min must be <= c_max"),
                          ("swr(weighting=flops)", "weighting"), ("swr(init=random)", "init"),
                          ("swr(policy=0)", "policy stage"), ("swr,taps", "either"),
                          ("swr(policy_bn=moving)", "policy_bn"),
                          ("swr(cost_samples=0)", "cost_samples")]:
      with self.assertRaisesRegex(ConfigError, pattern, msg=text):
        patches.parse_patch(text + ",last_layer")


class GatesAsGraphInputsTest(tf.test.TestCase):

  def test_gates_input_selects_deltas_and_gradients_reach_the_policy(self):
    models = _models()
    _perturb_deltas(models)
    task = models.tasks["t"]
    x = tf.constant(np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)), tf.float32)
    gated = swr.conditioned_model(models, "t")
    units = len(swr.unit_sizes(models, "t"))
    self.assertEqual([tuple(i.shape) for i in gated.inputs], [(None, 32, 32, 3), (units,)])
    # gates = 1: the task model with every delta (its stored gates are 1: the super-net)
    np.testing.assert_allclose(gated([x, tf.ones(units)]), task.model(x), rtol=1e-4, atol=1e-4)
    # gates = 0: the base's output (the deltas change nothing)
    zero = gated([x, tf.zeros(units)]).numpy()
    swr.apply_decisions(models, "t", np.zeros(units, bool), zero_deltas="none")
    np.testing.assert_allclose(zero, task.model(x).numpy(), rtol=1e-4, atol=1e-4)
    base_features = models.base(task.frontend(x))
    want = task.head(keras.layers.GlobalAveragePooling2D()(base_features)).numpy()
    np.testing.assert_allclose(zero, want, rtol=1e-4, atol=1e-4)
    swr.apply_decisions(models, "t", np.ones(units, bool), zero_deltas="none")
    # Both losses reach the policy through the hard Gumbel gates.
    policy = task.auxiliary["policy"]
    weights = swr.layer_weights(models, "t").astype(np.float32)
    with tf.GradientTape(persistent=True) as tape:
      logits_p = policy(tf.constant([[0.3]]), training=True)[0]
      gates = swr.hard_gumbel_gates(logits_p, 1.0, [0, 1])
      logits = gated([x, gates], training=False)
      task_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
          tf.constant([0, 1, 2, 3]), logits, from_logits=True))
      cost = swr.cost_loss(logits_p, 0.3, weights)
    for loss in (task_loss, cost):
      grads = tape.gradient(loss, policy.trainable_variables)
      self.assertTrue(all(g is not None for g in grads))
      self.assertGreater(sum(float(tf.reduce_sum(tf.abs(g))) for g in grads), 0.0)


def _swr_config(patch="swr(supernet=1,policy=1,reparam=1),bn_stats,last_layer"):
  c = base_config()
  c.backbone.update(name="mobilenet_v2", alpha=0.35, input_size=32, weights="none")
  c.train.update(batch_size=16, eval_batch_size=64, checkpoint_every=1000, progress=False,
                 bn_recompute_batches=2)
  c.optimizer.update(name="adam", lr=0.01, schedule="cosine")
  low = dataset_config(source="digits", classes="0,1,2,3,4", augment="none")
  high = dataset_config(source="digits", classes="5,6,7,8,9", augment="none")
  c.tasks.low = task_config(dataset=low, patch="last_layer", train_base=True, steps=6)
  c.tasks.high = task_config(dataset=high, patch=patch, steps=4)
  c.task_order = "low,high"
  c.export.enabled = False
  return c


class StagesTest(tf.test.TestCase):
  """The three stages under the trainer on digits (MobileNetV2 0.35 @32)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.result = experiment.run(_swr_config(), cls.workdir, "train")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_phases_unselected_deltas_stay_zero_and_leave_the_patch_file(self):
    from k4p1.train.trainer import Trainer
    spec = experiment.resolve(_swr_config())
    trainer = Trainer(spec, self.workdir)
    self.assertEqual([p.name for p in trainer.phases],
                     ["low", "high.supernet", "high.policy", "high.reparam"])
    self.assertEqual([p.steps for p in trainer.phases], [6, 4, 4, 4])
    trainer.restore(require=True)  # the checkpoint holds every delta, gate and the policy
    layers = swr_patch.swr_layers(swr_patch.task_layers(trainer.models, "high"))
    on = [(d, layer.active_units[i]) for layer in layers for i, d in enumerate(layer.deltas)]
    selected = [d for d, a in on if a]
    unselected = [d for d, a in on if not a]
    self.assertTrue(selected and unselected, "expected a policy choosing some layers")
    for d in unselected:
      self.assertEqual(float(np.abs(d.numpy()).max()), 0.0, d.path)
    self.assertTrue(any(np.abs(d.numpy()).max() > 0 for d in selected))
    summary = self.result["tasks"][1]["swr"]
    self.assertEqual(summary["selected_layers"], len(selected))
    np.testing.assert_array_equal(swr_patch.decisions(trainer.models, "high", 0.3),
                                  [a for _, a in on])
    self.assertEqual(summary["added_parameters"],
                     sum(int(np.prod(d.shape)) for d in selected))
    with np.load(os.path.join(self.workdir, "patches", "high.k4p1.npz")) as f:
      meta = json.loads(f["__k4p1_meta__"].tobytes().decode())
    zeros = {e["path"] for e in meta["zeros"].values()}
    stored = {e["path"] for e in meta["variables"].values()}
    self.assertEqual(zeros, {d.path for d in unselected})
    self.assertTrue({d.path for d in selected} <= stored)

  def test_another_cost_starts_from_stage_1_and_trains_stage_2_only(self):
    from k4p1.train.trainer import Trainer
    stage1 = swr.stage1_path(self.workdir, "high")
    first = Trainer(experiment.resolve(_swr_config()), self.workdir)
    first.restore(require=True)
    policy = first.models.tasks["high"].auxiliary["policy"]
    want_policy = [v.numpy() for v in policy.weights]
    want_gates = swr_patch.decisions(first.models, "high", 0.9)
    self.assertGreater(want_gates.sum(), swr_patch.decisions(first.models, "high", 0.3).sum())
    config = _swr_config("swr(supernet=1,policy=1,reparam=1,c=0.9),bn_stats,last_layer")
    config.train.init_from = stage1
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    experiment.run(config, workdir, "train")
    config.train.init_from = ""
    second = Trainer(experiment.resolve(config), workdir)
    second.restore(require=True)
    for v, want in zip(second.models.tasks["high"].auxiliary["policy"].weights, want_policy):
      np.testing.assert_array_equal(v.numpy(), want)  # stage 1 was not trained again
    layers = swr_patch.swr_layers(swr_patch.task_layers(second.models, "high"))
    gates = [a for layer in layers for a in layer.active_units]
    np.testing.assert_array_equal(gates, want_gates)
    self.assertEqual({p.name: int(second.steps[p.name].numpy()) for p in second.phases},
                     {"low": 6, "high.supernet": 4, "high.policy": 4, "high.reparam": 4})
    # The base is the first run's: only task-specific weights moved.
    for a, b in zip(first.models.base.weights, second.models.base.weights):
      np.testing.assert_array_equal(a.numpy(), b.numpy())

  def test_the_same_cost_from_stage_1_reproduces_the_run(self):
    # Stage 1 does not depend on c, so sharing it is only a saving: the patch is the same.
    config = _swr_config()
    config.train.init_from = swr.stage1_path(self.workdir, "high")
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    experiment.run(config, workdir, "train")
    with np.load(os.path.join(self.workdir, "patches", "high.k4p1.npz")) as want, \
        np.load(os.path.join(workdir, "patches", "high.k4p1.npz")) as got:
      self.assertEqual(sorted(got.files), sorted(want.files))
      for key in want.files:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)

  def test_init_from_errors(self):
    stage1 = swr.stage1_path(self.workdir, "high")
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    config = _swr_config()
    config.train.init_from = os.path.join(self.workdir, "nothing_here")
    with self.assertRaisesRegex(ConfigError, "train.init_from not found"):  # before TF's work
      config_lib.check_paths(experiment.resolve(config), "train", workdir)
    with self.assertRaisesRegex(ConfigError, "no checkpoint there"):
      experiment.run(config, workdir, "train")
    other = _swr_config("scale_bias,last_layer")  # another model: variables do not match
    other.train.init_from = os.path.join(self.workdir, "checkpoints")  # no settings file
    with self.assertRaisesRegex(ConfigError, "does not fit this run's model"):
      experiment.run(other, workdir, "train")
    other = _swr_config()
    other.tasks.high.dataset.classes = "5,6,7,8"  # another task: stage 1 learned other data
    other.train.init_from = stage1
    with self.assertRaisesRegex(ConfigError, r"other settings: tasks\.1\.dataset\.classes"):
      experiment.run(other, workdir, "train")
    config.train.init_from = self.workdir  # a finished run: nothing left to train
    with self.assertRaisesRegex(ConfigError, "every phase is already trained"):
      experiment.run(config, workdir, "train")
    self.assertFalse(os.path.exists(workdir))  # a failed start leaves nothing behind

  def test_snapshots_replace_each_other_whole(self):
    from k4p1.train.snapshots import SNAPSHOT_SETTINGS
    from k4p1.train.trainer import Trainer
    trainer = Trainer(experiment.resolve(_swr_config()), self.workdir, with_data=False)
    path = os.path.join(tempfile.mkdtemp(), "snap")
    for _ in range(2):
      trainer.write_snapshot(path, {"swr": ["c"]})
    self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["snap"])  # no .tmp / .old
    with open(os.path.join(path, SNAPSHOT_SETTINGS)) as f:
      self.assertEqual(json.load(f)["free_options"], {"swr": ["c"]})
    self.assertIsNotNone(tf.train.latest_checkpoint(path))

  def test_a_workdir_with_checkpoints_resumes_them_not_init_from(self):
    config = _swr_config()
    config.train.init_from = os.path.join(self.workdir, "deleted_since")
    config_lib.check_paths(experiment.resolve(config), "train", self.workdir)  # not needed
    from k4p1.train.trainer import Trainer
    trainer = Trainer(experiment.resolve(config), self.workdir, with_data=False)
    self.assertTrue(trainer.restore())
    self.assertTrue(all(trainer.phase_done(p) for p in trainer.phases))

  def test_folds_with_zero_overhead(self):
    from k4p1.train.trainer import Trainer
    trainer = Trainer(experiment.resolve(_swr_config()), self.workdir)
    trainer.restore(require=True)
    models = trainer.models
    task = models.tasks["high"]
    folded = fold.fold_task(models, "high")
    x = np.random.RandomState(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(x), task.model(x, training=False), rtol=1e-4, atol=1e-4)
    count = lambda m: sum(int(np.prod(v.shape)) for v in m.weights)  # noqa: E731
    base_and_head = count(models.base) + count(task.head)
    self.assertLessEqual(count(folded), base_and_head)  # BN folded away: no extra weight


def test_swr_config_rejects_bad_values():
  with pytest.raises(ConfigError, match=r"\[0, 1\]"):
    experiment.resolve(config_lib.load(f"{CONFIG}:c=1.5"))
  with pytest.raises(ConfigError, match="bn must be stats"):
    config_lib.load(f"{CONFIG}:bn=gamma")


def test_config_takes_every_ablation_of_the_swr_table():
  # bench/swr_table.py's variants (Table 2, Figure 2a) as configs/swr_kws.py options.
  for options, check in (("staged=false", ("staged", False)), ("bn=affine", None),
                         ("init=supernet", ("init", "supernet")),
                         ("weighting=uniform", ("weighting", "uniform")),
                         ("supernet=0", ("supernet", 0.0)), ("policy=3,reparam=0.5", ("policy", 3.0))):
    (task,) = experiment.resolve(config_lib.load(f"{CONFIG}:c=0.1,{options}")).tasks
    if check:
      assert task.patch.option("swr", check[0]) == check[1], options
    else:
      assert task.patch.kinds == frozenset({"swr", "scale_bias"})  # + its own classifier


def test_params_prints_bc_resnet_8_and_the_cost_weights():
  workdir = tempfile.mkdtemp()
  try:
    out = run_binary("train.py", f"--config={CONFIG}", "--mode=params", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "317,984 learned weights (321,068 with this task's 12-way classifier" in out.stdout
    assert "SWR can reparametrize 43 of its layers" in out.stdout
    assert "final_conv               Conv2D              40,960       0.13715" in out.stdout
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.large
def test_smoke_runs_both_stages_and_exports_waveform_signatures():
  workdir = tempfile.mkdtemp()
  try:
    out = run_binary("train.py", f"--config={CONFIG}:smoke", f"--workdir={workdir}")
    assert out.returncode == 0, out.stderr[-3000:]
    for phase in ("kws.supernet", "kws.policy", "kws.reparam"):
      assert f"train {phase}" in out.stderr
    assert "SWR at c=0.3 reparametrized" in out.stdout
    serve = tf.saved_model.load(os.path.join(workdir, "saved_model")).signatures["kws"]
    assert list(serve.structured_input_signature[1]) == ["waveforms"]
    probabilities = serve(waveforms=tf.zeros([2, 16000]))["probabilities"].numpy()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def test_swr_refuses_joint_training():
  from k4p1.train.trainer import Trainer
  c = _swr_config()
  c.multitask.tasks = "low,high"
  with pytest.raises(ConfigError, match="cannot be trained jointly"):
    Trainer(experiment.resolve(c), tempfile.mkdtemp(), with_data=False)
