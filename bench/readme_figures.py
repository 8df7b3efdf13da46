r"""The README's quoted figures, generated from measured results so that they cannot drift.

The README holds generated blocks; this script rewrites them from the JSON the benchmarks wrote
(bench/results/*.json), and `--check` (run by tests/readme_test.py) fails when the README and
the results disagree:

  <!-- generated: digits_table -->  the main job's table (bench/digits_transfer.py)
  <!-- rest-response: NAME -->      REST responses of the embedded default's export
                                    (bench/results/rest_examples.json, measured by --rest_workdir)

Run:
  python bench/digits_transfer.py && python bench/readme_figures.py
  python train.py && python bench/readme_figures.py --rest_workdir=k4p1_runs/digits
  python bench/readme_figures.py --check
"""

import json
import os
import re
import sys

import common  # noqa: E402,F401  (puts the repository on the import path)

from absl import app, flags  # noqa: E402

_CHECK = flags.DEFINE_bool("check", False, "Exit 1 if the README differs from the results.")
_REST_WORKDIR = flags.DEFINE_string(
    "rest_workdir", "", "A train.py workdir of the embedded default: measure the README's REST "
    "requests against its saved_model first (writes bench/results/rest_examples.json).")
_README = flags.DEFINE_string("readme", os.path.join(common.REPO_ROOT, "README.md"), "README.")

RESULTS = os.path.join(common.REPO_ROOT, "bench", "results")
TRAINS = {
    "digits_0_4": "the whole base, from random weights, + classifier",
    "digits_5_9_last_layer": "classifier only, base frozen",
    "digits_5_9_scale_bias": "scale-and-bias patch + classifier",
}
_REQUEST = r"<!-- rest-request: (\w+) -->\s*```json\n(.*?)```"
_RESPONSE = r"(<!-- rest-response: (\w+) -->\s*```json\n)(.*?)(```)"


def _load(name: str) -> dict:
  with open(os.path.join(RESULTS, name)) as f:
    return json.load(f)


def digits_table(result: dict) -> str:
  seeds = result["seeds"]
  first = result["runs"][0]["tasks"]
  header = (f"| task | what it trains | accuracy, mean (min-max) over seeds "
            f"{', '.join(map(str, seeds))} | balanced accuracy, mean | trainable | task-specific "
            f"| patch file |\n|---|---|---|---|---|---|---|\n")
  rows = []
  for task, s in result["summary"].items():
    balanced = [run["tasks"][task]["balanced_accuracy"] for run in result["runs"]]
    acc = f"{100 * s['mean']:.2f}% ({100 * s['min']:.2f}-{100 * s['max']:.2f})"
    if task.endswith("scale_bias"):
      acc = f"**{acc.split(' ')[0]}** {acc.split(' ', 1)[1]}"
    t = first[task]
    rows.append(f"| `{task}` | {TRAINS.get(task, '')} | {acc} | "
                f"{100 * sum(balanced) / len(balanced):.2f}% | {t['trainable']:,} | "
                f"{t['task_specific']:,} | {t['patch_file_bytes']:,} B |")
  return header + "\n".join(rows) + "\n"


def measure_rest(workdir: str, readme: str) -> dict:
  """The README's REST requests, answered by the workdir's SavedModel as TF Serving would."""
  from k4p1.export.serving import load_like_tf_serving, rest_predict
  signatures = load_like_tf_serving(os.path.join(workdir, "saved_model"))
  responses = {}
  for name, body in re.findall(_REQUEST, readme, re.S):
    response = rest_predict(signatures, json.loads(body))
    responses[name] = {"predictions": [
        {k: (round(float(v), 4) if isinstance(v, float) else
             [round(float(x), 4) for x in v] if isinstance(v, list) else v)
         for k, v in sorted(p.items())} for p in response["predictions"]]}
  return {"benchmark": "rest_examples", "workdir": workdir, **common.machine(),
          "responses": responses}


def render(readme: str) -> str:
  """The README with every generated block rewritten from the results."""
  table = digits_table(_load("digits_transfer.json"))
  readme, n = re.subn(r"(<!-- generated: digits_table -->\n).*?(<!-- /generated -->)",
                      lambda m: m.group(1) + table + m.group(2), readme, flags=re.S)
  if n != 1:
    raise ValueError("README has no (or several) `<!-- generated: digits_table -->` blocks.")
  responses = _load("rest_examples.json")["responses"]

  def response(m):
    if m.group(2) not in responses:
      raise ValueError(f"bench/results/rest_examples.json has no response for {m.group(2)!r}: "
                       f"rerun with --rest_workdir.")
    return m.group(1) + json.dumps(responses[m.group(2)]) + "\n" + m.group(4)

  return re.sub(_RESPONSE, response, readme, flags=re.S)


def main(argv):
  del argv
  with open(_README.value) as f:
    readme = f.read()
  if _REST_WORKDIR.value:
    common.write_result(os.path.join(RESULTS, "rest_examples.json"),
                        measure_rest(_REST_WORKDIR.value, readme))
  new = render(readme)
  if _CHECK.value:
    if new != readme:
      print("README.md's generated figures differ from bench/results: run "
            "`python bench/readme_figures.py` and commit README.md.", file=sys.stderr)
      sys.exit(1)
    print("README.md's generated figures match bench/results.")
    return
  from k4p1.files import atomic_write_text
  atomic_write_text(_README.value, new)
  print(f"wrote {_README.value}" + (" (unchanged)" if new == readme else ""))


if __name__ == "__main__":
  app.run(main)
