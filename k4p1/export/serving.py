"""TF Serving: the versioned layout, its model config file, and a local check of the contract.

TF Serving loads `<base_path>/<version>/` (a SavedModel; the highest version is served) and
reads a `model_config_list` text proto. `write_serving_layout` writes both:

  <out>/models.config              model_config_list: name, base_path /models/<name>, tensorflow
  <out>/<name>/<version>/          the multi-task SavedModel (signatures per task, `mixed`,
                                   serving_default; assets.extra/k4p1_tasks.json)

`load_like_tf_serving` reads the export the way TF Serving does (tag `serve`, signature defs by
name, method `tensorflow/serving/predict`), and `rest_predict` answers a REST `:predict` body in
TF Serving's row format ("instances" in, "predictions" out), so the request and response bodies
documented in the README are checked by tests without a TF Serving binary.

Example:
  version_dir = write_serving_layout(models, ["cars", "birds"], "/srv", name="k4p1", version=1)
  signatures = load_like_tf_serving(version_dir)
  rest_predict(signatures, {"signature_name": "cars", "instances": [image.tolist()]})
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from k4p1.errors import DeployError
from k4p1.export.saved_model import export_saved_model
from k4p1.files import atomic_write_text

PREDICT_METHOD = "tensorflow/serving/predict"


def model_config_text(name: str, base_path: str) -> str:
  return ("model_config_list {\n"
          "  config {\n"
          f"    name: \"{name}\"\n"
          f"    base_path: \"{base_path}\"\n"
          "    model_platform: \"tensorflow\"\n"
          "  }\n"
          "}\n")


def write_serving_layout(models, tasks: list[str], out: str, name: str = "k4p1",
                         version: int = 1, mixed=None,
                         container_base_path: str | None = None) -> str:
  """Writes `<out>/<name>/<version>/` and `<out>/models.config`; returns the version folder.

  Args:
    models, tasks, mixed: as k4p1.export.export_saved_model.
    out: serving root (mount it at /models in the TF Serving container).
    name: the model name clients use (`/v1/models/<name>:predict`).
    version: a positive integer; an existing version is never overwritten (TF Serving treats
      versions as immutable): pick the next one.
    container_base_path: base_path written into models.config ('' or None: /models/<name>,
      where the Docker command in the README mounts `<out>`).

  Raises:
    DeployError: bad name or version, or the version exists.
  """
  if not name or not name.replace("_", "").replace("-", "").isalnum():
    raise DeployError(f"Serving model name must be letters, digits, '_' or '-'. Received: {name!r}")
  if not isinstance(version, int) or version < 1:
    raise DeployError(f"Serving version must be a positive integer. Received: {version!r}")
  version_dir = os.path.join(out, name, str(version))
  if os.path.exists(version_dir):
    existing = sorted(int(v) for v in os.listdir(os.path.join(out, name)) if v.isdigit())
    raise DeployError(f"{version_dir} exists: TF Serving versions are immutable. Use version "
                      f"{max(existing) + 1} (existing: {existing}).")
  export_saved_model(models, tasks, version_dir, mixed=mixed)
  atomic_write_text(os.path.join(out, "models.config"),
                    model_config_text(name, container_base_path or f"/models/{name}"))
  return version_dir


def signature_defs(version_dir: str) -> dict:
  """{signature name: SignatureDef} of the `serve` meta graph, as TF Serving reads them."""
  from tensorflow.python.saved_model import loader_impl
  saved = loader_impl.parse_saved_model(version_dir)
  graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags]
  if not graphs:
    raise DeployError(f"{version_dir} has no meta graph tagged 'serve': TF Serving cannot load it.")
  return dict(graphs[0].signature_def)


def load_like_tf_serving(version_dir: str) -> dict:
  """Loads the `serve` meta graph and returns its callable signatures by name."""
  defs = signature_defs(version_dir)
  loaded = tf.saved_model.load(version_dir, tags=["serve"])
  signatures = dict(loaded.signatures)
  signatures["__loaded__"] = loaded  # keeps the variables alive
  signatures["__defs__"] = defs
  return signatures


def rest_predict(signatures: dict, body: dict) -> dict:
  """A TF Serving REST `:predict` call in row format, answered by the loaded signatures.

  `instances` is a list with one entry per example: the input's value for a signature with one
  input, or {input name: value} for several. The response is {"predictions": [...]}, one entry
  per example: {output name: value} (TF Serving's row format for several outputs).
  """
  name = body.get("signature_name", "serving_default")
  defs = signatures["__defs__"]
  if name not in defs:
    raise DeployError(f"No signature {name!r}. Signatures: {sorted(k for k in defs if not k.startswith('__'))}")
  sig_def = defs[name]
  if "instances" not in body:
    raise DeployError('REST predict body needs "instances" (row format).')
  instances = body["instances"]
  inputs = list(sig_def.inputs)
  columns = {k: [] for k in inputs}
  for row in instances:
    if len(inputs) == 1 and not isinstance(row, dict):
      row = {inputs[0]: row}
    for k in inputs:
      columns[k].append(row[k])
  feeds = {k: tf.constant(np.asarray(v, dtype=tf.dtypes.as_dtype(sig_def.inputs[k].dtype)
                                    .as_numpy_dtype)) for k, v in columns.items()}
  outputs = {k: v.numpy() for k, v in signatures[name](**feeds).items()}
  return {"predictions": [{k: v[i].tolist() for k, v in sorted(outputs.items())}
                          for i in range(len(instances))]}
