"""What ``tapekit inspect`` says about the curvature, update sizes and gradient noise of a run.

It reads the scalars :class:`tapekit.CurvatureMonitor` writes (and the learning rate the
Trainer writes, ``optimizer/learning_rate``; a bare ``learning_rate`` or ``lr`` from users' own
logs and older runs is read too) and reports:

* the last sharpness (``curvature/top_eigenvalue``) against ``2 / learning_rate``: plain
  gradient descent is stable along a direction of curvature λ only while λ < 2/η, and full-batch
  training tends to sit right at that edge (Cohen et al., 2021). For adaptive optimizers such as
  Adam the threshold applies to the preconditioned Hessian instead, so read it as a hint;
* exploding update ratios ``update_ratio/<variable>`` (``|Δw| / |w|`` of one step);
* the gradient noise scale ``B_simple`` against the batch size (McCandlish et al., 2018).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

__all__ = ["curvature_findings"]

_SHARPNESS = "curvature/top_eigenvalue"
_LEARNING_RATE = ("optimizer/learning_rate", "learning_rate", "lr")  # first found is used
_UPDATE_PREFIX = "update_ratio/"


def _last(series: Any) -> tuple[int, float] | None:
    pairs = [(s, v) for s, v in zip(series.steps, series.values) if math.isfinite(v)]
    return pairs[-1] if pairs else None


def _edge(scalars: Mapping[str, Any], tolerance: float) -> list[tuple[str, str]]:
    sharp = _last(scalars[_SHARPNESS]) if _SHARPNESS in scalars else None
    lr_tag = next((t for t in _LEARNING_RATE if t in scalars), None)
    lr = _last(scalars[lr_tag]) if lr_tag else None
    if sharp is None or lr is None or lr[1] <= 0:
        return []
    (step, value), edge = sharp, 2.0 / lr[1]
    ratio = value / edge
    text = f"sharpness {value:.4g} at step {step} is {ratio:.3g} x 2/learning_rate = {edge:.4g}"
    if abs(ratio - 1) <= tolerance:
        return [
            (
                "NOTE",
                f"{text}: at the edge of stability (Cohen et al. 2021); with plain GD the loss "
                f"falls non-monotonically here, a smaller learning rate leaves the edge",
            )
        ]
    if ratio > 1 + tolerance:
        return [
            (
                "WARNING",
                f"{text}: above the edge, plain (S)GD is unstable along the top direction; "
                f"lower the learning rate (adaptive optimizers: compare with care)",
            )
        ]
    return [("NOTE", f"{text}: below the edge of stability")]


def _updates(scalars: Mapping[str, Any], threshold: float) -> list[tuple[str, str]]:
    out = []
    for tag, series in scalars.items():
        if not tag.startswith(_UPDATE_PREFIX):
            continue
        last = _last(series)
        if last is not None and last[1] >= threshold:
            out.append(
                (
                    "WARNING",
                    f"{tag}: exploding update ratio |dw|/|w| = {last[1]:.3g} at step {last[0]} "
                    f"(>= {threshold:g}; ~1e-3 is typical): one step rewrites this variable; "
                    f"lower the learning rate or clip gradients",
                )
            )
    return out


def _noise(scalars: Mapping[str, Any]) -> list[tuple[str, str]]:
    series = scalars.get("gradient_noise/b_simple")
    if series is None:
        return []
    recent = [v for v in series.values[-5:] if math.isfinite(v)]
    if not recent:
        return []
    b_simple = statistics.median(recent)
    text = f"gradient noise scale B_simple ~ {b_simple:.4g} (median of the last {len(recent)})"
    batch = scalars.get("gradient_noise/batch_size")
    last = _last(batch) if batch is not None else None
    if b_simple <= 0:
        return [("NOTE", f"{text}: not positive, the gradient is too small to estimate it")]
    if last is None:
        return [("NOTE", f"{text}; pass batch_size= to CurvatureMonitor to compare")]
    size = last[1]
    if size < b_simple / 2:
        verdict = (
            f"the batch size {size:g} is {b_simple / size:.3g}x below it: larger batches (up "
            f"to ~B_simple) would need proportionally fewer steps"
        )
    elif size > 2 * b_simple:
        verdict = (
            f"the batch size {size:g} is {size / b_simple:.3g}x above it: smaller batches "
            f"would reach the same loss with fewer examples"
        )
    else:
        verdict = f"the batch size {size:g} is close to it (a good trade of steps and examples)"
    return [("NOTE", f"{text}: {verdict}")]


def curvature_findings(
    scalars: Mapping[str, Any], *, edge_tolerance: float = 0.1, update_ratio: float = 0.1
) -> list[tuple[str, str]]:
    """Findings about sharpness, update ratios and gradient noise from one run's scalars.

    Args:
        scalars: ``{tag: series}`` where each series has ``steps`` and ``values`` lists (what
            :func:`tapekit.board.reader.summarize` gives as ``run.scalars``).
        edge_tolerance: A sharpness within this relative distance of ``2/learning_rate`` is
            "at the edge of stability".
        update_ratio: An ``update_ratio/<variable>`` whose last value is at least this is
            reported as exploding.

    Returns:
        ``[(kind, text), ...]`` with ``kind`` ``"NOTE"`` or ``"WARNING"``; empty when the run
        logged none of these quantities.

    Raises:
        AttributeError: If a series lacks ``steps`` or ``values``.

    Example:
        >>> from types import SimpleNamespace as S
        >>> runs = {"curvature/top_eigenvalue": S(steps=[0, 100], values=[2.0, 19.6]),
        ...         "optimizer/learning_rate": S(steps=[100], values=[0.1]),
        ...         "update_ratio/dense/kernel": S(steps=[100], values=[0.4])}
        >>> for kind, text in curvature_findings(runs):
        ...     print(kind, text.split(":")[0])
        NOTE sharpness 19.6 at step 100 is 0.98 x 2/learning_rate = 20
        WARNING update_ratio/dense/kernel
    """
    return [
        *_edge(scalars, edge_tolerance),
        *_updates(scalars, update_ratio),
        *_noise(scalars),
    ]
