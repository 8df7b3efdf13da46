"""The paper's section 4 analysis: one bias changes how many times a ReLU network folds its input.

The two-layer network of Montufar et al. (2014), with p = 2 hidden units,

  q(x; b) = 2 ReLU(v0 - v1 + b2),   v0 = ReLU(x + b0),   v1 = ReLU(2x - 1 + b1),

composed k times, F = q(...q(x; b(1))...; b(k)), folds the real line up to 2^k times. With k = 2 and
every bias zero except b0 of the first layer, the preimage F^-1([0.2, 0.4]) has 4, 3, 2, 1 and then
0 connected components as b0 goes from 0 to below -0.45 (the paper's Figure 2): a last layer (a
linear map of F) cannot separate what F folds together, but one bias can unfold it.

Everything here is exact: F is continuous and piecewise linear, so it is carried as its breakpoints
and values, each ReLU inserting its exact zero crossings, and preimages are unions of intervals
solved on each linear piece.

Example:
  biases = [(-0.125, 0.0, 0.0), (0.0, 0.0, 0.0)]
  preimage_intervals(biases, 0.2, 0.4)   # two intervals
  count_components(biases, 0.2, 0.4)     # 2
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DOMAIN = (-2.0, 3.0)  # F vanishes outside [-1, 1.5] for the biases studied here


class PiecewiseLinear:
  """A continuous piecewise-linear function of one variable: values at sorted breakpoints."""

  def __init__(self, xs, ys):
    self.xs = np.asarray(xs, np.float64)
    self.ys = np.asarray(ys, np.float64)

  @classmethod
  def identity(cls, domain=DOMAIN) -> "PiecewiseLinear":
    return cls(list(domain), list(domain))

  def __call__(self, x):
    return np.interp(x, self.xs, self.ys)

  def affine(self, scale: float, shift: float) -> "PiecewiseLinear":
    return PiecewiseLinear(self.xs, scale * self.ys + shift)

  def __sub__(self, other: "PiecewiseLinear") -> "PiecewiseLinear":
    xs = np.union1d(self.xs, other.xs)
    return PiecewiseLinear(xs, self(xs) - other(xs))

  def relu(self) -> "PiecewiseLinear":
    xs, ys = [self.xs[0]], [self.ys[0]]
    for x0, x1, y0, y1 in zip(self.xs[:-1], self.xs[1:], self.ys[:-1], self.ys[1:]):
      if y0 * y1 < 0:  # the segment crosses zero: add the exact crossing as a breakpoint
        xs.append(x0 - y0 * (x1 - x0) / (y1 - y0))
        ys.append(0.0)
      xs.append(x1)
      ys.append(y1)
    return PiecewiseLinear(xs, np.maximum(ys, 0.0))


def fold_q(f: PiecewiseLinear, b: Sequence[float]) -> PiecewiseLinear:
  """q(f(x); b) for p = 2, as a PiecewiseLinear (b = (b0, b1, b2))."""
  v0 = f.affine(1.0, b[0]).relu()
  v1 = f.affine(2.0, -1.0 + b[1]).relu()
  return (v0 - v1).affine(1.0, b[2]).relu().affine(2.0, 0.0)


def folding_network(biases: Sequence[Sequence[float]], domain=DOMAIN) -> PiecewiseLinear:
  """F(x; b(1), ..., b(k)) as an exact PiecewiseLinear on `domain`."""
  f = PiecewiseLinear.identity(domain)
  for b in biases:
    f = fold_q(f, b)
  return f


def q_numpy(x, b):
  """Independent NumPy evaluation of q(x; b) (p = 2), for checks and plots."""
  v0 = np.maximum(0.0, x + b[0])
  v1 = np.maximum(0.0, 2.0 * x - 1.0 + b[1])
  return 2.0 * np.maximum(0.0, v0 - v1 + b[2])


def preimage_intervals(biases, lo: float, hi: float, domain=DOMAIN,
                       tol: float = 1e-12) -> list[tuple[float, float]]:
  """The exact preimage of [lo, hi] under F as sorted, disjoint closed intervals."""
  f = folding_network(biases, domain)
  pieces = []
  for x0, x1, y0, y1 in zip(f.xs[:-1], f.xs[1:], f.ys[:-1], f.ys[1:]):
    if y0 == y1:
      if lo <= y0 <= hi:
        pieces.append((x0, x1))
      continue
    # On this piece f is linear: solve lo <= f(x) <= hi exactly.
    t_lo, t_hi = sorted(((lo - y0) / (y1 - y0), (hi - y0) / (y1 - y0)))
    t_lo, t_hi = max(t_lo, 0.0), min(t_hi, 1.0)
    if t_lo <= t_hi:
      pieces.append((x0 + t_lo * (x1 - x0), x0 + t_hi * (x1 - x0)))
  merged: list[list[float]] = []
  for a, b in sorted(pieces):
    if merged and a <= merged[-1][1] + tol:
      merged[-1][1] = max(merged[-1][1], b)
    else:
      merged.append([a, b])
  return [(a, b) for a, b in merged]


def count_components(biases, lo: float, hi: float, domain=DOMAIN) -> int:
  """Connected components of F^-1([lo, hi])."""
  return len(preimage_intervals(biases, lo, hi, domain))


def figure2_biases(b0: float) -> list[tuple[float, float, float]]:
  """The paper's Figure 2 setting: k = 2, every bias zero except b0 of the first layer."""
  return [(b0, 0.0, 0.0), (0.0, 0.0, 0.0)]
