"""Joint multi-task training on a local parameter-server cluster started by k4p1.launch.

A tf.distribute.Server listens on every interface whatever its address says, so the cluster runs
inside a private network namespace (`unshare --net`, only loopback) and the test is skipped
where that is not available (docs/parameter_server_notes.md).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf

from k4p1.launch import in_private_network, private_network_available
from k4p1.testing import REPO_ROOT, process_alive

SKIP = ("needs `unshare --user --net` and `ip` (a private network namespace), so that the "
        "cluster's servers are reachable from loopback only")


def _launch(launch_args: str, config: str, workdir: str, *train_args: str):
  """Starts `k4p1.launch LAUNCH_ARGS -- train.py` in a private network namespace."""
  command = " ".join([sys.executable, "-m", "k4p1.launch", launch_args, "--grace_seconds=5",
                      "--timeout=400", "--", sys.executable, "train.py",
                      f"--config=configs/multitask.py:{config}", f"--workdir={workdir}",
                      "--config.train.progress=false", *train_args])
  env = {**os.environ, "PYTHONPATH": REPO_ROOT}
  env.pop("TF_CONFIG", None)
  return subprocess.Popen(in_private_network(command), cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)


def _finish(proc, timeout: float = 500) -> str:
  """Waits for a launcher; kills its process group if it overruns; returns its output."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)  # the session this test's Popen created
      proc.wait()
  return out


@pytest.mark.large  # ~80 s: four TensorFlow processes on 2 cores
class ParameterServerTrainingTest(tf.test.TestCase):

  def test_joint_training_on_a_local_parameter_server_cluster(self):
    if not private_network_available():
      self.skipTest(SKIP)
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    self.addCleanup(shutil.rmtree, os.path.dirname(workdir), True)
    proc = _launch("--workers=2 --ps=1", "smoke,parameter_server", workdir,
                   "--config.multitask.workers=digits_0_4:1,digits_5_9:1")
    out = _finish(proc)
    self.assertEqual(proc.returncode, 0, out[-4000:])
    self.assertIn("[launch] chief exited with status 0", out)
    for job in ("[worker 0]", "[worker 1]", "[ps 0]"):
      self.assertIn(f"{job} {job[1:-1]}: serving grpc://127.0.0.1:", out)
    pids = [int(p) for p in re.findall(r"\]=(\d+)", out.split("pids", 1)[1].splitlines()[0])]
    self.assertLen(pids, 4)
    for pid in pids:
      self.assertFalse(process_alive(pid), f"process {pid} outlived the launcher")
    with open(os.path.join(workdir, "metrics.json")) as f:
      rows = json.load(f)["tasks"]
    # Every scheduled step ran exactly once, counted by k4p1's own counters on the ps.
    self.assertEqual([r["joint_steps"] for r in rows], [40, 40])
    # One worker per task: each task gets half of the 40 steps, exactly.
    self.assertEqual([r["steps_done"] for r in rows], [20, 20])
    for r in rows:
      self.assertBetween(r["accuracy"], 0.0, 1.0)
    self.assertTrue(os.path.exists(os.path.join(workdir, "saved_model", "saved_model.pb")))
    self.assertTrue(os.path.exists(os.path.join(workdir, "base.weights.h5")))


def _launch_ps_smoke(launch_args: str, workdir: str, steps: int):
  """The multitask smoke on a parameter-server cluster, checkpointing every 20 steps."""
  return _launch(launch_args, "smoke,parameter_server", workdir,
                 f"--config.multitask.steps={steps}", "--config.train.checkpoint_every=20",
                 "--config.export.enabled=false")


@pytest.mark.large  # ~2 minutes: parameter-server runs with a process killed on purpose
class FaultTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    if not private_network_available():
      self.skipTest(SKIP)
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root, True)

  def _run_killing(self, victim: str, workdir: str, steps: int):
    """Runs the launcher; once a checkpoint exists, SIGKILLs `victim`; returns (code, log)."""
    import threading
    import time
    proc = _launch_ps_smoke("--workers=2 --ps=1 --max_restarts=2", workdir, steps)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
      deadline = time.time() + 300
      state = os.path.join(workdir, "checkpoints", "checkpoint")
      while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
      self.assertTrue(os.path.exists(state), "".join(lines)[-3000:])
      pids = dict(re.findall(r"(\[[a-z]+(?: \d)?\])=(\d+)", "".join(lines)))
      os.kill(int(pids[victim]), signal.SIGKILL)  # a process this test's launcher started
      proc.wait(timeout=400)
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
      reader.join(timeout=10)
    return proc.returncode, "".join(lines)

  def test_a_killed_worker_is_restarted_and_training_completes(self):
    workdir = os.path.join(self.root, "run")
    code, log = self._run_killing("[worker 1]", workdir, steps=120)
    self.assertEqual(code, 0, log[-4000:])
    self.assertIn("[launch] [worker 1] exited with status -9: restarting it (1/2)", log)
    with open(os.path.join(workdir, "metrics.json")) as f:
      rows = json.load(f)["tasks"]
    # Every scheduled step ran; a step whose worker died after applying its update but before
    # replying is run again by the coordinator, so a task may count one step more.
    done = sum(r["steps_done"] for r in rows)
    self.assertBetween(done, 120, 121)

  def test_a_killed_chief_loses_nothing_beyond_its_last_checkpoint(self):
    workdir = os.path.join(self.root, "run")
    code, log = self._run_killing("[chief]", workdir, steps=400)
    self.assertNotEqual(code, 0, log[-3000:])
    self.assertIn("[launch] chief exited with status -9", log)
    # a shorter run: resume, finish
    proc = _launch_ps_smoke("--workers=2 --ps=1", workdir, steps=60)
    out = _finish(proc)
    self.assertEqual(proc.returncode, 0, out[-4000:])
    self.assertRegex(out, r"Resuming joint training of digits_0_4, digits_5_9 at step [1-9]")

  def test_a_killed_parameter_server_stops_the_chief_and_a_rerun_resumes(self):
    workdir = os.path.join(self.root, "run")
    code, log = self._run_killing("[ps 0]", workdir, steps=400)
    self.assertNotEqual(code, 0, log[-3000:])
    self.assertIn("error: a parameter server", log)
    self.assertNotIn("Traceback", log)
    # a shorter run (the kill came at the first checkpoint, step 20): resume, finish
    proc = _launch_ps_smoke("--workers=2 --ps=1", workdir, steps=80)
    out = _finish(proc)
    self.assertEqual(proc.returncode, 0, out[-4000:])
    self.assertRegex(out, r"Resuming joint training of digits_0_4, digits_5_9 at step [1-9]")


@pytest.mark.large  # ~90 s: one single-process run, one run of two synchronous processes
class MultiWorkerMirroredTest(tf.test.TestCase):

  def test_two_workers_give_the_single_process_result(self):
    if not private_network_available():
      self.skipTest(SKIP)
    from k4p1.export.patch_files import read_patch
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, True)
    # Frozen statistics: batch statistics are per replica (4 images) under a 2-replica strategy
    # and over the global batch (8) in one process, so only frozen statistics can agree.
    common = ["--config.multitask.steps=6", "--config.train.batch_size=8",
              "--config.train.progress=false", "--config.export.enabled=false",
              "--config.tasks.digits_0_4.statistics=frozen",
              "--config.tasks.digits_5_9.statistics=frozen",
              "--config.train.bn_recompute_batches=0"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    env.pop("TF_CONFIG", None)
    single = os.path.join(root, "single")
    out = subprocess.run([sys.executable, "train.py", "--config=configs/multitask.py:smoke",
                          f"--workdir={single}", *common], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    multi = os.path.join(root, "multi")
    proc = _launch("--workers=1 --ps=0", "smoke,multi_worker_mirrored", multi,
                   *[a for a in common if "progress" not in a])  # _launch sets it
    log = _finish(proc)
    self.assertEqual(proc.returncode, 0, log[-4000:])
    for task in ("digits_0_4", "digits_5_9"):
      _, a = read_patch(os.path.join(single, "patches", f"{task}.k4p1.npz"))
      _, b = read_patch(os.path.join(multi, "patches", f"{task}.k4p1.npz"))
      self.assertEqual(set(a), set(b))
      # Training moved the task's variables (its classifier's bias starts at zero).
      self.assertGreater(float(np.abs(a["head/bias"]).max()), 1e-4)
      moved = max(float(np.abs(a[k]).max()) for k in a if "gamma" in k or "kernel" in k)
      for key in a:  # cross-replica sums add in another order: a small tolerance
        np.testing.assert_allclose(b[key], a[key], rtol=1e-3, atol=1e-4 * moved, err_msg=key)


if __name__ == "__main__":
  tf.test.main()
