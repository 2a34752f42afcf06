"""Gradient and weight histograms and gradient norms from a training step, with one call.

Keras' TensorBoard callback logs weight histograms but no gradients, and its tags collide when
two layers share a variable name. ``GradientLogger`` logs, per variable, a tag built from the
variable's unique path (``dense_1/kernel``), and does the work only on logging steps: inside a
``tf.function`` the summaries sit in a ``tf.cond`` branch, so other steps skip the norms and the
histogram bucketing entirely.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata

from .. import _tensors

__all__ = ["GradientLogger", "variable_tags"]

_SUFFIX = re.compile(r":\d+$")


def _variable_name(v: Any, i: int) -> str:
    path = getattr(v, "path", None)  # Keras 3: unique 'model/dense_1/kernel'
    if not isinstance(path, str) or not path:
        path = getattr(v, "name", None)
    if not isinstance(path, str) or not path:
        return f"variable_{i}"
    return _SUFFIX.sub("", path)


def variable_tags(variables: Sequence[Any]) -> list[str]:
    """Unique, readable TensorBoard tags for a list of variables.

    The tag is the Keras 3 ``variable.path`` (e.g. ``'sequential/dense_1/kernel'``), else the
    ``tf.Variable`` name without its ``':0'``. If two variables still share a name, the later
    ones get a suffix ``_1``, ``_2``, ... so no two variables ever share a tag.

    Args:
        variables: Keras or ``tf.Variable`` objects.

    Returns:
        A list of strings, one per variable, in the same order, all distinct.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> vs = [tf.Variable(1.0, name="w"), tf.Variable(2.0, name="w"), tf.Variable(0.0)]
        >>> tapekit.board.variable_tags(vs)
        ['w', 'w_1', 'Variable']
    """
    names = [_variable_name(v, i) for i, v in enumerate(variables)]
    taken = set(names)
    seen: set[str] = set()
    tags = []
    for name in names:
        tag = name
        if tag in seen:
            k = 1
            while f"{name}_{k}" in taken or f"{name}_{k}" in seen:
                k += 1
            tag = f"{name}_{k}"
        seen.add(tag)
        tags.append(tag)
    return tags


def _check_every(value: Any, name: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"GradientLogger needs `{name}` to be an int >= 0 (0 or None turns it off), but "
            f"received {value!r}. Example: {name}=100."
        )
    return value


def _due(step: Any, every: int) -> bool | tf.Tensor:
    """Whether ``step`` is a logging step: a Python bool when it can be known now, else a tensor."""
    if every == 0:
        return False
    if every == 1:  # every step: no tf.cond in the graph at all
        return True
    if isinstance(step, int):
        return step % every == 0
    is_due = tf.equal(tf.math.floormod(step, tf.constant(every, step.dtype)), 0)
    return bool(is_due) if tf.executing_eagerly() else is_due


def _when(pred: bool | tf.Tensor, body: Callable[[], None]) -> None:
    """Run ``body`` when ``pred`` holds; in a graph inside a ``tf.cond``, so off-steps cost ~0."""
    if isinstance(pred, bool):
        if pred:
            with tf.name_scope(""):
                body()
        return

    def on() -> tf.Tensor:
        with tf.name_scope(""):  # summary tags carry name scopes; keep ours exact (no 'cond/')
            body()
        return tf.constant(True)

    tf.cond(pred, on, lambda: tf.constant(False))


def _norm(g: Any) -> tf.Tensor:
    g = _tensors.dense(g)
    if g.dtype in (tf.float16, tf.bfloat16):
        g = tf.cast(g, tf.float32)
    return tf.cast(tf.norm(tf.reshape(g, [-1])), tf.float32)


def _read(v: Any) -> tf.Tensor:
    return tf.convert_to_tensor(_tensors.tf_value(v))


def histogram(name: str, data: Any, step: Any = None, buckets: int = 30) -> Any:
    """``tf.summary.histogram`` in the same format, bucketed with ``tf.histogram_fixed_width``.

    TensorBoard's own op buckets with a float64 one-hot of shape [size, buckets], which costs
    ~14 ms for one 784x256 kernel on a CPU; this costs ~1 ms. The written tensor is the same
    [buckets, 3] float64 (left edge, right edge, count) with the histogram plugin's metadata, so
    the Histograms and Distributions dashboards read it as theirs.
    """
    scope = tf.summary.experimental.summary_scope(name, "histogram_summary", values=[data])
    with scope as (tag, _):
        data = tf.reshape(tf.cast(tf.stop_gradient(data), tf.float32), [-1])
        lo, hi = tf.reduce_min(data), tf.reduce_max(data)
        single = tf.equal(lo, hi)  # TensorBoard's convention: all counts in the last bucket
        span = tf.where(single, tf.ones_like(hi), hi - lo)
        counts = tf.histogram_fixed_width(data, tf.stack([lo, lo + span]), nbins=buckets)
        size = tf.size(data)
        last = tf.one_hot(buckets - 1, buckets, on_value=size, off_value=0, dtype=size.dtype)
        counts = tf.where(single, last, tf.cast(counts, size.dtype))
        lo64, hi64 = tf.cast(lo, tf.float64), tf.cast(hi, tf.float64)
        edges = tf.concat([tf.linspace(lo64, hi64, buckets + 1)[:-1], [hi64]], 0)
        same = tf.fill([buckets], hi64)
        table = tf.stack(
            [
                tf.where(single, same, edges[:-1]),
                tf.where(single, same, edges[1:]),
                tf.cast(counts, tf.float64),
            ],
            axis=1,
        )
        return tf.summary.write(tag, table, step=step, metadata=_HISTOGRAM_METADATA)


_HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(
    display_name=None, description=None
)


class GradientLogger:
    """Log gradient/weight histograms and gradient norms from a training step with one call.

    Each call writes, to ``writer``, at the given step:

    * every ``norms_every`` steps: scalars ``gradient_norm/global`` (the global L2 norm over all
      gradients) and ``gradient_norm/<tag>`` for each variable;
    * every ``histogram_every`` steps: histograms ``gradients/<tag>`` and ``weights/<tag>``.

    Tags come from :func:`variable_tags` (unique per variable) and are exact: enclosing name
    scopes are not prepended. Variables whose gradient is ``None`` get no gradient summaries
    (they keep their weight histogram). Works eagerly and inside ``tf.function``. Inside a
    compiled step, a summary kind due every step is written with no condition at all; otherwise
    the norms and the histogram bucketing sit in a ``tf.cond`` branch, so steps that log nothing
    skip that work. With ``enabled=False`` (the writer's ``RunWriters`` is disabled, e.g. on a
    non-chief worker) the call only checks its arguments.

    Args:
        writer: A ``tf.summary.SummaryWriter``, or a directory for a new file writer (owned by
            the logger; close it with :meth:`close`).
        histogram_every: Steps between histograms; 0 or None turns histograms off.
        norms_every: Steps between gradient-norm scalars; 0 or None turns them off.
        enabled: Whether to log at all; pass ``RunWriters.enabled`` when ``writer`` comes from
            :class:`RunWriters` (False for a disabled run: every call is then a no-op).

    Raises:
        TypeError: If ``writer`` is neither a summary writer nor a path.
        ValueError: If an ``*_every`` argument is negative or not an int.

    Example:
        >>> import tempfile, tensorflow as tf, tapekit
        >>> from tapekit.board.reader import summarize
        >>> w = tf.Variable([3.0, 4.0], name="w")
        >>> logdir = tempfile.mkdtemp()
        >>> log = tapekit.board.GradientLogger(logdir, histogram_every=10)
        >>> with tf.GradientTape() as tape:
        ...     loss = tf.reduce_sum(w**2) / 2  # gradient = w, norm 5
        >>> log(0, tape.gradient(loss, [w]), [w])  # writes norms and histograms at step 0
        >>> log.close()
        >>> [run] = summarize(logdir)
        >>> {tag: s.last for tag, s in run.gradient_norms.items()}, run.other
        ({'global': 5.0, 'w': 5.0}, {'histograms': 2})
    """

    def __init__(
        self,
        writer: tf.summary.SummaryWriter | str | os.PathLike,
        *,
        histogram_every: int = 100,
        norms_every: int = 1,
        enabled: bool = True,
    ) -> None:
        self.enabled = bool(enabled)
        self._owns_writer = False
        if isinstance(writer, (str, os.PathLike)):
            with tf.init_scope():
                writer = tf.summary.create_file_writer(os.fspath(writer))
            self._owns_writer = True
        elif not isinstance(writer, tf.summary.SummaryWriter):
            raise TypeError(
                f"GradientLogger needs `writer` to be a tf.summary.SummaryWriter or a log "
                f"directory, but received {type(writer).__name__}. Pass e.g. "
                f"tf.summary.create_file_writer('logs/run/train') or 'logs/run/train'."
            )
        self.writer: tf.summary.SummaryWriter = writer
        self.histogram_every = _check_every(histogram_every, "histogram_every")
        self.norms_every = _check_every(norms_every, "norms_every")
        self._cache: tuple[tuple[Any, ...], list[str]] = ((), [])
        self._fns: tuple[Callable, Callable] | None = None

    def tags(self, variables: Sequence[Any]) -> list[str]:
        """The tags used for ``variables`` (cached per variable list)."""
        variables = tuple(variables)
        cached, tags = self._cache
        if len(cached) != len(variables) or any(a is not b for a, b in zip(cached, variables)):
            tags = variable_tags(variables)
            self._cache = (variables, tags)
        return tags

    def __call__(
        self,
        step: int | tf.Tensor,
        grads: Sequence[tf.Tensor | tf.IndexedSlices | None],
        variables: Sequence[Any],
    ) -> None:
        """Write the summaries that are due at ``step``.

        Args:
            step: The global step: an int, an integer tensor or variable
                (e.g. ``optimizer.iterations``).
            grads: One gradient (or ``None``) per variable, as ``tape.gradient`` returns them.
            variables: The variables, same order as ``grads``.

        Raises:
            ValueError: If ``grads`` and ``variables`` have different lengths.
        """
        grads, variables = list(grads), list(variables)
        if len(grads) != len(variables):
            raise ValueError(
                f"GradientLogger needs one gradient per variable, but received {len(grads)} "
                f"gradient(s) for {len(variables)} variable(s). Pass the same list you gave "
                f"tape.gradient(loss, variables)."
            )
        if not self.enabled:  # a disabled run (e.g. a non-chief worker): nothing to compute
            return
        tags = self.tags(variables)
        if not isinstance(step, int) or isinstance(step, bool):
            step = tf.cast(step, tf.int64)
        pairs = [(t, g) for t, g in zip(tags, grads) if g is not None]
        norms_due = _due(step, self.norms_every)
        hist_due = _due(step, self.histogram_every)
        norms, histograms = self._norms, self._histograms
        if isinstance(norms_due, tf.Tensor) or isinstance(hist_due, tf.Tensor):
            compiled = self._compiled()  # in a graph, behind a tf.cond: call, don't inline
            norms = compiled[0] if isinstance(norms_due, tf.Tensor) else norms
            histograms = compiled[1] if isinstance(hist_due, tf.Tensor) else histograms
        _when(norms_due, lambda: norms(step, pairs))
        _when(
            hist_due,
            lambda: histograms(step, pairs, [(t, _read(v)) for t, v in zip(tags, variables)]),
        )

    def _compiled(self) -> tuple[Callable, Callable]:
        """The summary bodies as separate functions that are called, never inlined.

        Inside a compiled step a ``tf.cond`` is lowered to Switch/Merge, and every op of the
        branch not taken still costs a little (dead-tensor propagation); histogram bucketing is
        hundreds of ops. Behind one call op that is not inlined, a skipped branch costs ~one op
        (measured in benchmarks/gradient_logger.py).
        """
        if self._fns is None:
            opts = {"autograph": False, "experimental_attributes": {"_noinline": True}}
            self._fns = (tf.function(self._norms, **opts), tf.function(self._histograms, **opts))
        return self._fns

    def _norms(self, step: Any, pairs: list[tuple[str, Any]]) -> None:
        with tf.name_scope(""), self.writer.as_default(step=step):
            norms = []
            for tag, g in pairs:
                n = _norm(g)
                norms.append(n)
                tf.summary.scalar(f"gradient_norm/{tag}", n)
            total = tf.sqrt(tf.add_n([tf.square(n) for n in norms])) if norms else tf.constant(0.0)
            tf.summary.scalar("gradient_norm/global", total)

    def _histograms(
        self, step: Any, pairs: list[tuple[str, Any]], weights: list[tuple[str, Any]]
    ) -> None:
        with tf.name_scope(""), self.writer.as_default(step=step):
            for tag, g in pairs:
                histogram(f"gradients/{tag}", _tensors.dense(g))
            for tag, w in weights:
                histogram(f"weights/{tag}", w)

    def flush(self) -> None:
        """Flush the writer."""
        with tf.init_scope():
            self.writer.flush()

    def close(self) -> None:
        """Flush, and close the writer if the logger created it (idempotent)."""
        with tf.init_scope():
            self.writer.flush()
            if self._owns_writer:
                self.writer.close()
                self._owns_writer = False
