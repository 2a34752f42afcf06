"""Pictures with axes, titles and colour bars in TensorBoard: log a Matplotlib figure as an image.

``tf.summary.image`` takes pixels; a plot needs axes, a title and a colour scale to be read.
:func:`log_figure` renders a Matplotlib figure (anything with ``savefig``) to PNG and writes it
to the Images dashboard. tapekit does not import Matplotlib itself: the figure you pass brings it
(``pip install 'tapekit[plots]'``; the quick start installs it).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import tensorflow as tf

__all__ = ["log_figure"]


def _png(figure: Any, dpi: int | None) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def log_figure(
    tag: str,
    figure: Any,
    step: int | tf.Tensor | None = None,
    *,
    writer: tf.summary.SummaryWriter | str | os.PathLike | None = None,
    description: str | None = None,
    dpi: int | None = 100,
    close: bool = True,
) -> bool:
    """Write a Matplotlib figure to TensorBoard's Images dashboard, axes and colour bars included.

    Runs eagerly (rendering is Python work); call it from your loop, not inside ``tf.function``.

    Args:
        tag: The image's tag, e.g. ``"solution"`` or ``"fields/gradient"``.
        figure: A ``matplotlib.figure.Figure`` (or any object with its ``savefig``).
        step: The step; ``None`` uses the writer's default step (``writer.as_default(step=...)``
            or ``tf.summary.experimental.set_step``).
        writer: The ``tf.summary`` writer, or a run directory (a writer is opened there, used and
            closed); ``None`` uses the default writer of the enclosing ``writer.as_default()``.
        description: Text shown under the image (Markdown).
        dpi: Resolution of the PNG; ``None`` keeps the figure's own.
        close: Close the figure afterwards (frees it when it was made with ``pyplot``).

    Returns:
        Whether the image was written (``False`` when there is no default writer, as for
        ``tf.summary.image``).

    Raises:
        TypeError: If ``figure`` has no ``savefig`` or ``writer`` is neither a writer nor a path.

    Example:
        >>> import os, tempfile, tapekit
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(3, 2))
        >>> ax = fig.subplots()
        >>> _ = ax.plot([0, 1, 2], [0, 1, 4]), ax.set_title("x²"), ax.set_xlabel("x")
        >>> run = tempfile.mkdtemp()
        >>> tapekit.board.log_figure("parabola", fig, step=0, writer=run)
        True
        >>> [f.startswith("events.out.tfevents.") for f in os.listdir(run)]
        [True]
    """
    if not callable(getattr(figure, "savefig", None)):
        raise TypeError(
            f"log_figure needs a Matplotlib figure (an object with .savefig), but received "
            f"{type(figure).__name__}. Make one with matplotlib.figure.Figure() or "
            f"plt.figure(); for raw pixels use tf.summary.image."
        )
    if writer is not None and not isinstance(writer, (str, os.PathLike, tf.summary.SummaryWriter)):
        raise TypeError(
            f"log_figure needs `writer` to be a tf.summary.SummaryWriter, a run directory or "
            f"None (the default writer), but received {type(writer).__name__}."
        )
    png = _png(figure, dpi)
    if close and "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(figure)
    with tf.init_scope():
        image = tf.image.decode_png(png, channels=4)[tf.newaxis]
        if isinstance(writer, (str, os.PathLike)):
            owned = tf.summary.create_file_writer(os.fspath(writer))
            try:
                with owned.as_default():
                    return bool(tf.summary.image(tag, image, step=step, description=description))
            finally:
                owned.close()
        if writer is not None:
            with writer.as_default():
                return bool(tf.summary.image(tag, image, step=step, description=description))
        return bool(tf.summary.image(tag, image, step=step, description=description))
