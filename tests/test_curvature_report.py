"""tapekit inspect's curvature findings, from real event files written by tf.summary."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

import tapekit
from tapekit.board import reader as logs_inspect
from tapekit.board.curvature_report import curvature_findings


def _write(logdir, series: dict[str, list[tuple[int, float]]]) -> None:
    with tf.summary.create_file_writer(str(logdir)).as_default():
        for tag, points in series.items():
            for step, value in points:
                tf.summary.scalar(tag, value, step=step)


def test_edge_of_stability_exploding_updates_and_noise_scale(tmp_path):
    _write(
        tmp_path / "gd" / "train",
        {
            "curvature/top_eigenvalue": [(0, 1.5), (100, 6.4), (200, 6.9)],
            "optimizer/learning_rate": [(200, 0.3)],  # the Trainer's tag
            "update_ratio/net/dense/kernel": [(100, 1e-3), (200, 0.35)],
            "update_ratio/net/dense/bias": [(100, 1e-3), (200, 2e-3)],
            "gradient_noise/b_simple": [(100, 900.0), (200, 1100.0), (300, 1000.0)],
            "gradient_noise/batch_size": [(100, 32.0)],
        },
    )
    [run] = logs_inspect.summarize(tmp_path)
    findings = curvature_findings(run.scalars)
    kinds = [k for k, _ in findings]
    texts = "\n".join(t for _, t in findings)
    assert kinds == ["NOTE", "WARNING", "NOTE"], findings
    assert "sharpness 6.9 at step 200 is 1.04 x 2/learning_rate = 6.667" in texts
    assert "at the edge of stability" in texts
    assert "update_ratio/net/dense/kernel: exploding update ratio |dw|/|w| = 0.35" in texts
    assert "dense/bias" not in texts
    assert "B_simple ~ 1000 (median of the last 3)" in texts
    assert "batch size 32 is 31.2x below it" in texts
    report = logs_inspect.format_report([run])
    assert "  NOTE sharpness 6.9" in report and "  WARNING update_ratio/net/dense/kernel" in report


def test_above_below_and_nothing_to_say(tmp_path):
    for name, sharp, lr_tag in (("above", 30.0, "learning_rate"), ("below", 5.0, "lr")):
        _write(tmp_path / name, {"curvature/top_eigenvalue": [(10, sharp)], lr_tag: [(10, 0.1)]})
    _write(tmp_path / "plain", {"loss": [(0, 1.0)]})
    runs = {r.name: r for r in logs_inspect.summarize(tmp_path)}
    [(kind, text)] = curvature_findings(runs["above"].scalars)
    assert kind == "WARNING" and "1.5 x 2/learning_rate = 20: above the edge" in text
    [(kind, text)] = curvature_findings(runs["below"].scalars)
    assert kind == "NOTE" and "0.25 x 2/learning_rate" in text and "below the edge" in text
    assert curvature_findings(runs["plain"].scalars) == []


def test_tapekit_inspect_prints_the_findings(tmp_path):
    _write(
        tmp_path / "run",
        {"curvature/top_eigenvalue": [(5, 4.2)], "learning_rate": [(5, 0.5)]},
    )
    out = subprocess.run(
        [sys.executable, "-m", "tapekit.cli", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "NOTE sharpness 4.2 at step 5 is 1.05 x 2/learning_rate = 4: at the edge" in out


def test_a_trainer_run_is_compared_with_its_own_learning_rate(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 2)).astype("float32")
    y = np.tanh(x @ np.array([[1.0], [-2.0]], "float32"))
    monitor = tapekit.CurvatureMonitor((x, y), every=2, k=1, tol=1e-5, max_iters=40)

    def build():
        keras.utils.set_random_seed(0)
        layers = [
            keras.Input((2,)),
            keras.layers.Dense(4, activation="tanh"),
            keras.layers.Dense(1),
        ]
        return keras.Sequential(layers)

    def mse(model, batch):
        return tf.reduce_mean((model(batch[0], training=True) - batch[1]) ** 2)

    trainer = tapekit.Trainer(
        build, mse, optimizer=keras.optimizers.SGD(0.25), callbacks=[monitor], logdir=tmp_path,
        histogram_every=0, seed=0,
    )  # fmt: skip
    trainer.fit((x, y), batch_size=16, epochs=4, verbose=0)  # full batch: one step per epoch
    trainer.close()
    [run] = logs_inspect.summarize(tmp_path)
    assert run.scalars["optimizer/learning_rate"].values == [0.25] * 4
    step, sharp = monitor.history["curvature/top_eigenvalue"][-1]
    [(kind, text)] = [f for f in curvature_findings(run.scalars) if "sharpness" in f[1]]
    assert text.startswith(f"sharpness {sharp:.4g} at step {step} is {sharp / 8:.3g} x ")
    assert "2/learning_rate = 8:" in text and kind == ("WARNING" if sharp / 8 > 1.1 else "NOTE")
