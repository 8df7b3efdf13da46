"""The README's generated figures equal the measured results they come from."""

import os
import subprocess
import sys

import tensorflow as tf

from k4p1.testing import REPO_ROOT


class ReadmeFiguresTest(tf.test.TestCase):

  def test_generated_figures_match_bench_results(self):
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "readme_figures.py"),
                          "--check"], capture_output=True, text=True, timeout=120)
    self.assertEqual(out.returncode, 0, out.stderr + out.stdout)

  def test_check_fails_when_a_figure_drifts(self):
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
      readme = f.read()
    marker = "<!-- generated: digits_table -->\n"
    self.assertIn(marker, readme)
    drifted = readme.replace(marker, marker + "| `digits_0_4` | 99.99% |\n", 1)
    path = os.path.join(self.get_temp_dir(), "README.md")
    with open(path, "w") as f:
      f.write(drifted)
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "readme_figures.py"),
                          "--check", f"--readme={path}"], capture_output=True, text=True,
                         timeout=120)
    self.assertEqual(out.returncode, 1, out.stdout)
    self.assertIn("differ from bench/results", out.stderr)


if __name__ == "__main__":
  tf.test.main()
