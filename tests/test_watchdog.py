"""The step watchdog: a run that stops making progress dumps its stacks and exits 87."""

import os
import subprocess
import sys
import time

from jaxlm import exit_status
from jaxlm.train import watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, tmp_path):
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_a_hang_dumps_every_stack_and_exits_with_the_hang_status(tmp_path):
  code = f"""
import time
from jaxlm.train.watchdog import Watchdog
def stuck_in_a_collective():
  time.sleep(30)
with Watchdog(0.5, {str(tmp_path)!r}, process_index=1) as w:
  for step in range(10):  # healthy steps: faster than the limit
    w.beat(f"step {{step}}", step_done=step > 0)
    time.sleep(0.05)
  stuck_in_a_collective()
"""
  proc = _run(code, tmp_path)
  assert proc.returncode == exit_status.HANG == 87, proc.stderr
  dump = open(tmp_path / "hang-process1.txt").read()
  assert dump.startswith("no progress for ") and "while running step 9" in dump
  assert "stuck_in_a_collective" in dump  # the main thread's stack, where it hangs
  assert proc.stderr.startswith("error: process 1 made no progress for ")
  assert "hang-process1.txt" in proc.stderr and exit_status.describe(87).startswith(
      "exit status 87 (hung")


def test_healthy_beats_never_fire_and_slow_steps_raise_the_limit(tmp_path):
  fired = []
  w = watchdog.Watchdog(0.2, str(tmp_path), exit=fired.append)
  with w:
    for step in range(20):
      w.beat("step", step_done=True)
      time.sleep(0.02)
  assert not fired and not os.listdir(tmp_path)
  w._intervals = [1.0, 1.0, 30.0]  # a median step of 1 s allows 50 s
  assert w.limit() == 50.0
  assert list(w.beating(iter([1, 2]), "an evaluation")) == [1, 2] and w._what == "an evaluation"


def test_exit_statuses_say_what_ended_a_process():
  assert exit_status.describe(-9) == "killed by SIGKILL"
  assert exit_status.describe(-6).startswith("killed by SIGABRT (aborted")
  assert exit_status.describe(1) == "exit status 1 (a Python error)"
  assert exit_status.describe(42) == "exit status 42"
  assert [exit_status.restartable(c) for c in (0, 1, 2, 3, 87, -9, 250)] == \
      [False, True, False, False, True, True, True]
