"""A stand-in cluster task for tests/launch_test.py: reports its TF_CONFIG, then behaves as told.

Env: FAKE_DIR (where it writes <type>_<index>_<pid>.json), FAKE_CHIEF_SECONDS (the chief exits
0 after this long), FAKE_CRASH (e.g. "worker:1": that task exits 3 on its first start only).
Every task exits by itself after 120 s at the latest (tests must never leave a process behind).
"""

import json
import os
import sys
import time

config = json.loads(os.environ["TF_CONFIG"])
job, index = config["task"]["type"], config["task"]["index"]
out = os.environ["FAKE_DIR"]
with open(os.path.join(out, f"{job}_{index}_{os.getpid()}.json"), "w") as f:
  json.dump(config, f)
print(f"hello from {job} {index}", flush=True)
crash = os.environ.get("FAKE_CRASH", "")
marker = os.path.join(out, f"crashed_{job}_{index}")
if crash == f"{job}:{index}" and not os.path.exists(marker):
  open(marker, "w").close()
  time.sleep(0.5)
  sys.exit(3)
deadline = time.time() + (float(os.environ.get("FAKE_CHIEF_SECONDS", "2")) if job == "chief"
                          else 120)
while time.time() < deadline:
  time.sleep(0.1)
sys.exit(0)
