"""Recipe 12 (per-example gradients) runs as users run it, ranks the flipped labels first, logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "12_per_example_gradients.py"


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text, re.M)
    assert match, f"no match for {pattern!r} in:\n{text}"
    return float(match[1])


@pytest.mark.slow
def test_recipe_12_flags_the_flipped_labels_and_logs_them(tmp_path):
    workdir, logdir = tmp_path / "cwd", tmp_path / "given" / "12"
    workdir.mkdir()
    args = ["--examples", "1500", "--epochs", "3", "--chunk", "400"]
    proc = subprocess.run(
        [sys.executable, str(RECIPE), "--logdir", str(logdir), *args],
        cwd=workdir,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    assert not any(workdir.iterdir()), "the recipe wrote into the working directory"
    out = proc.stdout
    k = int(_number(r"(\d+) labels flipped", out))
    assert k == 45  # 3% of 1500
    precision = _number(r"precision among the top \d+ gradient norms: ([\d.]+)", out)
    assert precision >= 0.8 > 10 * _number(r"random pick: ([\d.]+)", out)
    assert _number(r"max \|difference\| = (\S+)$", out) < 1e-5
    flipped_median = _number(r"median gradient norm: flipped ([\d.]+)", out)
    assert flipped_median > 5 * _number(r"clean ([\d.]+)", out)

    acc = ea.EventAccumulator(str(logdir / "per_example"), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {
        "gradient_norm/all",
        "gradient_norm/clean",
        "gradient_norm/flipped",
        "precision_at_k",
        "flagged_examples",
    } <= tags
    [hist] = acc.Tensors("gradient_norm/all")
    buckets = np.frombuffer(hist.tensor_proto.tensor_content, np.float64).reshape(-1, 3)
    assert buckets[:, 2].sum() == 1500  # every example's norm is in the histogram
    [flipped_hist] = acc.Tensors("gradient_norm/flipped")
    counts = np.frombuffer(flipped_hist.tensor_proto.tensor_content, np.float64).reshape(-1, 3)
    assert counts[:, 2].sum() == k
    [prec] = acc.Tensors("precision_at_k")
    assert float(np.frombuffer(prec.tensor_proto.tensor_content, np.float32)[0]) == pytest.approx(
        precision, abs=1e-3
    )
    [text] = acc.Tensors("flagged_examples")
    table = text.tensor_proto.string_val[0].decode()
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \| \d+ \|", line)]
    assert len(rows) == k
    assert sum(row.endswith("| yes |") for row in rows) == round(precision * k)
    assert list((logdir / "train").glob("events.out.tfevents.*")), "the Trainer's run is logged"
