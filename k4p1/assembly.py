"""The one assembly: spec -> shared backbone, task models, data.

The trainer, the parameter report's comparisons (k4p1.experiment.compare_totals), deploy and the
benchmarks build what a spec describes through `assemble`, so a backbone, a task's model and
its data are put together one way everywhere. Call it under a tf.distribute strategy's scope to
place the variables (the trainer does).

Example:
  built = assemble(spec, with_data=False)      # no dataset read: class counts only
  built.models.tasks["flowers"].model.summary()
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from k4p1 import data as data_lib
from k4p1.backbones import Backbone, build_backbone, for_sizes
from k4p1.config import ExperimentSpec
from k4p1.model import TaskModels


@dataclasses.dataclass
class Assembly:
  """What a spec builds: the backbone, every task model on it, and (optionally) their data."""
  backbone: Backbone
  models: TaskModels
  data: dict  # {task: k4p1.data.TaskData}; {} when built without data


def assemble(spec: ExperimentSpec, with_data: bool = True, num_classes: Optional[dict] = None,
             patch_of: Optional[Callable] = None) -> Assembly:
  """Builds `spec`'s backbone (at every task's resolution) and its task models.

  Args:
    with_data: read each task's dataset (class counts and names come from it); without, the
      class counts come from the dataset's declaration (k4p1.data.num_classes_of).
    num_classes: optional {task: classes}, used instead of either.
    patch_of: optional (task spec) -> PatchSpec: build each task with another patch (the
      parameter report's comparisons).
  """
  d = spec.data
  backbone = for_sizes(build_backbone(spec.backbone), [t.input_size for t in spec.tasks])
  models = TaskModels(backbone)
  data = {}
  for i, task in enumerate(spec.tasks):
    if patch_of is not None:
      task = dataclasses.replace(task, patch=patch_of(task))
    names = ()
    if with_data:
      data[task.name] = data_lib.load_task_data(task.dataset, models.input_spec(task),
                                                d.data_dir, d.download, d.cache,
                                                d.shuffle_buffer)
      n, names = data[task.name].num_classes, data[task.name].class_names
    elif num_classes and task.name in num_classes:
      n = num_classes[task.name]
    else:
      n = data_lib.num_classes_of(task.dataset, d.data_dir)
    models.add(task, n, seed=spec.train.seed + i, class_names=names)
  return Assembly(backbone, models, data)
