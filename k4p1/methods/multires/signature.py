"""The `cascade` serving signature: a model cascade (cascade.py) run in the graph
with per-example early exit.

Every stage resizes the original images of the examples still undecided to its task's
resolution and runs its task model on those only (a stage with none left is skipped); the
examples whose largest probability reaches the stage's threshold take its output, the rest go
on. The outputs are per example: `probabilities` (of the deciding stage), `classes`, `stage`
(the index of the deciding stage).

Example:
  serve = cascade_serving_function(models, Cascade((Stage("r96", 0.8), Stage("r160", 0.0))))
  serve(tf.zeros([4, 200, 300, 3], tf.uint8))["stage"]
"""

from __future__ import annotations

import tensorflow as tf

import os

from k4p1.errors import DeployError
from k4p1.export.saved_model import SIGNATURE_KINDS, Signature
from k4p1.methods.multires.cascade import Cascade

CASCADE_SIGNATURE = "cascade"
CASCADE_INDEX = os.path.join("assets.extra", "k4p1_cascade.json")


def check_cascade(models, cascade: Cascade):
  """Raises DeployError unless every stage is a task of `models` and all share their classes."""
  unknown = [s.model for s in cascade.stages if s.model not in models.tasks]
  if unknown:
    raise DeployError(f"Cascade stages name {unknown}, which are not tasks of this model. "
                      f"Tasks: {sorted(models.tasks)}")
  counts = {s.model: models.tasks[s.model].num_classes for s in cascade.stages}
  if len(set(counts.values())) > 1:
    raise DeployError(f"A cascade's models must predict the same classes; these have "
                      f"{counts} classes.")


def cascade_serving_function(models, cascade: Cascade):
  """tf.function(uint8 images [b, h, w, c], any size) -> {'probabilities', 'classes', 'stage'}.

  The function carries `keras_objects` (the stages' task models, for ExportArchive.track) and
  `cascade`.

  Raises:
    DeployError: a stage names an unknown task, or the stages' class counts differ.
  """
  check_cascade(models, cascade)
  stages = [(models.tasks[s.model].model, models.tasks[s.model].input_spec, float(s.threshold))
            for s in cascade.stages]
  num_classes = models.tasks[cascade.stages[0].model].num_classes
  first_spec = stages[0][1]

  @tf.function(input_signature=[first_spec.serving_spec()])
  def serve(images):
    n = tf.shape(images)[0]
    probabilities = tf.zeros([n, num_classes], tf.float32)
    stage_of = tf.fill([n], tf.constant(-1, tf.int32))
    undecided = tf.range(n)  # indices of the examples still undecided
    for i, (model, spec, threshold) in enumerate(stages):
      last = i == len(stages) - 1

      def run(model=model, spec=spec):
        x = spec.to_model_input(tf.gather(images, undecided))
        return tf.nn.softmax(model(x, training=False), axis=-1)

      p = tf.cond(tf.size(undecided) > 0, run,
                  lambda: tf.zeros([0, num_classes], tf.float32))
      decide = tf.ones_like(undecided, tf.bool) if last else \
          tf.reduce_max(p, axis=-1) >= threshold
      where = tf.boolean_mask(undecided, decide)[:, None]
      probabilities = tf.tensor_scatter_nd_update(probabilities, where,
                                                  tf.boolean_mask(p, decide))
      stage_of = tf.tensor_scatter_nd_update(stage_of, where,
                                             tf.fill([tf.shape(where)[0]], i))
      undecided = tf.boolean_mask(undecided, tf.logical_not(decide))
    return {"probabilities": probabilities,
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            "stage": stage_of}

  serve.cascade = cascade
  serve.keras_objects = list(dict.fromkeys(m for m, _, _ in stages))
  return serve


@SIGNATURE_KINDS.register("cascade")
def cascade_signatures(models, stages: list) -> list[Signature]:
  """The `cascade` signature over `stages` (cascade.Stage, in order), carrying its definition
  as assets.extra/k4p1_cascade.json (CASCADE_INDEX) with each stage's input size."""
  if not stages:
    return []
  cascade = Cascade(tuple(stages))
  serve = cascade_serving_function(models, cascade)
  definition = cascade.to_json()
  for stage in definition["stages"]:
    stage["input_size"] = models.tasks[stage["model"]].input_spec.size
  return [Signature(CASCADE_SIGNATURE, serve, list(serve.keras_objects),
                    assets={CASCADE_INDEX: definition})]
