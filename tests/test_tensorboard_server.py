"""A real `tensorboard --logdir` process serves what tapekit.board wrote: runs, scalar and
histogram tags, the graphs, and explain's text. Queried over its HTTP data API, then shut down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tapekit as tk
from tapekit.board import GradientLogger, RunWriters, log_graph

TENSORBOARD = Path(sys.executable).with_name("tensorboard")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_logs(logdir: Path) -> list[str]:
    w1, w2 = tf.Variable([1.0, -2.0], name="w"), tf.Variable(0.5, name="w")  # same names
    with RunWriters(logdir / "run") as run:
        run.check_writable()
        logger = GradientLogger(run.writer("train"), histogram_every=2)
        for step in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(w1**2) * w2
            logger(step, tape.gradient(loss, [w1, w2]), [w1, w2])
            run.scalars("train", {"loss": loss}, step)
            run.scalars("validation", {"loss": loss + 1.0}, step)
    log_graph(lambda x, y: x**2 * y + y + 2, 3.0, 4.0, logdir=logdir, name="f", gradients=True)
    tk.explain(lambda x, y: x**2 * y + y + 2, 3.0, 4.0).log(logdir, name="explain_f")
    return logger.tags([w1, w2])


def _get(port: int, path: str, **params: str):
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}{query}", timeout=10) as r:
        body = r.read().decode()
    return json.loads(body) if r.headers.get_content_type() == "application/json" else body


def test_tensorboard_serves_runs_scalars_histograms_graphs_and_text(tmp_path):
    tags = _write_logs(tmp_path)
    assert tags == ["w", "w_1"]
    port = _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [
            str(TENSORBOARD),
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    expected_runs = {"run/train", "run/validation", "f", "explain_f"}
    try:
        runs: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded poll: server up, then runs loaded
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited with {proc.returncode}: {proc.stderr.read()}")
            try:
                runs = _get(port, "/data/runs")
                if expected_runs <= set(runs):
                    scalars = _get(port, "/data/plugin/scalars/tags")
                    if "loss" in scalars.get("run/validation", {}):
                        break
            except OSError:
                pass
            time.sleep(0.5)
        assert expected_runs <= set(runs), runs

        scalars = _get(port, "/data/plugin/scalars/tags")
        assert set(scalars["run/train"]) == {
            "loss",
            "gradient_norm/global",
            "gradient_norm/w",
            "gradient_norm/w_1",
        }
        assert set(scalars["run/validation"]) == {"loss"}
        series = _get(port, "/data/plugin/scalars/scalars", run="run/validation", tag="loss")
        assert [row[1] for row in series] == [0, 1, 2]  # [wall_time, step, value]
        values = [row[2] for row in series]
        np.testing.assert_allclose(values, [3.5, 3.5, 3.5], rtol=1e-6)  # (1 + 4) * 0.5 + 1

        hists = _get(port, "/data/plugin/histograms/tags")
        assert set(hists["run/train"]) == {
            "gradients/w",
            "gradients/w_1",
            "weights/w",
            "weights/w_1",
        }
        h = _get(port, "/data/plugin/histograms/histograms", run="run/train", tag="gradients/w")
        assert [row[1] for row in h] == [0, 2]

        info = _get(port, "/data/plugin/graphs/info")
        assert info["f"]["run_graph"] and info["explain_f"]["run_graph"]
        graph = _get(port, "/data/plugin/graphs/graph", run="f")
        assert 'op: "Pow"' in graph and 'name: "gradient_tape/' in graph

        text = _get(port, "/data/plugin/text/text", run="explain_f", tag="explain")
        assert "∂mul/∂pow" in text[0]["text"]
    finally:
        proc.send_signal(signal.SIGINT)  # TensorBoard's clean shutdown path
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()
    assert proc.returncode is not None
