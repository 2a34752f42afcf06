"""Helpers every recipe shares: its summary writer, synthetic data and the closing hint.

A recipe imports them with ``from _common import ...`` (Python puts the script's own folder,
``recipes/``, first on ``sys.path``), after ``import tapekit.quiet``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["classification_data", "line_data", "logs_hint", "new_figure", "open_writer"]


def open_writer(logdir: str, runs: Iterable[str] = ()) -> tf.summary.SummaryWriter:
    """A summary writer for ``logdir``; a rerun replaces the event files of the previous one.

    Args:
        logdir: The recipe's log directory (created if missing).
        runs: Sub-runs the recipe also writes (e.g. a graph logged under ``logdir/f_gradients``);
            their old event files are removed too.

    Returns:
        The writer for ``logdir`` itself.
    """
    for run in ("", *runs):
        for old in Path(logdir, run).glob("events.out.tfevents.*"):
            old.unlink()
    return tf.summary.create_file_writer(logdir)


def line_data(
    n: int, seed: int, w: np.ndarray, b: float, noise: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of y = X·w + b + N(0, noise²) with X ~ N(0, 1), as float32.

    Returns:
        ``(x, y)`` of shapes ``(n, len(w))`` and ``(n, 1)``.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(w))).astype("float32")
    y = x @ w + b + rng.normal(scale=noise, size=n).astype("float32")
    return x, y[:, None]


def classification_data(
    n: int, seed: int, classes: int = 10, features: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled points: class centres plus noise, seen through a fixed non-linear map.

    A linear model cannot separate the classes; a small MLP can. Nothing is downloaded.

    Returns:
        ``(x, labels)``: float32 of shape ``(n, features)`` and int64 of shape ``(n,)``.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.8, size=(classes, features))
    mix = rng.normal(size=(features, features)) / np.sqrt(features)
    labels = rng.integers(0, classes, size=n)
    points = centres[labels] + rng.normal(size=(n, features))
    x = np.tanh(points @ mix) + 0.5 * np.sin(2.0 * points[:, ::-1])
    return x.astype("float32"), labels.astype("int64")


def new_figure(**kwargs: Any) -> Any:
    """A Matplotlib ``Figure`` (no pyplot, no window) for ``tapekit.board.log_figure``.

    Raises:
        SystemExit: If Matplotlib is missing, saying how to install it.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise SystemExit(
            "This recipe draws its plots with Matplotlib, which is not installed. The quick "
            "start installs it (python3 dev.py setup); elsewhere: pip install 'tapekit[plots]'."
        ) from None
    return Figure(**kwargs)


def logs_hint(logdir: str) -> str:
    """The closing line of a recipe: how to look at what it logged, runnable as printed.

    The commands are the quick start's ``dev.py`` verbs, run from the repository root; they use
    the ``.venv`` that ``python3 dev.py demo`` created.
    """
    return f"Logs: python3 dev.py inspect {logdir}   or   python3 dev.py board {logdir}"
