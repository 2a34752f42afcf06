"""A real TensorBoard, started by `tapekit board` like a user does, serves what tapekit wrote:
runs, scalar and histogram tags, the graphs, and explain's text. Queried over its HTTP data API;
one server for the whole module, stopped with Ctrl+C (SIGINT) at the end, which must exit 0 and
close the port."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tapekit as tk
from tapekit.board import GradientLogger, RunWriters, log_graph

pytestmark = pytest.mark.slow


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


def _write_training_logs(logdir: Path) -> None:
    """A plain tf.summary training run, 'train' and 'validation', as any script writes."""
    with tf.summary.create_file_writer(str(logdir / "train")).as_default():
        for step in range(20):
            tf.summary.scalar("loss", 2.0 / (step + 1), step=step)
            tf.summary.scalar("gradient_norm/dense/kernel", 1.0 / (1 + 0.1 * step), step=step)
    with tf.summary.create_file_writer(str(logdir / "validation")).as_default():
        for step in (9, 19):
            tf.summary.scalar("loss", 1.5 if step == 9 else 1.0, step=step)


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    port: int
    logger_tags: list[str]

    def get(self, path: str, **params: str):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path.lstrip('/')}{query}", timeout=10) as r:
            body = r.read().decode()
        return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def wait_for(self, runs: set[str], scalar: tuple[str, str]) -> list[str]:
        """Poll (bounded) until ``runs`` are loaded and the ``(run, tag)`` scalar is there."""
        got: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tapekit board exited with {self.proc.returncode}")
            try:
                got = self.get("/data/runs")
                if runs <= set(got) and scalar[1] in self.get("/data/plugin/scalars/tags").get(
                    scalar[0], {}
                ):
                    return got
            except OSError:
                pass
            time.sleep(0.5)
        return got


def _port_is_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`tapekit board LOGDIR --port 0` over tapekit's logs (top level) and a plain training run
    (under cli/); on teardown Ctrl+C must stop it cleanly: exit status 0 and the port closed."""
    logdir = tmp_path_factory.mktemp("board")
    tags = _write_logs(logdir)
    _write_training_logs(logdir / "cli")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TAPEKIT_COMMAND", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tapekit.cli", "board", str(logdir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(
            r"TensorBoard for .* at (http://127\.0\.0\.1:(\d+)/) \(press Ctrl\+C", line
        )
        if not match:
            proc.kill()
            pytest.fail(f"unexpected first line {line!r}; stderr: {proc.communicate()[1][-3000:]}")
        yield Server(proc, match[1], int(match[2]), tags)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl+C: the command's clean shutdown path
        try:  # ~5 s on an idle machine (TensorBoard's teardown); far longer on a loaded one
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            pytest.fail("tapekit board did not stop within 90 s of Ctrl+C")
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0, f"tapekit board exited with {proc.returncode}: {stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr
    assert _port_is_closed(int(match[2])), "the port still accepts connections after Ctrl+C"


def test_board_serves_a_training_run(server):
    runs = server.wait_for({"cli/train", "cli/validation"}, ("cli/train", "loss"))
    assert {"cli/train", "cli/validation"} <= set(runs)
    tags = server.get("/data/plugin/scalars/tags")
    assert set(tags["cli/train"]) == {"loss", "gradient_norm/dense/kernel"}
    series = server.get("/data/plugin/scalars/scalars", run="cli/validation", tag="loss")
    assert [(row[1], row[2]) for row in series] == [(9, 1.5), (19, 1.0)]


def test_tensorboard_serves_runs_scalars_histograms_graphs_and_text(server):
    assert server.logger_tags == ["w", "w_1"]
    expected_runs = {"run/train", "run/validation", "f", "explain_f"}
    runs = server.wait_for(expected_runs, ("run/validation", "loss"))
    assert expected_runs <= set(runs), runs

    scalars = server.get("/data/plugin/scalars/tags")
    assert set(scalars["run/train"]) == {
        "loss",
        "gradient_norm/global",
        "gradient_norm/w",
        "gradient_norm/w_1",
    }
    assert set(scalars["run/validation"]) == {"loss"}
    series = server.get("/data/plugin/scalars/scalars", run="run/validation", tag="loss")
    assert [row[1] for row in series] == [0, 1, 2]  # [wall_time, step, value]
    values = [row[2] for row in series]
    np.testing.assert_allclose(values, [3.5, 3.5, 3.5], rtol=1e-6)  # (1 + 4) * 0.5 + 1

    hists = server.get("/data/plugin/histograms/tags")
    assert set(hists["run/train"]) == {
        "gradients/w",
        "gradients/w_1",
        "weights/w",
        "weights/w_1",
    }
    h = server.get("/data/plugin/histograms/histograms", run="run/train", tag="gradients/w")
    assert [row[1] for row in h] == [0, 2]

    info = server.get("/data/plugin/graphs/info")
    assert info["f"]["run_graph"] and info["explain_f"]["run_graph"]
    graph = server.get("/data/plugin/graphs/graph", run="f")
    assert 'op: "Pow"' in graph and 'name: "gradient_tape/' in graph

    text = server.get("/data/plugin/text/text", run="explain_f", tag="explain")
    assert "∂mul/∂pow" in text[0]["text"]
