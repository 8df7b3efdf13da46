r"""A local tf.distribute cluster in one command: chief, workers and parameter servers as processes.

  python -m k4p1.launch --workers=2 --ps=1 -- python train.py --config=configs/multitask.py:smoke,parameter_server

starts the same command once per cluster task on 127.0.0.1 with free ports, each with its own
TF_CONFIG, and streams their output with a `[chief]`, `[worker 0]`, `[ps 0]` prefix. The run's
exit status is the chief's. A worker or parameter server that dies is restarted (at most
--max_restarts times in all); on exit, on Ctrl-C or on SIGTERM every process it started is
stopped (SIGTERM, then SIGKILL after --grace_seconds), and only those.

Cluster layouts: --ps > 0 gives {chief, worker * N, ps * M} (parameter-server training: the chief
coordinates, workers compute, parameter servers hold the variables); --ps=0 gives {chief,
worker * N} (multi-worker mirrored: every task trains, the chief also writes). On a real cluster
(e.g. a Kubernetes Job with one pod per task) run the same train.py command in every pod with the
TF_CONFIG this launcher would write, naming the pods' addresses instead of 127.0.0.1.

Example (what each process gets):
  TF_CONFIG={"cluster": {"chief": ["127.0.0.1:41231"], "worker": [...], "ps": [...]},
             "task": {"type": "worker", "index": 1}}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time


# A tf.distribute.Server listens on every interface whatever address its cluster names; tests
# and benchmarks run local clusters in a network namespace with loopback only.
PRIVATE_NETWORK = ("unshare", "--user", "--map-root-user", "--net")


def private_network_available(with_ip: bool = True) -> bool:
  """Whether `PRIVATE_NETWORK` works here (and `ip`, which brings its loopback up)."""
  if shutil.which("unshare") is None or (with_ip and shutil.which("ip") is None):
    return False
  try:
    return subprocess.run(list(PRIVATE_NETWORK) + ["true"], capture_output=True,
                          timeout=30).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


def in_private_network(command: str) -> list[str]:
  """argv running the shell `command` in a new network namespace with only loopback, up."""
  return list(PRIVATE_NETWORK) + ["sh", "-c", f"ip link set lo up && exec {command}"]


def free_ports(n: int) -> list[int]:
  """n distinct free TCP ports on 127.0.0.1 (held open together while choosing)."""
  sockets = []
  try:
    for _ in range(n):
      s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      s.bind(("127.0.0.1", 0))
      sockets.append(s)
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def cluster_spec(workers: int, ps: int) -> dict:
  """{job: [addresses]} for a chief, `workers` workers and `ps` parameter servers."""
  ports = iter(free_ports(1 + workers + ps))
  spec = {"chief": [f"127.0.0.1:{next(ports)}"],
          "worker": [f"127.0.0.1:{next(ports)}" for _ in range(workers)]}
  if ps:
    spec["ps"] = [f"127.0.0.1:{next(ports)}" for _ in range(ps)]
  return spec


class Cluster:
  """The processes of one local cluster: start, stream, restart, stop.

  Args:
    command: the command every task runs (argv list).
    workers, ps: how many of each.
    max_restarts: restarts of dead workers / parameter servers allowed in all.
    grace_seconds: how long a process has to exit after SIGTERM before SIGKILL.
    out: where prefixed lines go.
  """

  def __init__(self, command: list[str], workers: int, ps: int, max_restarts: int = 3,
               grace_seconds: float = 10.0, out=None):
    if not command:
      raise ValueError("no command to launch: write it after `--`.")
    if workers < 1 or ps < 0:
      raise ValueError(f"need --workers >= 1 and --ps >= 0. Received: workers={workers}, "
                       f"ps={ps}")
    self.command, self.max_restarts, self.grace = command, max_restarts, grace_seconds
    self.spec = cluster_spec(workers, ps)
    self.tasks = [(job, i) for job in ("chief", "worker", "ps") for i in
                  range(len(self.spec.get(job, [])))]
    self.procs: dict[tuple, subprocess.Popen] = {}
    self.started_pids: list[int] = []
    self.restarts = 0
    self.out = out or sys.stdout
    self._lock = threading.Lock()
    self._threads = []

  def tf_config(self, job: str, index: int) -> str:
    return json.dumps({"cluster": self.spec, "task": {"type": job, "index": index}})

  def _label(self, job, index) -> str:
    return "[chief]" if job == "chief" else f"[{job} {index}]"

  def start(self, job: str, index: int):
    env = {**os.environ, "TF_CONFIG": self.tf_config(job, index), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(self.command, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    self.procs[(job, index)] = proc
    self.started_pids.append(proc.pid)
    thread = threading.Thread(target=self._stream, args=(proc, self._label(job, index)),
                              daemon=True)
    thread.start()
    self._threads.append(thread)

  def _stream(self, proc, label):
    for line in proc.stdout:
      with self._lock:
        self.out.write(f"{label} {line}")
        self.out.flush()

  def say(self, text: str):
    with self._lock:
      self.out.write(f"[launch] {text}\n")
      self.out.flush()

  def run(self, timeout: float | None = None) -> int:
    """Starts every task; returns the chief's exit status once it exits (or 124 on timeout)."""
    for job, index in self.tasks:
      self.start(job, index)
    self.say(f"cluster {json.dumps(self.spec)}; pids " +
             ", ".join(f"{self._label(j, i)}={self.procs[(j, i)].pid}" for j, i in self.tasks))
    deadline = None if timeout is None else time.time() + timeout
    try:
      while True:
        chief = self.procs[("chief", 0)]
        if chief.poll() is not None:
          self.say(f"chief exited with status {chief.returncode}")
          return chief.returncode
        for (job, index), proc in list(self.procs.items()):
          if job == "chief" or proc.poll() is None:
            continue
          if self.restarts >= self.max_restarts:
            self.say(f"{self._label(job, index)} exited with status {proc.returncode}; "
                     f"no restarts left (--max_restarts={self.max_restarts}): stopping")
            return proc.returncode or 1
          self.restarts += 1
          self.say(f"{self._label(job, index)} exited with status {proc.returncode}: "
                   f"restarting it ({self.restarts}/{self.max_restarts})")
          self.start(job, index)
        if deadline is not None and time.time() > deadline:
          self.say(f"timed out after {timeout} s: stopping")
          return 124
        time.sleep(0.2)
    finally:
      self.stop()

  def stop(self):
    """SIGTERM to every process this cluster started, SIGKILL to those still alive later."""
    alive = [p for p in self.procs.values() if p.poll() is None]
    for proc in alive:
      _signal_group(proc, signal.SIGTERM)
    deadline = time.time() + self.grace
    for proc in alive:
      try:
        proc.wait(timeout=max(0.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)
    for thread in self._threads:
      thread.join(timeout=5)


def _signal_group(proc, sig):
  """Signals the process group the launcher created for `proc` (its children included)."""
  try:
    os.killpg(proc.pid, sig)
  except ProcessLookupError:
    pass


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m k4p1.launch", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Example: python -m k4p1.launch --workers=2 --ps=1 -- python train.py "
             "--config=configs/multitask.py:smoke,parameter_server --workdir=/tmp/k4p1_ps")
  parser.add_argument("--workers", type=int, default=2, help="worker tasks (default 2)")
  parser.add_argument("--ps", type=int, default=1, help="parameter-server tasks; 0 = a "
                      "multi-worker mirrored cluster (default 1)")
  parser.add_argument("--max_restarts", type=int, default=3,
                      help="restarts of dead workers / parameter servers in all (default 3)")
  parser.add_argument("--grace_seconds", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when stopping (default 10)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="stop everything after this many seconds (default: none)")
  parser.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- then the command every task runs")
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  try:
    cluster = Cluster(command, args.workers, args.ps, args.max_restarts, args.grace_seconds)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  def on_signal(signum, frame):
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, on_signal)
  try:
    return cluster.run(args.timeout)
  except KeyboardInterrupt:
    cluster.say("interrupted: stopping every process")
    return 130


if __name__ == "__main__":
  sys.exit(main())
