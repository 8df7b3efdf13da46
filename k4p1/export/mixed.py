"""Mixed-task serving: one call answers a batch whose examples belong to different tasks.

`mixed_model(models, tasks)` is an ordinary Keras functional model with two inputs: `images`
(float32 [b, size, size, 3] in [0, 255], what a task model takes) and `task_id` (int32 [b], a
position in `tasks`). Its TaskRouter layer routes by task inside the graph:
`tf.dynamic_partition` splits the images and their batch positions by task id, each task's own
inference model (`models.tasks[t].model`, which shares the base's layers by identity, so no
weight is copied) runs on its part, its softmax is zero-padded to the widest head, and
`tf.dynamic_stitch` puts the rows back in batch order. Each part runs exactly its task's own
graph, so every patch kind can be mixed (scale_bias, bn_stats, depthwise, channel_scale_bias,
full), and a task with no example in the batch runs on an empty part.

`mixed_serving_function(models, tasks)` wraps it as the `mixed` signature: uint8 images of any
size (resized inside) and a task id per image. Heads of different class counts: `probabilities`
is padded with zeros to the largest class count among the tasks and `num_classes` says how many
entries of each row are real; `classes` is the arg max over the real entries.

Example:
  serve = mixed_serving_function(models, ["cars", "birds"])
  serve(images=uint8_batch, task_id=tf.constant([0, 1, 1, 0]))["probabilities"]
  model = mixed_model(models, ["cars", "birds"])   # keras.Model([images, task_id], probabilities)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from k4p1.errors import DeployError


def checked_task_ids(task_id, tasks):
  """`task_id` as int32, after asserting every id is in 0..len(tasks)-1 (InvalidArgument if not).

  Anything computed from the returned tensor runs after the check, so a bad id fails with this
  message rather than with a gather's or a partition's.
  """
  task_id = tf.convert_to_tensor(task_id, tf.int32)
  checks = [tf.debugging.assert_non_negative(task_id, message="task_id must be >= 0"),
            tf.debugging.assert_less(task_id, len(tasks),
                                     message=f"task_id must be < {len(tasks)} (tasks: {tasks})")]
  with tf.control_dependencies(checks):
    return tf.identity(task_id)


@keras.saving.register_keras_serializable(package="k4p1")
class TaskRouter(keras.layers.Layer):
  """Runs each example through its own task's model: partition by task id, run, stitch back.

  Called on (images [b, ...], task_id int32 [b]); returns float32 [b, widest head]: each row is
  the softmax of its task's logits, zero-padded on the right. Task models are held by reference
  (their layers, and the base's layers they share, are not copied).

  Args:
    task_models: one Keras model per task id, images -> logits [n, classes].
    task_names: names for error messages (default: the models' names).

  Example:
    router = TaskRouter([models.tasks["cars"].model, models.tasks["birds"].model])
    probabilities = router(images, task_id)
  """

  def __init__(self, task_models, task_names=None, **kwargs):
    super().__init__(**kwargs)
    task_models = list(task_models)
    if not task_models:
      raise ValueError("TaskRouter needs at least one task model. Received: task_models=[]")
    names = list(task_names) if task_names is not None else [m.name for m in task_models]
    if len(names) != len(task_models):
      raise ValueError(f"TaskRouter needs one name per task model ({len(task_models)}). "
                       f"Received: task_names={names}")
    self.task_models = task_models
    self.task_names = names
    self.num_classes = [int(m.output.shape[-1]) for m in task_models]
    self.width = max(self.num_classes)
    self.built = True  # the task models are built

  def call(self, images, task_id):
    task_id = checked_task_ids(task_id, self.task_names)
    same_batch = tf.debugging.assert_equal(
        tf.shape(images)[0], tf.shape(task_id)[0],
        message="images and task_id must have the same batch size (one task id per image)")
    with tf.control_dependencies([same_batch]):  # before the partitions can fail less clearly
      images, task_id = tf.identity(images), tf.identity(task_id)
    k = len(self.task_models)
    parts = tf.dynamic_partition(images, task_id, k)
    where = tf.dynamic_partition(tf.range(tf.shape(task_id)[0]), task_id, k)
    rows = []
    for model, part, positions, n in zip(self.task_models, parts, where, self.num_classes):

      def run(model=model, part=part, n=n):
        probabilities = tf.nn.softmax(model(part, training=False), axis=-1)
        return tf.pad(probabilities, [[0, 0], [0, self.width - n]])

      # A task with no example in the batch is skipped, not run on an empty part: that saves
      # its backbone pass, and oneDNN's fused convolutions mishandle an empty batch (a later
      # depthwise convolution then sees the image's 3 channels).
      rows.append(tf.cond(tf.size(positions) > 0, run,
                          lambda: tf.zeros([0, self.width], tf.float32)))
    return tf.dynamic_stitch(where, rows)

  def compute_output_shape(self, images_shape, task_id_shape):
    return (images_shape[0], self.width)

  def get_config(self):
    # A deserialized router owns separate copies of layers the task models shared.
    return {**super().get_config(), "task_names": self.task_names,
            "task_models": [keras.saving.serialize_keras_object(m) for m in self.task_models]}

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["task_models"] = [keras.saving.deserialize_keras_object(m)
                             for m in config["task_models"]]
    return cls(**config)


def check_tasks(models, tasks: list[str]):
  """Raises DeployError unless `tasks` is a non-empty list of distinct tasks of `models`."""
  if not tasks:
    raise DeployError(f"Mixed-task serving needs at least one task; name the tasks to mix. "
                      f"Tasks of this model: {sorted(models.tasks)}. Received: tasks={tasks!r}")
  for t in tasks:
    if t not in models.tasks:
      raise DeployError(f"Task {t!r} is not in this model, so it cannot be mixed. "
                        f"Tasks: {sorted(models.tasks)}. Received: tasks={list(tasks)}")
  repeated = sorted({t for t in tasks if list(tasks).count(t) > 1})
  if repeated:
    raise DeployError(f"Task(s) {repeated} are listed more than once; a task needs exactly one "
                      f"task id. Received: tasks={list(tasks)}")
  sizes = {t: models.tasks[t].input_spec.size for t in tasks}
  if len(set(sizes.values())) > 1:
    raise DeployError(f"Mixed-task serving runs one batch through every task at one size; these "
                      f"tasks run at different sizes {sizes}. Mix tasks of one size (a cascade "
                      f"signature serves several resolutions).")


def mixed_model(models, tasks: list[str]) -> keras.Model:
  """keras.Model([images, task_id], probabilities) for a batch that mixes `tasks`.

  Args:
    models: a TaskModels holding every task in `tasks`.
    tasks: the tasks to mix; a task's id is its position in this list.

  Returns:
    A functional model with inputs `images` (float32 [b, size, size, 3], pixels in [0, 255])
    and `task_id` (int32 [b]), and output float32 [b, max classes]: each row its task's softmax,
    zero-padded. Its variables are the task models' own (shared by identity, not copied).

  Raises:
    DeployError: `tasks` is empty, repeats a task or names a task `models` does not have.

  Example:
    model = mixed_model(models, ["cars", "birds"])
    model([images, tf.constant([0, 1, 1, 0])])  # [4, max(cars classes, birds classes)]
  """
  check_tasks(models, tasks)
  images = models.tasks[tasks[0]].input_spec.keras_input()
  task_id = keras.Input(shape=(), dtype="int32", name="task_id")
  router = TaskRouter([models.tasks[t].model for t in tasks], task_names=list(tasks),
                      name="task_router")
  return keras.Model([images, task_id], router(images, task_id), name="k4p1_mixed")


def mixed_serving_function(models, tasks: list[str]):
  """tf.function(images uint8 [b, h, w, 3] any size, task_id int32 [b]) -> dict.

  Returns `probabilities` float32 [b, max classes] (zero-padded), `classes` int64 [b] and
  `num_classes` int32 [b]. A task id outside 0..len(tasks)-1 fails with InvalidArgumentError
  before anything reads it. The function carries `tasks` (ids are positions in it), `model`
  (the mixed_model) and `keras_objects` (what a keras.export.ExportArchive must track).

  Raises:
    DeployError: as mixed_model.

  Example:
    serve = mixed_serving_function(models, ["cars", "birds"])
    serve(images=tf.zeros([2, 64, 64, 3], tf.uint8), task_id=tf.constant([1, 0]))
  """
  model = mixed_model(models, tasks)
  counts_table = tf.constant([models.tasks[t].num_classes for t in tasks], tf.int32)
  spec = models.tasks[tasks[0]].input_spec
  names = list(tasks)

  @tf.function(input_signature=[spec.serving_spec(),
                                tf.TensorSpec([None], tf.int32, name="task_id")])
  def serve(images, task_id):
    task_id = checked_task_ids(task_id, names)  # before any gather or partition reads it
    x = spec.to_model_input(images)
    probabilities = model([x, task_id], training=False)
    # Padding is 0 and a softmax row sums to 1, so the arg max is always a real entry.
    return {"probabilities": probabilities,
            "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
            "num_classes": tf.gather(counts_table, task_id)}

  serve.tasks = names
  serve.model = model
  serve.keras_objects = [model]  # for ExportArchive.track
  return serve
