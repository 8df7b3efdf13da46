r"""Appendix A of K for the price of 1: which parameters can move a folded 2D embedding.

Settings: configs/analysis/appendix_a_2d.py (configs/analysis/ holds experiment settings that are
not train.py configs).

For each embedding size m, pretrain the network of configs/analysis/appendix_a_2d.py on the two-disk
layout, then fine-tune a copy on the one-disk layout training only: biases, scales, biases +
scales, logits + biases + scales, logits, or everything. It does this from the pretrained state
and from one random state, which is the same for every regime. It scores balanced accuracy
(mean of the two classes' recalls) on a grid. It writes docs/appendix_a.json, a table, and one
decision-region figure per m (docs/appendix_a_m{m}.png).

Run:   python bench/appendix_a_2d.py --out_dir=docs
Smoke: python bench/appendix_a_2d.py --smoke --out_dir=/tmp/appendix_a
"""

import json
import os

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT_DIR = flags.DEFINE_string("out_dir", "docs", "Where appendix_a.json and the figures go.")
_SMOKE = flags.DEFINE_bool("smoke", False, "A few steps, m = 2 only: pipeline check.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CENTRES, RADIUS = ((-0.5, 0.0), (0.5, 0.0)), 0.3


def pretrain_labels(p):
  import numpy as np
  return np.any([np.hypot(p[:, 0] - cx, p[:, 1] - cy) < RADIUS for cx, cy in CENTRES], axis=0)


def transfer_labels(p):
  import numpy as np
  cx, cy = CENTRES[0]
  return np.hypot(p[:, 0] - cx, p[:, 1] - cy) < RADIUS


def main(argv):
  del argv
  machine = common.machine()  # the load average before measuring
  import keras
  import numpy as np
  import tensorflow as tf
  from k4p1.patches import parse_patch, patch_model
  from k4p1.patches.channel_scale_bias import ChannelScaleBiasPatch

  from k4p1 import config as config_lib
  cfg = config_lib.load(os.path.join(ROOT, "configs", "analysis", "appendix_a_2d.py")
                        + (":smoke" if _SMOKE.value else ""), lock=False)

  rng = np.random.RandomState(cfg.seed)
  train_x = rng.uniform(-1, 1, (cfg.train_points, 2)).astype("float32")
  g = np.linspace(-1, 1, cfg.grid, dtype="float32")
  grid_x = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)

  def one_hot(labels):
    return np.eye(2, dtype="float32")[labels.astype(int)]

  def build(m, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((2,))
    x = inputs
    for i, width in enumerate(cfg.hidden):
      x = keras.layers.Dense(width, activation="relu", name=f"hidden_{i}")(x)
    x = keras.layers.Dense(m, name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))

  def train(model, variables, labels, steps):
    opt = keras.optimizers.Adam(cfg.lr)
    x, y = tf.constant(train_x), tf.constant(one_hot(labels))

    @tf.function
    def step():
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, model(x)))
      opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
      return loss

    for _ in range(steps):
      step()

  def balanced_accuracy(model, labels_fn):
    pred = np.argmax(model.predict(grid_x, verbose=0, batch_size=4096), -1).astype(bool)
    truth = labels_fn(grid_x)
    return float((np.mean(pred[truth]) + np.mean(~pred[~truth])) / 2), pred

  def fine_tune_variables(patched, regime):
    chosen = []
    for layer in patched.layers:
      if isinstance(layer, ChannelScaleBiasPatch) and layer.base_name != "logits":
        if regime in ("biases", "biases_scales", "logits_biases_scales"):
          chosen.append(layer.bias)
        if regime in ("scales", "biases_scales", "logits_biases_scales"):
          chosen.append(layer.scale)
    if regime in ("logits", "logits_biases_scales"):
      chosen += patched.get_layer("logits_t").layer.trainable_weights
    if regime == "all":
      chosen = [v for v in patched.trainable_weights
                if not any(v is w for layer in patched.layers
                           if isinstance(layer, ChannelScaleBiasPatch) and layer.base_name == "logits"
                           for w in (layer.scale, layer.bias))]
    return chosen

  results, figures = [], {}
  for m in cfg.embedding_dims:
    pretrained = build(m, cfg.seed)
    train(pretrained, pretrained.trainable_weights, pretrain_labels(train_x), cfg.pretrain_steps)
    pre_acc, pre_pred = balanced_accuracy(pretrained, pretrain_labels)
    random_state = build(m, cfg.seed + 1)
    panels = {"pretrain target": pretrain_labels(grid_x), "pretrained": pre_pred,
              "transfer target": transfer_labels(grid_x)}
    for start_name, start in (("pretrained", pretrained), ("random", random_state)):
      for regime in cfg.regimes:
        base = keras.models.clone_model(start)
        base.set_weights(start.get_weights())
        patched = patch_model(base, "t", parse_patch("channel_scale_bias")).model
        variables = fine_tune_variables(patched, regime)
        train(patched, variables, transfer_labels(train_x), cfg.finetune_steps)
        acc, pred = balanced_accuracy(patched, transfer_labels)
        n = int(sum(np.prod(v.shape) for v in variables))
        results.append({"m": m, "start": start_name, "regime": regime, "trained_parameters": n,
                        "balanced_accuracy": acc})
        panels[f"{start_name}: {regime}"] = pred
        print(f"m={m} {start_name:<10} {regime:<22} {n:>5} params  balanced acc {acc:.3f}",
              flush=True)
    results.append({"m": m, "start": "pretrained", "regime": "pretraining (two disks)",
                    "trained_parameters": int(pretrained.count_params()),
                    "balanced_accuracy": pre_acc})
    figures[m] = panels

  common.write_result(os.path.join(_OUT_DIR.value, "appendix_a.json"), json.loads(json.dumps(
      {"experiment": "appendix_a_2d", "smoke": _SMOKE.value, "config": cfg.to_dict(),
       **machine, "results": results}, default=list)))

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  for m, panels in figures.items():
    names = list(panels)
    cols = 3 + len(cfg.regimes)
    fig, axes = plt.subplots(2, cols, figsize=(2.2 * cols, 4.8))
    layout = [names[:3] + names[3:3 + len(cfg.regimes)], [None] * 3 + names[3 + len(cfg.regimes):]]
    for r, row in enumerate(layout):
      for c, name in enumerate(row):
        ax = axes[r][c]
        ax.set_xticks([])
        ax.set_yticks([])
        if name is None:
          ax.axis("off")
          continue
        ax.imshow(panels[name].reshape(cfg.grid, cfg.grid), origin="lower", extent=(-1, 1, -1, 1),
                  cmap="coolwarm", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
    fig.suptitle(f"Appendix A, embedding m = {m}: class 1 (red) after fine-tuning each parameter set")
    fig.tight_layout()
    common.save_figure(fig, os.path.join(_OUT_DIR.value, f"appendix_a_m{m}.png"), dpi=90)


if __name__ == "__main__":
  app.run(main)
