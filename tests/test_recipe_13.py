"""recipes/13_edge_of_stability.py reproduces the edge of stability (Cohen et al., 2021): the
sharpness starts well below 2/η and ends within 10% of it, for both step sizes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator as ea

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "recipes" / "13_edge_of_stability.py"
LINE = re.compile(
    r"^eta (?P<eta>[\d.]+) \| 2/eta (?P<two>[\d.]+) \| sharpness start (?P<start>[\d.]+) .*"
    r"-> end (?P<end>[\d.]+) .*\| loss (?P<l0>[\d.]+) -> (?P<l1>[\d.]+)",
    re.M,
)


def _series(path: Path, tag: str) -> list[tuple[int, float]]:
    acc = ea.EventAccumulator(str(path), size_guidance={ea.TENSORS: 0}).Reload()
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


@pytest.mark.slow
def test_sharpness_rises_to_two_over_eta_and_is_logged(tmp_path):
    logdir = tmp_path / "logs"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--logdir", str(logdir), "--steps", "1500", "--every", "100"],
        cwd=tmp_path,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = [m.groupdict() for m in LINE.finditer(proc.stdout)]
    assert [float(r["eta"]) for r in rows] == [0.3, 0.5], proc.stdout
    for row in rows:
        eta, start, end = float(row["eta"]), float(row["start"]), float(row["end"])
        assert float(row["two"]) == pytest.approx(2 / eta, abs=1e-3)
        assert start < 0.5 * 2 / eta  # well below the edge at the start
        assert abs(end / (2 / eta) - 1) <= 0.10  # and at the edge at the end
        assert float(row["l1"]) < float(row["l0"]) / 100  # while the loss keeps falling
        run = logdir / f"eta_{eta:g}"
        sharp = _series(run, "curvature/top_eigenvalue")
        assert [s for s, _ in sharp] == list(range(0, 1501, 100))
        assert sharp[0][1] == pytest.approx(start, abs=1e-3)
        assert sharp[-1][1] == pytest.approx(end, abs=1e-3)
        assert [v for _, v in _series(run, "two_over_eta")] == pytest.approx([2 / eta] * 16)
        rates = _series(run, "optimizer/learning_rate")  # what `tapekit inspect` compares with
        assert [s for s, _ in rates] == list(range(0, 1501, 100))
        assert [v for _, v in rates] == pytest.approx([eta] * 16)
        losses = _series(run, "loss")
        assert len(losses) == 1501 and losses[0][1] == pytest.approx(float(row["l0"]), abs=1e-4)
    # at eta = 0.5 the loss is non-monotone once the sharpness reaches 2/eta
    steps_up = re.search(r"eta 0.5 .*rose in (\d+) steps", proc.stdout)
    assert steps_up and int(steps_up[1]) > 0
