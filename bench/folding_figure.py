r"""The paper's Figure 2: one bias changes how many pieces of the input map into [0.2, 0.4].

Draws F(x) = q(q(x; b1); b2) (k = 2, p = 2, all biases zero except b0 of the first layer) for
b0 = 0, -0.075, -0.125, -0.425, shades the band [0.2, 0.4] and marks its exact preimage, and writes
the component counts (exact, k4p1.analysis.folding) to a JSON file.

Run: python bench/folding_figure.py --out_dir=docs
"""

import os

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_OUT_DIR = flags.DEFINE_string("out_dir", "docs", "Where folding.png and folding.json go.")

B0S = (0.0, -0.075, -0.125, -0.425)
LO, HI = 0.2, 0.4


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from k4p1.analysis import folding

  os.makedirs(_OUT_DIR.value, exist_ok=True)
  x = np.linspace(-0.6, 1.4, 4001)
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
  rows = []
  for ax, b0 in zip(axes, B0S):
    biases = folding.figure2_biases(b0)
    f = folding.folding_network(biases)
    intervals = folding.preimage_intervals(biases, LO, HI)
    rows.append({"b0": b0, "components": len(intervals),
                 "preimage": [[round(float(a), 6), round(float(b), 6)] for a, b in intervals]})
    ax.axhspan(LO, HI, color="tab:orange", alpha=0.25, label="[0.2, 0.4]")
    for a, b in intervals:
      ax.axvspan(a, b, color="tab:green", alpha=0.25)
    ax.plot(x, f(x), color="tab:blue", lw=1.6)
    ax.set_title(f"$b_0^{{(1)}} = {b0}$: {len(intervals)} component"
                 f"{'s' if len(intervals) != 1 else ''}")
    ax.set_xlabel("x")
  axes[0].set_ylabel("F(x)")
  fig.suptitle("Preimage of [0.2, 0.4] (green) under F = q(q(x)) as one bias changes "
               "(K for the price of 1, Figure 2)")
  fig.tight_layout()
  for r in rows:
    print(f"b0={r['b0']:+.3f}: {r['components']} components {r['preimage']}")
  common.save_figure(fig, os.path.join(_OUT_DIR.value, "folding.png"))
  common.write_result(os.path.join(_OUT_DIR.value, "folding.json"),
                      {"figure": "folding", "band": [LO, HI], "panels": rows})


if __name__ == "__main__":
  app.run(main)
