"""Child training processes for the kill-and-resume tests: start one, kill it at a marker file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def run_child(
    child: Path, ckpt: Path, out: Path, *extra: str, wait: bool = True
) -> subprocess.Popen:
    """Run ``child ckpt out *extra`` in a new Python; with ``wait``, require a clean exit."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, str(child), str(ckpt), str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if wait:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output[-3000:]
    return proc


def kill_when_reached(proc: subprocess.Popen, marker: Path, timeout: float = 240) -> None:
    """Wait until the child writes ``marker``, then ``kill -9`` it and check that it died so."""
    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, f"the child never wrote {marker.name}"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
