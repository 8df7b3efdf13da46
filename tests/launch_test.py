"""k4p1.launch: a local cluster of processes, streamed, restarted, and always cleaned up."""

import glob
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from k4p1 import launch
from k4p1.testing import REPO_ROOT, process_alive

FAKE = os.path.join(REPO_ROOT, "tests", "scripts", "fake_task.py")


class LaunchTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    os.environ["FAKE_DIR"] = self.dir
    self.addCleanup(os.environ.pop, "FAKE_DIR", None)

  def _reports(self):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(self.dir, "*.json")))]

  def test_every_task_gets_its_tf_config_and_nothing_is_left_behind(self):
    out = io.StringIO()
    cluster = launch.Cluster([sys.executable, FAKE], workers=2, ps=1, grace_seconds=5, out=out)
    self.assertEqual(cluster.run(timeout=60), 0)  # the chief's status
    reports = self._reports()
    self.assertEqual(sorted((r["task"]["type"], r["task"]["index"]) for r in reports),
                     [("chief", 0), ("ps", 0), ("worker", 0), ("worker", 1)])
    spec = reports[0]["cluster"]
    self.assertTrue(all(r["cluster"] == spec for r in reports))
    addresses = [a for job in spec.values() for a in job]
    self.assertLen(set(addresses), 4)
    self.assertTrue(all(a.startswith("127.0.0.1:") for a in addresses))
    for label in ("[chief] hello from chief 0", "[worker 1] hello from worker 1",
                  "[ps 0] hello from ps 0"):
      self.assertIn(label, out.getvalue())
    for pid in cluster.started_pids:  # workers and ps ran "forever": they were stopped
      self.assertFalse(process_alive(pid), f"process {pid} outlived the launcher")

  def test_a_dead_worker_is_restarted_and_restarts_are_bounded(self):
    os.environ["FAKE_CRASH"] = "worker:1"
    self.addCleanup(os.environ.pop, "FAKE_CRASH", None)
    os.environ["FAKE_CHIEF_SECONDS"] = "4"
    self.addCleanup(os.environ.pop, "FAKE_CHIEF_SECONDS", None)
    out = io.StringIO()
    cluster = launch.Cluster([sys.executable, FAKE], workers=2, ps=0, grace_seconds=5, out=out)
    self.assertEqual(cluster.run(timeout=60), 0)
    self.assertIn("[worker 1] exited with status 3: restarting it (1/3)", out.getvalue())
    self.assertLen([r for r in self._reports() if r["task"] == {"type": "worker", "index": 1}],
                   2)
    self.assertNotIn("ps", self._reports()[0]["cluster"])  # --ps=0: multi-worker mirrored
    for pid in cluster.started_pids:
      self.assertFalse(process_alive(pid))
    # No restarts allowed: the launcher stops everything with the dead task's status.
    os.remove(os.path.join(self.dir, "crashed_worker_1"))
    cluster = launch.Cluster([sys.executable, FAKE], workers=2, ps=0, max_restarts=0,
                             grace_seconds=5, out=io.StringIO())
    self.assertEqual(cluster.run(timeout=60), 3)
    for pid in cluster.started_pids:
      self.assertFalse(process_alive(pid))

  def test_sigterm_stops_every_process_it_started(self):
    env = {**os.environ, "FAKE_CHIEF_SECONDS": "100", "PYTHONPATH": REPO_ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "k4p1.launch", "--workers=1", "--ps=1",
                             "--grace_seconds=5", "--", sys.executable, FAKE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
      deadline = time.time() + 60
      while len(glob.glob(os.path.join(self.dir, "*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.1)
      pids = [int(p.rsplit("_", 1)[1][:-5]) for p in glob.glob(os.path.join(self.dir, "*.json"))]
      self.assertLen(pids, 3)
      proc.send_signal(signal.SIGTERM)
      out, _ = proc.communicate(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    self.assertEqual(proc.returncode, 130, out)
    self.assertIn("interrupted: stopping every process", out)
    for pid in pids:
      self.assertFalse(process_alive(pid), f"process {pid} outlived the launcher")

  def test_bad_input(self):
    out = subprocess.run([sys.executable, "-m", "k4p1.launch", "--workers=0", "--", "true"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": REPO_ROOT})
    self.assertEqual(out.returncode, 2)
    self.assertIn("error: need --workers >= 1", out.stderr)
    out = subprocess.run([sys.executable, "-m", "k4p1.launch", "--workers=1"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": REPO_ROOT})
    self.assertEqual(out.returncode, 2)
    self.assertIn("error: no command to launch", out.stderr)


if __name__ == "__main__":
  tf.test.main()
