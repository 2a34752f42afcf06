"""Summary writers for one run: ``<logdir>/train``, ``<logdir>/validation``, ... created lazily.

TensorBoard shows each subdirectory of a run directory as its own run, so writing training and
validation values under the same tag (``loss``) in ``train/`` and ``validation/`` puts both curves
on one chart. ``RunWriters`` owns those writers: it proves the directory is writable before
training starts, creates each writer on first use, flushes and closes them all (also when the
training loop raises), and turns into a cheap no-op when logging is disabled.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import tensorflow as tf

__all__ = ["RunWriters", "resolve_logdir"]

_SPLIT = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _is_url(path: str) -> bool:
    return "://" in path


def resolve_logdir(logdir: str | os.PathLike | bool | None, name: str = "run") -> str | None:
    """What a ``logdir`` argument means, the same everywhere in tapekit.

    Args:
        logdir: A directory (``str`` or ``os.PathLike``, cloud paths included); ``None`` (or
            ``True``) for the default directory ``logs/<name>-<YYYYmmdd-HHMMSS>``; ``False`` to
            write nothing.
        name: The run name used in the default directory.

    Returns:
        The run directory as a string, or ``None`` when logging is off.

    Raises:
        TypeError: If ``logdir`` is none of these.

    Example:
        >>> resolve_logdir("logs/x"), resolve_logdir(False)
        ('logs/x', None)
        >>> resolve_logdir(None, "mlp").startswith(os.path.join("logs", "mlp-"))
        True
    """
    if logdir is False:
        return None
    if logdir is None or logdir is True:
        return os.path.join("logs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(
            f"`logdir` must be a directory path (str or os.PathLike), None for the default "
            f"directory logs/<name>-<time>, or False for no logging, but received "
            f"{type(logdir).__name__} {logdir!r}. Example: logdir='logs/run1'."
        )
    return os.fspath(logdir)


class RunWriters:
    """Lazily created ``tf.summary`` file writers for one run, one per split.

    Args:
        logdir: The run directory. Split ``"train"`` writes to ``<logdir>/train`` and so on.
            ``None`` means the default directory ``logs/<name>-<time>`` and ``False`` no logging
            (as for ``Trainer``; see :func:`resolve_logdir`). Cloud paths (``gs://...``) are
            passed to TensorFlow's file system layer.
        enabled: If False, every method is a cheap no-op and ``writer()`` returns a no-op
            writer (use it on non-chief workers of a distributed job).
        name: The run name in the default directory.

    Attributes:
        logdir: The run directory as a string (``None`` for ``logdir=False``).
        enabled: Whether anything is written; give it to the loggers you attach to these
            writers (``GradientLogger(run.writer("train"), enabled=run.enabled)``).

    Raises:
        TypeError: If ``logdir`` is not a path, None or False.

    Example:
        >>> import os, tempfile, tapekit
        >>> logdir = tempfile.mkdtemp()
        >>> with tapekit.board.RunWriters(logdir) as run:  # closed (and flushed) on exit
        ...     run.check_writable()
        ...     run.scalars("train", {"loss": 0.5, "accuracy": 0.75}, step=1)
        ...     run.scalars("validation", {"loss": 0.6}, step=1)
        >>> sorted(os.listdir(logdir))
        ['train', 'validation']
    """

    def __init__(
        self,
        logdir: str | os.PathLike | bool | None,
        *,
        enabled: bool = True,
        name: str = "run",
    ) -> None:
        try:
            self.logdir: str | None = resolve_logdir(logdir, name)
        except TypeError as exc:
            raise TypeError(f"RunWriters: {exc}") from None
        self.enabled: bool = bool(enabled) and self.logdir is not None
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._noop: tf.summary.SummaryWriter | None = None

    @property
    def splits(self) -> list[str]:
        """Names of the splits whose writers are open, in creation order."""
        return list(self._writers)

    def check_writable(self) -> None:
        """Create ``logdir`` if needed and prove now, before training, that files can be written.

        Raises:
            OSError: (the specific subclass: ``PermissionError``, ``NotADirectoryError``,
                ``FileExistsError``, ...) with a message naming the directory and how to fix it.
        """
        if not self.enabled:
            return
        path = self.logdir
        try:
            if _is_url(path):
                tf.io.gfile.makedirs(path)
                probe = f"{path.rstrip('/')}/.tapekit-write-test-{uuid.uuid4().hex}"
                with tf.io.gfile.GFile(probe, "w") as f:
                    f.write("ok")
                tf.io.gfile.remove(probe)
            else:
                os.makedirs(path, exist_ok=True)
                with tempfile.TemporaryFile(dir=path, prefix=".tapekit-write-test-"):
                    pass
        except (OSError, tf.errors.OpError) as exc:
            cls = type(exc) if isinstance(exc, OSError) else PermissionError
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise cls(
                f"TensorBoard log directory {path!r} is not writable ({reason}). Choose another "
                f"logdir (e.g. logdir='logs/my_run' in a directory you own), or turn logging off "
                f"with logdir=False."
            ) from exc

    def writer(self, split: str) -> tf.summary.SummaryWriter:
        """The writer of ``split`` (``<logdir>/<split>``), created on first use.

        Safe to call while a ``tf.function`` is being traced: the writer is created eagerly
        (outside the graph), so the compiled function captures it.

        Args:
            split: A run name such as ``"train"`` or ``"validation"`` (letters, digits, ``_.-``).

        Returns:
            A ``tf.summary.SummaryWriter`` (a no-op writer when disabled).

        Raises:
            ValueError: If ``split`` is empty or contains path separators or other characters.
        """
        if not isinstance(split, str) or not _SPLIT.match(split):
            raise ValueError(
                f"RunWriters split names are plain names like 'train' or 'validation' (letters, "
                f"digits, '_', '.', '-'), but received {split!r}. Use one subdirectory name."
            )
        if not self.enabled:
            if self._noop is None:
                self._noop = tf.summary.create_noop_writer()
            return self._noop
        w = self._writers.get(split)
        if w is None:
            with tf.init_scope():  # never create the writer inside a graph being traced
                w = tf.summary.create_file_writer(_join(self.logdir, split))
            self._writers[split] = w
        return w

    def scalars(self, split: str, values: Mapping[str, Any], step: int | tf.Tensor) -> None:
        """Write several scalars at one step; works eagerly and inside ``tf.function``.

        Args:
            split: Which writer (``"train"``, ``"validation"``, ...).
            values: ``{tag: value}``; values are numbers, NumPy scalars or scalar tensors.
            step: The step, an int or an integer tensor (e.g. ``optimizer.iterations``).

        Raises:
            TypeError: If ``values`` is not a mapping with string keys.
            ValueError: If a value is not a scalar (from ``tf.summary.scalar``, naming the tag).
        """
        if not self.enabled:
            return
        if not isinstance(values, Mapping):
            raise TypeError(
                f"RunWriters.scalars needs `values` as a mapping {{tag: number}}, but received "
                f"{type(values).__name__}. Example: run.scalars('train', {{'loss': 0.3}}, step)."
            )
        with self.writer(split).as_default(step=step):
            for tag, value in values.items():
                if not isinstance(tag, str):
                    raise TypeError(
                        f"RunWriters.scalars needs string tags, but received {tag!r} "
                        f"({type(tag).__name__}). Use names like 'loss' or 'accuracy'."
                    )
                try:
                    tf.summary.scalar(tag, value)
                except ValueError as exc:
                    raise ValueError(
                        f"RunWriters.scalars: tag {tag!r} needs a scalar value; {exc} Reduce "
                        f"it first (e.g. tf.reduce_mean) or log it with tf.summary.histogram."
                    ) from exc

    def flush(self) -> None:
        """Write everything logged so far to disk (cheap; call it at every epoch end)."""
        if not self.enabled:
            return
        with tf.init_scope():
            for w in self._writers.values():
                w.flush()

    def close(self) -> None:
        """Flush and close every writer. Idempotent.

        Using the object again afterwards opens new writers (new event files in the same run
        directories, which TensorBoard merges).
        """
        writers, self._writers = self._writers, {}
        with tf.init_scope():
            for w in writers.values():
                w.flush()
                w.close()

    def __enter__(self) -> RunWriters:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"RunWriters({self.logdir!r}, {state}, open splits={self.splits})"


def _join(logdir: str, split: str) -> str:
    return f"{logdir.rstrip('/')}/{split}" if _is_url(logdir) else os.path.join(logdir, split)
