"""Benchmarks run in smoke mode and write well-formed results (speed is not asserted here)."""

import json
import os
import subprocess
import sys
import tempfile

import pytest
import tensorflow as tf

from k4p1.testing import MULTIRES_SMOKE_CONFIG, REPO_ROOT, smoke_run_workdir


# ~200 s in all: each smoke starts TF in a subprocess and trains or converts (the CI slow tier).
@pytest.mark.large
class BenchSmokeTest(tf.test.TestCase):

  def _run_smoke(self, script, *args):
    out_path = os.path.join(tempfile.mkdtemp(), "result.json")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", script), "--smoke", f"--out={out_path}",
         *args],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    with open(out_path) as f:
      return json.load(f)

  def test_train_throughput_smoke(self):
    result = self._run_smoke("train_throughput.py")
    regimes = [r["regime"] for r in result["results"]]
    self.assertEqual(regimes, ["full_fine_tuning", "full_fine_tuning_stock_keras_bn",
                               "scale_bias_batch_stats",
                               "scale_bias_frozen_stats", "depthwise_last_layer", "taps",
                               "last_layer_only", "reference_plain_step",
                               "scale_bias_frozen_stats_stock_keras"])
    self.assertGreater(result["step_machinery_ratio"], 0)
    ips = {r["regime"]: r["images_per_second"] for r in result["results"]}
    self.assertAlmostEqual(result["taps_ratio_to_scale_bias"],
                           ips["taps"] / ips["scale_bias_batch_stats"], delta=0.01)
    for r in result["results"]:
      self.assertGreater(r["images_per_second"], 0)
      self.assertGreater(r["cpu_ms_per_image"], 0)
      self.assertAlmostEqual(r["ratio_to_full"],
                             r["images_per_second"] / result["results"][0]["images_per_second"],
                             delta=0.01)
    self.assertTrue(result["smoke"])

  def test_multitask_table_smoke(self):
    result = self._run_smoke("multitask_table.py", "--noparameter_server",
                             "--regimes=patch,independent")
    rows = {r["regime"]: r for r in result["rows"]}
    self.assertEqual(set(rows), {"patch", "independent"})
    for r in rows.values():
      self.assertEqual(set(r["accuracy"]), {"digits_0_4", "digits_5_9"})
      self.assertEqual(set(r["steps"].values()), {40})
    # The shared base counted once; independent models share nothing.
    own = rows["independent"]["task_specific"]
    self.assertEqual(rows["independent"]["total_parameters"], sum(own.values()))
    self.assertGreater(rows["patch"]["total_parameters"], sum(rows["patch"]["task_specific"].values()))

  def test_multires_table_smoke(self):
    out_dir = tempfile.mkdtemp()
    result = self._run_smoke("multires_table.py", f"--table={out_dir}/t.md",
                             f"--plot={out_dir}/t.png")
    rows = {r["regime"]: r for r in result["results"]["digits"]}
    self.assertEqual(set(rows), {"patch", "all_shared", "independent"})
    for r in rows.values():
      self.assertEqual(set(r["accuracy"]), {"r64", "r32"})
      self.assertLessEqual(r["cascade"]["validation_cost_ratio"], 1.0 + 1e-9)
      self.assertGreaterEqual(r["cascade"]["validation_accuracy"],
                              r["cascade"]["validation_reference_accuracy"] - 1e-9)
    # The params accounting: independent = one whole model per resolution.
    self.assertGreater(rows["independent"]["total_parameters"], rows["patch"]["total_parameters"])
    self.assertGreater(rows["patch"]["total_parameters"], rows["all_shared"]["total_parameters"])
    with open(os.path.join(out_dir, "t.md")) as f:
      self.assertIn("| parameters in all |", f.read())
    self.assertTrue(os.path.getsize(os.path.join(out_dir, "t.png")) > 1000)

  def test_cascade_latency_smoke(self):
    result = self._run_smoke("cascade_latency.py",
                             f"--workdir={smoke_run_workdir(MULTIRES_SMOKE_CONFIG)}")
    self.assertEqual([r["batch_size"] for r in result["results"]], [1, 4])
    for r in result["results"]:
      self.assertEqual(set(r["ms_per_image"]), {"cascade", "r64", "r32"})
      self.assertGreater(min(r["ms_per_image"].values()), 0)
    self.assertAlmostEqual(sum(result["exits_on_timed_images"]), 1.0)

  def test_taps_table_smoke(self):
    data_dir = os.environ.get("K4P1_DATA_DIR", "")
    needed = [os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5"),
              os.path.join(data_dir, "cifar10", "cifar10_jpeg.tar.gz")]
    if not data_dir or not all(os.path.exists(p) for p in needed):
      self.skipTest("K4P1_DATA_DIR does not hold the dogs MobileNetV2 and CIFAR-10 (the shared "
                    "data): set K4P1_DATA_DIR=../shared/data")
    out_dir = tempfile.mkdtemp()
    result = self._run_smoke("taps_table.py", f"--plot={out_dir}/a.png",
                             f"--layer_map={out_dir}/m.png", f"--table={out_dir}/t.md",
                             "--lams=50", "--swr_cs=10", "--swr_beta=10")
    by = {r["regime"]: r for r in result["rows"]}
    top = result["top_regimes"]["cifar10"]
    swrs = result["swr_regimes"]["cifar10"]
    self.assertEqual(swrs[0], "swr_c10")
    self.assertEqual(set(by), {"last_layer", "scale_bias_last_layer", "full_fine_tuning",
                               "taps_lam50", top, *swrs})
    # SWR at matched cost: TAPS's added parameters as a % of the base, rounded.
    if len(swrs) == 2:
      self.assertEqual(int(swrs[1][len("swr_c"):]),
                       round(100 * by["taps_lam50"]["taps"]["added_parameters"] /
                             result["shared_parameters"]))
    for regime in swrs:
      self.assertEqual(len(by[regime]["swr"]["selected"]), len(by[regime]["swr"]["layers"]))
    taps = by["taps_lam50"]["taps"]
    self.assertEqual(len(taps["layers"]), len(taps["active"]))
    # The manual baseline fine-tunes at least what TAPS added (the latest such start).
    self.assertGreaterEqual(by[top]["task_specific"], taps["added_parameters"])
    for name in ("a.png", "m.png", "t.md"):
      self.assertTrue(os.path.getsize(os.path.join(out_dir, name)) > 0)

  def test_swr_table_smoke(self):
    out_dir = tempfile.mkdtemp()
    result = self._run_smoke("swr_table.py", f"--table={out_dir}/t.md",
                             f"--plot_ratio={out_dir}/r.png", f"--plot_layers={out_dir}/l.png",
                             f"--workdir={out_dir}/cells",
                             "--methods=multilingual,swr_0.3,swr_0.9")
    by = {r["method"]: r for r in result["rows"]}
    self.assertEqual(set(by), {"multilingual", "swr_0.3", "swr_0.9"})
    self.assertEqual(by["multilingual"]["learned_task_parameters"], 0)
    swr = by["swr_0.3"]["swr"]
    self.assertEqual(by["swr_0.3"]["steps"], 6)  # three stages of 2 steps
    self.assertEqual(len(swr["layers"]), len(swr["selected"]))
    # c = 0.9 started from c = 0.3's stage 1: the same policy, then its own stage 2.
    self.assertEqual((by["swr_0.3"]["stage1"], by["swr_0.9"]["stage1"]), ("trained", "shared"))
    self.assertEqual(by["swr_0.9"]["swr"]["sweep"], swr["sweep"])
    self.assertEqual(by["swr_0.9"]["steps"], 6)
    kept = [d for d, _, _ in os.walk(os.path.join(out_dir, "cells")) if "swr_stage1" in d]
    self.assertEqual(kept, [])  # removed once the fold is done
    for row in result["summary"]:
      self.assertGreaterEqual(row["params_relative"], 1.0)
    for name in ("t.md", "r.png", "l.png"):
      self.assertTrue(os.path.getsize(os.path.join(out_dir, name)) > 0)

  def test_digits_transfer_smoke(self):
    result = self._run_smoke("digits_transfer.py")
    self.assertEqual(set(result["summary"]), {"digits_0_4", "digits_5_9_last_layer",
                                              "digits_5_9_scale_bias"})
    for s in result["summary"].values():
      self.assertBetween(s["mean"], 0.0, 1.0)
      self.assertLessEqual(s["min"], s["max"])

  def test_transfer_table_smoke(self):
    data_dir = os.environ.get("K4P1_DATA_DIR", "")
    needed = [os.path.join(data_dir, "ssdlite_mobilenet_v2_person", "frozen_inference_graph.pb"),
              os.path.join(data_dir, "mobilenet_v2_1.0_160_dogs", "dog_breed_mobilenetv2.h5"),
              os.path.join(data_dir, "cifar10", "cifar10_jpeg.tar.gz")]
    if not data_dir or not all(os.path.exists(p) for p in needed):
      self.skipTest("K4P1_DATA_DIR does not hold the SSD graph, the dogs MobileNetV2 and "
                    "CIFAR-10 (the shared data): set K4P1_DATA_DIR=../shared/data")
    out_dir = tempfile.mkdtemp()
    out = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "transfer_table.py"), "--smoke",
         "--backbones=ssd", f"--out={out_dir}/t.json", f"--plot={out_dir}/t.png",
         f"--table={out_dir}/t.md"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    with open(os.path.join(out_dir, "t.json")) as f:
      rows = json.load(f)["rows"]
    # One backbone keeps CI short; the dogs backbone is the keras_file one tested elsewhere.
    self.assertEqual({(r["backbone"], r["dataset"]) for r in rows}, {("ssd", "cifar10")})
    self.assertLen(rows, 7)  # 7 regimes
    for r in rows:
      self.assertBetween(r["accuracy"], 0.0, 1.0)
      self.assertEqual(r["steps"], 2)
    by = {r["regime"]: r for r in rows}
    # MobileNetV2 1.0: 34,112 gammas and betas; + 68,224 statistics; + a 10-class head.
    self.assertEqual(by["scale_bias_only"]["trainable"], 34_112)
    self.assertEqual(by["scale_bias_last_layer"]["task_specific"], 34_112 + 34_112 + 12_810)
    self.assertEqual(by["last_layer"]["task_specific"], 12_810)
    with open(os.path.join(out_dir, "t.md")) as f:
      self.assertIn("| scale_bias_depthwise_last_layer |", f.read())
    self.assertTrue(os.path.getsize(os.path.join(out_dir, "t.png")) > 1000)

  def test_fold_latency_smoke(self):
    result = self._run_smoke("fold_latency.py")
    models = [r["model"] for r in result["results"]]
    self.assertEqual(models, ["base", "patched", "folded", "folded_bn", "taps_gated",
                              "taps_folded"])
    for r in result["results"]:
      self.assertGreater(r["ms_per_batch"], 0)
    self.assertEqual(result["results"][0]["ratio_to_base"], 1.0)

  def test_mixed_serving_smoke(self):
    result = self._run_smoke("mixed_serving.py")
    (row,) = result["results"]
    self.assertEqual(row["num_tasks"], 2)
    self.assertAlmostEqual(row["ratio_mixed_to_split"],
                           row["mixed_images_per_second"] / row["split_images_per_second"],
                           delta=0.01)

  def _tflite_accuracy_row(self, workdir):
    """tflite_accuracy's one row for `workdir`: every post-training variant, accuracies in
    [0, 1]."""
    result = self._run_smoke("tflite_accuracy.py", f"--workdir={workdir}")
    (row,) = result["results"]
    self.assertEqual(set(row["variants"]), {"float32", "dynamic", "int8"})
    for v in row["variants"].values():
      self.assertBetween(v["accuracy"], 0.0, 1.0)
    return row

  def test_tflite_accuracy_smoke(self):
    # Reads the shared smoke run (trained once per test process) instead of training its own.
    row = self._tflite_accuracy_row(smoke_run_workdir())
    self.assertEqual(row["variants"]["float32"]["agreement_with_keras"], 1.0)
    for v in row["variants"].values():
      self.assertGreater(v["bytes"], 10_000)
    self.assertLess(row["variants"]["int8"]["bytes"], row["variants"]["float32"]["bytes"] / 2)

  def test_tflite_accuracy_audio_smoke(self):
    # A keyword spotter: waveform input, float frontend inside the int8 file, no QAT row.
    row = self._tflite_accuracy_row(
        smoke_run_workdir(os.path.join(REPO_ROOT, "configs", "kws.py") + ":smoke"))
    self.assertGreaterEqual(row["variants"]["float32"]["agreement_with_keras"], 0.9)
    # No size comparison: in this ~9K-parameter smoke model the float frontend's constants (its
    # frame indices, ~190 KB) dominate both files; the real model's are in the README.
    for v in row["variants"].values():
      self.assertGreater(v["bytes"], 0)

  def test_multitask_throughput_smoke(self):
    result = self._run_smoke("multitask_throughput.py")
    self.assertEqual([r["setup"] for r in result["results"]], ["single", "ps_1_worker"])
    for r in result["results"]:
      self.assertGreater(r["images_per_second"], 0)
      self.assertEqual(sum(r["steps_done"].values()), 10)  # sampled: one task per joint step
    self.assertEqual(result["results"][0]["ratio_to_single"], 1.0)

  def test_folding_figure(self):
    out_dir = tempfile.mkdtemp()
    out = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "folding_figure.py"),
         f"--out_dir={out_dir}"], capture_output=True, text=True, timeout=300)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    with open(os.path.join(out_dir, "folding.json")) as f:
      panels = json.load(f)["panels"]
    self.assertEqual([p["components"] for p in panels], [4, 3, 2, 1])
    with open(os.path.join(out_dir, "folding.png"), "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

  def test_appendix_a_smoke(self):
    out_dir = tempfile.mkdtemp()
    out = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "bench", "appendix_a_2d.py"), "--smoke",
         f"--out_dir={out_dir}"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    with open(os.path.join(out_dir, "appendix_a.json")) as f:
      results = json.load(f)["results"]
    regimes = {(r["start"], r["regime"]) for r in results}
    self.assertLen(regimes, 13)  # 6 regimes x 2 starts + pretraining
    by_regime = {(r["start"], r["regime"]): r for r in results}
    # m = 2: hidden Dense biases 8+16+16+8 plus the embedding's 2, none of the logits.
    self.assertEqual(by_regime[("pretrained", "biases")]["trained_parameters"], 50)
    self.assertEqual(by_regime[("pretrained", "logits")]["trained_parameters"], 6)
    for r in results:
      self.assertBetween(r["balanced_accuracy"], 0.0, 1.0)
    self.assertTrue(os.path.getsize(os.path.join(out_dir, "appendix_a_m2.png")) > 1000)


if __name__ == "__main__":
  tf.test.main()
