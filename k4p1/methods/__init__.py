"""Method families, one folder each, found by k4p1.plugins (nothing here lists them).

  taps/       TAPS: gated weight deltas whose L1-penalised scores pick the task-specific layers
  swr/        SWR: a cost-conditioned policy picks the layers to reparametrize, in stages
  multitask/  joint multi-task training: tasks at once on one shared backbone; samplers
  multires/   one network at several resolutions; model cascades and their signature

Each folder's __init__.py registers its `k4p1.plugins.Method` (and its patch kinds, samplers or
signature kinds); methods never import each other, and the core never imports them.
"""
