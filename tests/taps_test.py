"""The TAPS patch kind (k4p1/methods/taps/kind.py): gated weight deltas w + I(s >= tau) dw.

Numerics against NumPy for every gateable layer type, the straight-through gradient against a
manual tape, the L1 term, serialization, patch-file size, folding and bad input.
"""

import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from k4p1 import experiment, export, patches
from k4p1.methods.taps.report import gated_layers, taps_summary
from k4p1.backbones import Backbone
from k4p1.errors import ConfigError
from k4p1.export import serving_function
from k4p1.export.fold import fold_task
from k4p1.export.mixed import mixed_serving_function
from k4p1.export.tflite import run_tflite, tflite_model
from k4p1.model import TaskModels
from k4p1.methods.taps.kind import TapsOptions, TapsPatch, base_kernel, gate, penalty
from k4p1.testing import (calibrated_mobilenet_v2, random_images, run_binary, tiny_config,
                          tiny_task)
from k4p1.train.steps import classification_loss, make_train_step
from k4p1.train.trainer import Trainer


def _conv_np(x, k, b):
  """'valid' stride-1 Conv2D in float64: out[n,i,j,o] = sum x[n,i+u,j+v,c] k[u,v,c,o] + b."""
  kh, kw = k.shape[:2]
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], h, w, k.shape[-1]))
  for u in range(kh):
    for v in range(kw):
      out += np.einsum("nijc,co->nijo", x[:, u:u + h, v:v + w, :], k[u, v])
  return out + b


def _depthwise_np(x, k, b):
  """'valid' stride-1 DepthwiseConv2D: out[..., c*m + j] = sum x[..., c] k[u, v, c, j] + b."""
  kh, kw, c, m = k.shape
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], h, w, c, m))
  for u in range(kh):
    for v in range(kw):
      out += np.einsum("nijc,cm->nijcm", x[:, u:u + h, v:v + w, :], k[u, v])
  return out.reshape(x.shape[0], h, w, c * m) + b


CASES = {  # layer, input shape, NumPy forward(x, kernel, bias)
    "conv2d": (lambda: keras.layers.Conv2D(4, 3, name="conv"), (2, 6, 6, 3), _conv_np),
    "depthwise": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
                  (2, 6, 6, 3), _depthwise_np),
    "dense": (lambda: keras.layers.Dense(5, name="dense"), (4, 7),
              lambda x, k, b: x @ k + b),
    "einsum": (lambda: keras.layers.EinsumDense("btd,dhk->bthk", (3, 2, 4), bias_axes="hk",
                                                name="qkv"), (2, 3, 6),
               lambda x, k, b: np.einsum("btd,dhk->bthk", x, k) + b),
}


def _gated(case, seed=0):
  make, shape, reference = CASES[case]
  keras.utils.set_random_seed(seed)
  layer = make()
  x = np.random.RandomState(seed).randn(*shape).astype(np.float32)
  layer(x)
  layer.bias.assign(np.random.RandomState(seed + 1).randn(*layer.bias.shape))
  patch = TapsPatch(layer, task="t")
  patch(x)
  patch.init_from_base(layer)
  patch.delta.assign(np.random.RandomState(seed + 2).randn(*patch.delta.shape) * 0.5)
  return layer, patch, x, reference


class GatedLayerTest(tf.test.TestCase):

  def test_each_layer_type_against_numpy_gate_on_and_off(self):
    for case in CASES:
      with self.subTest(case):
        layer, patch, x, reference = _gated(case)
        x64 = x.astype(np.float64)
        kernel = base_kernel(layer).numpy().astype(np.float64)
        delta = patch.delta.numpy().astype(np.float64)
        bias = layer.bias.numpy().astype(np.float64)
        patch.score.assign(0.15)  # on: w + dw
        on = reference(x64, kernel + delta, bias)
        self.assertAllClose(patch(x), on, rtol=1e-5, atol=1e-5)
        self.assertTrue(patch.active)
        patch.score.assign(0.05)  # off: exactly the base layer
        self.assertFalse(patch.active)
        self.assertAllClose(patch(x), reference(x64, kernel, bias), rtol=1e-5, atol=1e-5)
        self.assertAllEqual(patch(x), layer(x))
        # The shared layer's own kernel never changes.
        self.assertAllEqual(base_kernel(layer).numpy(), kernel.astype(np.float32))

  def test_straight_through_gradient_equals_the_linear_relaxation(self):
    """d loss / d s through the gate equals d loss / d s of w_base + s * dw (paper Eq. 3)."""
    for case in CASES:
      with self.subTest(case):
        layer, patch, x, _ = _gated(case)
        patch.score.assign(0.3)
        with tf.GradientTape() as tape:
          loss = tf.reduce_sum(tf.sin(patch(x)))
        g_score, g_delta = tape.gradient(loss, [patch.score, patch.delta])
        # Manual: the layer's kernel read as w_base + s * dw, gradient through s and dw.
        s = tf.Variable(1.0)  # I(0.3 >= 0.1) = 1: the forward value the gate gives
        kernel_var = base_kernel(layer)
        with tf.GradientTape() as tape:
          kernel = kernel_var + s * patch.delta
          with keras.StatelessScope(state_mapping=[(kernel_var, kernel)]):
            manual = tf.reduce_sum(tf.sin(layer(x)))
        m_score, m_delta = tape.gradient(manual, [s, patch.delta])
        self.assertAllClose(loss, manual, rtol=1e-6, atol=1e-6)
        self.assertAllClose(g_score, m_score, rtol=1e-4, atol=1e-4)
        self.assertAllClose(g_delta, m_delta, rtol=1e-5, atol=1e-6)
        self.assertGreater(abs(float(g_score)), 0.0)

  def test_gate_is_exact_and_passes_gradient_one(self):
    for value, expected in ((0.05, 0.0), (0.1, 1.0), (0.7, 1.0), (-1.0, 0.0)):
      s = tf.Variable(value)
      with tf.GradientTape() as tape:
        g = gate(s, 0.1)
      self.assertEqual(float(g), expected)
      self.assertEqual(float(tape.gradient(g, s)), 1.0)

  def test_a_gated_off_delta_gets_no_gradient(self):
    _, patch, x, _ = _gated("dense")
    patch.score.assign(0.0)
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(patch(x) ** 2)
    self.assertAllEqual(tape.gradient(loss, patch.delta), np.zeros(patch.delta.shape))

  def test_serialization_round_trip(self):
    layer, patch, x, _ = _gated("conv2d")
    patch.score.assign(0.4)
    config = keras.saving.serialize_keras_object(patch)
    again = keras.saving.deserialize_keras_object(config)
    again(x)
    again.set_weights(patch.get_weights())
    self.assertEqual((again.task, again.base_name, again.tau, again.init),
                     ("t", "conv", 0.1, 0.15))
    self.assertAllClose(again(x), patch(x), rtol=1e-6, atol=1e-6)

  def test_refuses_layers_it_cannot_gate(self):
    with self.assertRaisesRegex(ValueError, "TAPS gates .* 'bn' is a BatchNormalization"):
      TapsPatch(keras.layers.BatchNormalization(name="bn"), task="t")
    with self.assertRaisesRegex(ValueError, "SeparableConv2D"):
      TapsPatch(keras.layers.SeparableConv2D(2, 3, name="sep"), task="t")


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _attention_np(x, w, b, key_dim):
  """Keras MultiHeadAttention (self-attention, no mask) in float64 from its kernels/biases."""
  q, k, v = (np.einsum("btd,dhk->bthk", x, w[u]) + b[u] for u in ("query", "key", "value"))
  scores = np.einsum("bshk,bthk->bhts", k, q / np.sqrt(key_dim))
  out = np.einsum("bhts,bshk->bthk", _softmax(scores), v)
  return np.einsum("bthk,hkd->btd", out, w["output"]) + b["output"]


class GatedAttentionTest(tf.test.TestCase):
  """A MultiHeadAttention's four projections are four gated units."""

  def test_against_numpy_per_unit_and_folds(self):
    keras.utils.set_random_seed(0)
    mha = keras.layers.MultiHeadAttention(2, 3, name="attention")
    x = np.random.RandomState(0).randn(2, 5, 6).astype(np.float32)
    mha(x, x)
    patch = TapsPatch(mha, task="t")
    patch(x, x)
    self.assertEqual(patch.units, ["query", "key", "value", "output"])
    self.assertEqual([v.name for v in patch.scores],
                     ["score_query", "score_key", "score_value", "score_output"])
    rng = np.random.RandomState(1)
    for d in patch.deltas:
      d.assign(rng.randn(*d.shape).astype(np.float32) * 0.3)
    dense = {u: getattr(mha, f"_{u}_dense") for u in patch.units}
    w = {u: base_kernel(l).numpy().astype(np.float64) for u, l in dense.items()}
    b = {u: l.bias.numpy().astype(np.float64) for u, l in dense.items()}
    deltas = {u: d.numpy().astype(np.float64) for u, d in zip(patch.units, patch.deltas)}
    x64 = x.astype(np.float64)
    for on in ((), ("query",), ("value", "output"), tuple(patch.units)):
      with self.subTest(on=on):
        for unit, score in zip(patch.units, patch.scores):
          score.assign(0.5 if unit in on else 0.0)
        self.assertEqual(patch.active_units, [u in on for u in patch.units])
        merged = {u: w[u] + (deltas[u] if u in on else 0.0) for u in patch.units}
        self.assertAllClose(patch(x, x), _attention_np(x64, merged, b, 3), rtol=1e-5,
                            atol=1e-5)
        self.assertLen(patch.omitted_variables(), 4 - len(on))
        plain = patch.to_plain("plain")
        self.assertIsInstance(plain, keras.layers.MultiHeadAttention)
        self.assertAllClose(plain(x, x), patch(x, x), rtol=1e-5, atol=1e-5)
    self.assertAllClose(patch.delta_size, 4 * 6 * 2 * 3)

  def test_vit_backbone_gates_attention_and_mlp(self):
    from k4p1.backbones import build_backbone
    from k4p1.config import BackboneSpec
    models = TaskModels(build_backbone(BackboneSpec("vit", alpha=0.35, input_size=32,
                                                    weights="none")))
    plain = models.add(tiny_task("p", "last_layer"), 3)
    task = models.add(tiny_task("t", "taps,last_layer"), 3)
    task.head.set_weights(plain.head.get_weights())
    s = taps_summary(models, "t")
    # 4 blocks of (4 projections + 2 MLP layers) + the patch embedding.
    self.assertLen(s["layers"], 25)
    self.assertEqual((s["active_layers"], s["active_fraction"]), (25, 1.0))
    self.assertIn("block0_attention/query", s["layers"])
    weights = sum(int(np.prod(l.kernel.shape)) for l in models.base.layers
                  if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense)))
    weights += sum(int(np.prod(base_kernel(getattr(l, f"_{u}_dense")).shape))
                   for l in models.base.layers if isinstance(l, keras.layers.MultiHeadAttention)
                   for u in ("query", "key", "value", "output"))
    self.assertEqual(s["possible_parameters"], weights)
    x = random_images(2)
    self.assertAllEqual(task.model(x, training=False), plain.model(x, training=False))
    for layer in gated_layers(models, "t"):
      for d in layer.deltas:
        d.assign(np.random.RandomState(2).randn(*d.shape).astype(np.float32) * 0.05)
    expected = task.model(x, training=False).numpy()
    self.assertGreater(np.abs(expected - plain.model(x, training=False).numpy()).max(), 1e-2)
    self.assertAllClose(fold_task(models, "t")(x), expected, rtol=1e-5,
                        atol=1e-5 * np.abs(expected).max())


class PenaltyAndOptionsTest(tf.test.TestCase):

  def _layers(self, scores):
    out = []
    for s in scores:
      _, patch, _, _ = _gated("dense")
      patch.score.assign(s)
      out.append(patch)
    return out

  def test_l1_term_value(self):
    layers = self._layers([0.2, -0.3, 0.05])
    self.assertAllClose(penalty(layers, TapsOptions(lam=0.6)), 0.6 / 3 * 0.55)  # paper: lam/L
    self.assertAllClose(penalty(layers, TapsOptions(lam=0.6, l1_divisor=52)), 0.6 / 52 * 0.55)
    self.assertIsNone(penalty(layers, TapsOptions(lam=0.0)))
    warm = TapsOptions(lam=0.6, warmup_steps=10)
    self.assertAllClose(penalty(layers, warm, tf.constant(9, tf.int64)), 0.0)
    self.assertAllClose(penalty(layers, warm, tf.constant(10, tf.int64)), 0.11)

  def test_options_parse_and_bad_values_fail_clearly(self):
    spec = patches.parse_patch("taps(lam=0.25,tau=0.2,init=0.3),scale_bias,last_layer")
    self.assertEqual(patches.options(spec, "taps"), TapsOptions(lam=0.25, tau=0.2, init=0.3))
    self.assertIn("taps", patches.label(spec))
    for text, message in (("taps(lam=-1)", "lam .* must be >= 0"),
                          ("taps(tau=0)", r"tau must be in \(0, 1\]"),
                          ("taps(tau=1.5)", r"tau must be in \(0, 1\]"),
                          ("taps(tau=0.3,init=0.2)", "init must be >= tau"),
                          ("taps(warmup_steps=-2)", "must be >= 0"),
                          ("taps(lamda=1)", "has no option 'lamda'.*lam"),
                          ("taps,depthwise", "either 'taps' or 'depthwise'")):
      with self.subTest(text), self.assertRaisesRegex(ConfigError, message):
        patches.parse_patch(text)

  def test_a_model_without_gateable_layers_is_refused(self):
    inputs = keras.Input((4, 4, 3))
    base = keras.Model(inputs, keras.layers.BatchNormalization()(inputs))
    with self.assertRaisesRegex(ValueError, "match no layer.*Conv2D, DepthwiseConv2D, Dense"):
      patches.patch_model(base, "t", patches.parse_patch("taps"))


class TapsOnMobileNetTest(tf.test.TestCase):

  def _models(self):
    backbone = calibrated_mobilenet_v2()
    models = TaskModels(backbone)
    task = models.add(tiny_task("t", "taps(lam=1.0),scale_bias,last_layer"), 3)
    return backbone, models, task

  def test_fresh_patch_equals_base_and_every_conv_is_gated(self):
    backbone, models, task = self._models()
    gated = [l for l in patches.patch_layers_of(task.model) if isinstance(l, TapsPatch)]
    convs = [l for l in backbone.model.layers
             if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    self.assertEqual(sorted(l.base_name for l in gated), sorted(l.name for l in convs))
    # A fresh gate adds a zero delta: exactly the base's outputs.
    plain = models.add(tiny_task("p", "last_layer"), 3)
    alone = models.add(tiny_task("q", "taps,last_layer"), 3)
    alone.head.set_weights(plain.head.get_weights())
    x = random_images(2)
    self.assertAllEqual(alone.model(x, training=False), plain.model(x, training=False))
    # The L1 term through TaskModels: lam / L * sum |s| with every score at its init.
    self.assertAllClose(models.penalty("t"), 1.0 / len(gated) * 0.15 * len(gated))

  def test_patch_file_drops_inactive_deltas_and_fold_matches(self):
    backbone, models, task = self._models()
    gated = [l for l in patches.patch_layers_of(task.model) if isinstance(l, TapsPatch)]
    rng = np.random.RandomState(0)
    for layer in gated:
      layer.delta.assign(rng.randn(*layer.delta.shape).astype(np.float32) * 0.02)
    workdir = tempfile.mkdtemp()
    all_on = export.save_patch(models, "t", os.path.join(workdir, "on.k4p1.npz"))
    off = gated[: len(gated) // 2]
    for layer in off:
      layer.score.assign(0.0)
    path = os.path.join(workdir, "half.k4p1.npz")
    half = export.save_patch(models, "t", path)
    saved = 4 * sum(l.delta_size for l in off)
    self.assertLess(half, all_on - 0.9 * saved)   # npz and JSON overheads aside
    x = random_images(4)
    expected = task.model(x, training=False).numpy()
    scale = float(np.max(np.abs(expected)))
    # Reloaded onto a fresh set of task models: the same outputs, inactive deltas zero.
    other = TaskModels(Backbone(backbone.model, backbone.input_size, backbone.preprocessing,
                                backbone.spec))
    again = export.add_task_from_patch(other, path)
    self.assertAllClose(again.model(x, training=False), expected, rtol=1e-6, atol=1e-6 * scale)
    again_gated = {l.base_name: l for l in patches.patch_layers_of(again.model)
                   if isinstance(l, TapsPatch)}
    for layer in off:
      self.assertFalse(again_gated[layer.base_name].delta.numpy().any())
    # Fold: plain Keras layers with the active deltas merged in.
    # (Folding BN into kernels reorders float32 sums over 52 perturbed layers: 1e-4 of the
    # logits' scale; the deltas themselves move the logits by far more, checked below.)
    folded = fold_task(models, "t")
    self.assertFalse([l for l in folded.layers[2].layers if isinstance(l, patches.PatchLayer)])
    self.assertAllClose(folded(x), expected, rtol=1e-4, atol=1e-4 * scale)
    for layer in gated:
      layer.score.assign(0.0)
    self.assertGreater(np.abs(task.model(x, training=False).numpy() - expected).max(),
                       100 * 1e-4 * scale)


  def test_golden_counts_mobilenet_v2_224(self):
    """--mode=params's TAPS table: 52 gateable layers adding 2,189,760 parameters when all are
    on (every conv kernel of MobileNetV2 1.0: the base's 2,257,984 less its 68,224 BN ones)."""
    from k4p1.backbones import build_backbone
    from k4p1.config import BackboneSpec
    from k4p1.analysis.report import task_parameters
    models = TaskModels(build_backbone(BackboneSpec("mobilenet_v2", alpha=1.0, input_size=224,
                                                    weights="none")))
    models.add(tiny_task("t", "taps,scale_bias,last_layer"), 1000)
    s = taps_summary(models, "t")
    self.assertEqual((len(s["layers"]), s["possible_parameters"]), (52, 2_189_760))
    self.assertEqual(s["active_layers"], 52)  # every score starts at init >= tau
    self.assertEqual(task_parameters(models, "t")["components"]["taps"],
                     {"learned": 2_189_760 + 52, "fixed": 0})

  def test_resnet50_gates_its_53_convolutions(self):
    from k4p1.backbones import build_backbone
    from k4p1.config import BackboneSpec
    models = TaskModels(build_backbone(BackboneSpec(
        "keras_application", application="ResNet50", input_size=64, weights="none")))
    models.add(tiny_task("t", "taps,scale_bias,last_layer"), 10)
    s = taps_summary(models, "t")
    convs = [l for l in models.base.layers if isinstance(l, keras.layers.Conv2D)]
    self.assertEqual(len(s["layers"]), 53)  # conv1, 16 blocks x 3, 4 projection shortcuts
    self.assertEqual(sorted(s["layers"]), sorted(l.name for l in convs))
    self.assertEqual(s["possible_parameters"],
                     sum(int(np.prod(l.kernel.shape)) for l in convs))

  @pytest.mark.large  # ~30 s: a SavedModel and a TFLite conversion
  def test_saved_model_and_tflite_match_the_gated_model(self):
    backbone, models, task = self._models()
    gated = [l for l in patches.patch_layers_of(task.model) if isinstance(l, TapsPatch)]
    rng = np.random.RandomState(1)
    for i, layer in enumerate(gated):
      layer.delta.assign(rng.randn(*layer.delta.shape).astype(np.float32) * 0.01)
      layer.score.assign(0.0 if i % 3 else 0.5)
    images = random_images(4)
    expected = tf.nn.softmax(task.model(images, training=False)).numpy()
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, True)
    saved = export.export_saved_model(models, ["t"], os.path.join(workdir, "saved_model"))
    serve = tf.saved_model.load(saved).signatures["t"]
    rounded = images.astype(np.uint8)
    out = serve(images=tf.constant(rounded))["probabilities"].numpy()
    want = tf.nn.softmax(task.model(rounded.astype(np.float32), training=False)).numpy()
    self.assertAllClose(out, want, rtol=1e-4, atol=1e-4)
    lite = run_tflite(tflite_model(models, ["t"]), "t", images)
    self.assertAllClose(lite, expected, rtol=1e-4, atol=1e-4)
    # `mixed` routes each example to its own task's graph: a second task with other deltas.
    other = models.add(tiny_task("u", "taps,scale_bias,last_layer"), 3)
    for layer in patches.patch_layers_of(other.model):
      if isinstance(layer, TapsPatch):
        layer.delta.assign(rng.randn(*layer.delta.shape).astype(np.float32) * 0.01)
    ids = np.array([0, 1, 1, 0], np.int32)
    mixed = mixed_serving_function(models, ["t", "u"])(images=tf.constant(rounded),
                                                      task_id=tf.constant(ids))
    alone = {n: serving_function(models, n)(images=tf.constant(rounded))["probabilities"]
             for n in ("t", "u")}
    for i, task_id in enumerate(ids):
      self.assertAllClose(mixed["probabilities"][i], alone["tu"[task_id]][i], rtol=1e-5,
                          atol=1e-6)
    self.assertGreater(float(tf.reduce_max(tf.abs(alone["t"] - alone["u"]))), 1e-3)


class TapsTrainingTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, True)

  def test_the_step_adds_the_l1_term(self):
    models = TaskModels(calibrated_mobilenet_v2())
    task = models.add(tiny_task("t", "taps(lam=3.0),last_layer"), 3)
    models.activate("t")
    variables = models.trainable_variables("t")
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.SGD(0.0)
    optimizer.build(variables)
    images, labels = random_images(8), np.arange(8) % 3
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    step = make_train_step(strategy, task.model, optimizer, variables, 8, 3,
                           penalty=lambda: models.penalty("t"))
    loss, _ = step(iter(dataset))
    logits = task.model(images, training=True)
    expected = classification_loss(logits, labels, 3, 8) + 3.0 * 0.15  # lam/L * L * init
    self.assertAllClose(loss, expected, rtol=1e-5, atol=1e-5)

  def test_incremental_training_scores_at_their_own_rate(self):
    config = tiny_config(steps=1, patch="taps(lam=20.0,score_lr=0.05),scale_bias,last_layer")
    del config.tasks["base"]
    config.task_order = "patched"
    trainer = Trainer(experiment.resolve(config), self.workdir)
    self.assertEqual(set(trainer.optimizers), {"patched", "patched__scores"})
    scores = [l.score for l in patches.patch_layers_of(trainer.models.tasks["patched"].model)
              if isinstance(l, TapsPatch)]
    self.assertEqual([v.name for v in trainer.optimizers["patched__scores"]._trainable_variables],
                     [v.name for v in scores])
    kernels = [v.numpy().copy() for v in trainer.models.shared_variables()]
    trainer.train_phase(trainer.phases[0])
    # Step 1: the deltas are still zero, so only the L1 term moves the scores: one TF1 RMSProp
    # step (mean square from 1) of gradient lam / L at score_lr, the same for every score.
    o = trainer.spec.optimizer
    g = 20.0 / len(scores)
    expected = 0.15 - 0.05 * g / np.sqrt(o.rho + (1 - o.rho) * g * g + o.epsilon)
    self.assertAllClose([float(v.numpy()) for v in scores], [expected] * len(scores),
                        rtol=1e-5, atol=1e-6)
    for v, before in zip(trainer.models.shared_variables(), kernels):
      self.assertAllEqual(v.numpy(), before)

  @pytest.mark.large  # ~35 s: two task models traced in one joint step
  def test_joint_taps_trains_the_base_and_each_tasks_deltas_under_its_own_loss(self):
    config = tiny_config(steps=2, patch="taps,scale_bias,last_layer")
    config.tasks.base.update(patch="taps,scale_bias,last_layer", train_base=False)
    config.multitask.update(tasks="base,patched", step="summed", steps=2)
    trainer = Trainer(experiment.resolve(config), self.workdir)
    (joint,) = trainer.phases
    models = trainer.models
    deltas = {t: [l.delta for l in patches.patch_layers_of(models.tasks[t].model)
                  if isinstance(l, TapsPatch)] for t in joint.tasks}
    kernels = [base_kernel(l) for l in models.base.layers
               if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    # Task a's loss reaches its own deltas and the shared kernels, never b's deltas.
    images, labels = random_images(4), np.arange(4) % 3
    with tf.GradientTape(persistent=True) as tape:
      loss = classification_loss(models.tasks["base"].model(images, training=True), labels, 3, 4)
    self.assertTrue(all(g is None for g in tape.gradient(loss, deltas["patched"])))
    self.assertTrue(all(g is not None for g in tape.gradient(loss, deltas["base"])))
    self.assertTrue(all(g is not None for g in tape.gradient(loss, kernels)))
    # Two joint steps: the shared kernels and both tasks' deltas move.
    before = {id(v): v.numpy().copy() for v in kernels + deltas["base"] + deltas["patched"]}
    trainer.train_phase(joint)
    moved = lambda vs: sum(not np.array_equal(v.numpy(), before[id(v)]) for v in vs)  # noqa: E731
    self.assertEqual(moved(kernels), len(kernels))
    self.assertEqual(moved(deltas["base"]), len(deltas["base"]))
    self.assertEqual(moved(deltas["patched"]), len(deltas["patched"]))


def _train(*args, timeout=900):
  return run_binary("train.py", *args, timeout=timeout)


class TapsBinaryTest(tf.test.TestCase):
  """The issue's acceptance commands."""

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, True)

  def test_params_lists_the_gateable_layers_of_mobilenet_v2_224(self):
    out = _train("--config=configs/taps.py", "--mode=params", f"--workdir={self.workdir}")
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    self.assertIn("TAPS can gate 52 layers; all active they would add 2,189,760 parameters",
                  out.stdout)
    self.assertRegex(out.stdout, r"51  Conv_1 +Conv2D +409,600")

  @pytest.mark.large  # ~80 s: trains the digits base, then TAPS
  def test_smoke_trains_and_prints_the_active_layers(self):
    out = _train("--config=configs/taps.py:smoke", f"--workdir={self.workdir}")
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    printed = re.search(r"Task digits_5_9: TAPS made (\d+) of 52 layers task-specific .*adding "
                        r"([\d,]+) parameters", out.stdout)
    self.assertIsNotNone(printed, out.stdout[-3000:])
    with open(os.path.join(self.workdir, "metrics.json")) as f:
      row = {r["task"]: r for r in json.load(f)["tasks"]}["digits_5_9"]
    s = row["taps"]
    self.assertEqual(int(printed.group(1)), s["active_layers"])
    self.assertEqual(int(printed.group(2).replace(",", "")), s["added_parameters"])
    self.assertEqual(s["added_parameters"],
                     sum(n for n, on in zip(s["sizes"], s["active"]) if on))
    self.assertEqual(row["components"]["taps"]["learned"], s["added_parameters"] + 52)
    # The patch file holds what the task keeps (4 bytes each, plus its JSON index), and none
    # of the gated-off deltas.
    kept, off = 4 * row["task_specific"], 4 * (s["possible_parameters"] - s["added_parameters"])
    self.assertBetween(row["patch_file_bytes"] - kept, 0, 60_000)
    if off:
      self.assertLess(row["patch_file_bytes"], kept + off)


if __name__ == "__main__":
  tf.test.main()
