"""The gradient-flow view: per-layer gradient norms over time as one picture.

Two TensorBoard views, written with ``tf.summary`` and NumPy only (no plotting library):

* :func:`heatmap_image`: a layers × steps heat map of gradient norms (log scale, one row per
  variable in model order, one column per logged step, dark = small, bright = large), for an
  image summary. A vanishing gradient is a dark band in the top rows (the first layers), an
  exploding one a bright band that widens over time.
* :func:`write_layout`: a TensorBoard *custom scalars* layout that puts the per-layer curves
  (``gradient_norm/<variable>``, ``update_ratio/<variable>``) and the top Hessian eigenvalues
  on one chart each, in the "Custom Scalars" tab.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

__all__ = ["DEFAULT_CHARTS", "heatmap_image", "write_heatmap", "write_layout"]

# Viridis at 5 stops (dark blue -> green -> yellow), interpolated linearly.
_STOPS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64
)

DEFAULT_CHARTS: dict[str, dict[str, list[str]]] = {
    "gradient flow": {
        "gradient norm per layer": [r"gradient_norm/(?!global$).*"],
        "update / weight ratio per layer": [r"update_ratio/.*"],
    },
    "curvature": {
        "top Hessian eigenvalues": [r"curvature/top_eigenvalue.*"],
        "trace and noise scale": [r"curvature/trace", r"gradient_noise/b_simple"],
    },
}
"""The layout :func:`write_layout` writes by default: ``{category: {chart: [tag regexes]}}``."""


def heatmap_image(norms: np.ndarray, *, cell: int = 6) -> np.ndarray:
    """A ``[rows, columns]`` array of positive values as an RGB heat map (log10 scale).

    Args:
        norms: Values such as gradient norms, one row per layer, one column per step. Zeros
            and non-finite values are drawn black.
        cell: Pixels per value in each direction.

    Returns:
        A ``uint8`` array of shape ``[rows * cell, columns * cell, 3]``.

    Raises:
        ValueError: If ``norms`` is not 2-D or ``cell`` < 1.

    Example:
        >>> img = heatmap_image(np.array([[1e-3, 1e-2], [1.0, 10.0]]), cell=2)
        >>> img.shape, img.dtype, img[0, 0].tolist(), img[-1, -1].tolist()
        ((4, 4, 3), dtype('uint8'), [68, 1, 84], [253, 231, 37])
    """
    norms = np.asarray(norms, np.float64)
    if norms.ndim != 2:
        raise ValueError(
            f"heatmap_image needs a 2-D array [layers, steps], but received shape {norms.shape}."
        )
    if not isinstance(cell, int) or cell < 1:
        raise ValueError(f"heatmap_image needs cell to be an int >= 1, but received {cell!r}.")
    good = np.isfinite(norms) & (norms > 0)
    logs = np.where(good, np.log10(np.where(good, norms, 1.0)), np.nan)
    lo, hi = (np.nanmin(logs), np.nanmax(logs)) if good.any() else (0.0, 1.0)
    scaled = (logs - lo) / (hi - lo) if hi > lo else np.full_like(logs, 0.5)
    position = np.nan_to_num(scaled, nan=0.0) * (len(_STOPS) - 1)
    stops = np.arange(len(_STOPS))
    rgb = np.stack([np.interp(position, stops, _STOPS[:, c]) for c in range(3)], axis=-1)
    rgb[~good] = 0.0
    rgb = np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)
    return np.round(rgb).astype(np.uint8)


def write_heatmap(
    tag: str,
    norms: np.ndarray,
    names: Sequence[str],
    steps: Sequence[int],
    step: int,
    *,
    writer: tf.summary.SummaryWriter,
) -> None:
    """Write :func:`heatmap_image` of ``norms`` as an image summary, rows named in its text.

    Args:
        tag: The image tag, e.g. ``"gradient_flow/heatmap"``.
        norms: ``[len(names), len(steps)]`` values.
        names: Row labels (variable paths), top to bottom.
        steps: The training step of each column, left to right.
        step: The summary step.
        writer: The ``tf.summary`` writer.

    Raises:
        ValueError: If the shape of ``norms`` does not match ``names`` and ``steps``.

    Example:
        >>> import tempfile
        >>> w = tf.summary.create_file_writer(tempfile.mkdtemp())
        >>> write_heatmap("flow", np.ones((2, 3)), ["a", "b"], [0, 1, 2], 2, writer=w)
    """
    norms = np.asarray(norms, np.float64)
    if norms.shape != (len(names), len(steps)):
        raise ValueError(
            f"write_heatmap needs norms of shape (len(names), len(steps)) = "
            f"{(len(names), len(steps))}, but received {norms.shape}."
        )
    finite = norms[np.isfinite(norms) & (norms > 0)]
    span = f"{finite.min():.3g} (dark) to {finite.max():.3g} (bright)" if finite.size else "-"
    rows = "\n".join(f"{i + 1}. `{name}`" for i, name in enumerate(names))
    description = (
        f"Gradient norm per layer (rows, top to bottom) over steps {steps[0]}..{steps[-1]} "
        f"(columns), log scale from {span}.\n\n{rows}"
    )
    with writer.as_default(step=step):
        tf.summary.image(tag, heatmap_image(norms)[None], step=step, description=description)


def write_layout(
    writer: tf.summary.SummaryWriter,
    charts: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> None:
    """Write a TensorBoard custom-scalars layout (the "Custom Scalars" tab).

    Args:
        writer: Any writer of the run (the layout applies to the whole log directory).
        charts: ``{category: {chart title: [tag regexes]}}``; each chart draws every tag
            matching one of its regexes as one line. Default :data:`DEFAULT_CHARTS`.

    Example:
        >>> import tempfile
        >>> write_layout(tf.summary.create_file_writer(tempfile.mkdtemp()))
    """
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import summary as custom_scalar

    charts = DEFAULT_CHARTS if charts is None else charts
    layout = layout_pb2.Layout(
        category=[
            layout_pb2.Category(
                title=category,
                chart=[
                    layout_pb2.Chart(
                        title=title, multiline=layout_pb2.MultilineChartContent(tag=list(tags))
                    )
                    for title, tags in chart_map.items()
                ],
            )
            for category, chart_map in charts.items()
        ]
    )
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(custom_scalar.pb(layout).SerializeToString(), step=0)
