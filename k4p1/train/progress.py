"""A progress bar on stderr (plain lines every 10% when stderr is not a terminal).

Example:
  progress = Progress(total=1000, start=0, title="train flowers")
  progress.update(10, loss=0.5)
"""

import sys
import time


class Progress:
  """A progress bar on stderr (plain lines every 10% when stderr is not a terminal)."""

  def __init__(self, total: int, start: int, title: str, enabled: bool = True):
    self.total, self.step, self.title, self.enabled = total, start, title, enabled
    self.tty = sys.stderr.isatty()
    self.t0, self.s0 = time.time(), start
    self._last_decile = -1

  def update(self, step: int, **values):
    self.step = step
    if not self.enabled:
      return
    frac = step / max(self.total, 1)
    rate = (step - self.s0) / max(time.time() - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    stats = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
    line = (f"{self.title} [{bar}] {step}/{self.total} {rate:.1f} steps/s "
            f"eta {eta:.0f}s {stats}")
    if self.tty:
      sys.stderr.write("\r" + line + ("\n" if step >= self.total else ""))
      sys.stderr.flush()
    elif int(10 * frac) > self._last_decile or step >= self.total:
      self._last_decile = int(10 * frac)
      sys.stderr.write(line + "\n")
