"""TensorBoard logging of a Trainer run, through ``tapekit.board`` (the interface in BOARD_API).

What is written, under ``<logdir>/train`` and ``<logdir>/validation``:

* train, every ``log_every`` steps, from inside the compiled step: ``loss`` and the extras of
  ``loss_fn`` (or the scalars a custom step returns); ``gradient_norm/global`` and
  ``gradient_norm/<variable>`` (:class:`tapekit.board.GradientLogger`, over the gradients each
  optimizer applied last in the step); with several optimizers also
  ``optimizer/<name>/gradient_norm``; under float16 loss scaling ``optimizer/loss_scale``
  (``optimizer/<name>/loss_scale`` with several); every ``histogram_every`` steps the
  histograms ``gradients/<variable>`` and ``weights/<variable>``.
* train, at each epoch end: ``epoch_loss`` (the epoch average), every metric,
  ``learning_rate``, ``steps_per_second``.
* validation, at each epoch end: ``loss``, extras and every metric (so the validation loss is
  drawn on the same chart as the training loss).
* the graph of the compiled train step (forward, backward and update), once.

Writers are created lazily, flushed at every epoch end and at the end of ``fit``, and closed by
``Trainer.close()``, when ``fit`` raises, or when the Trainer is garbage-collected. Only the
chief writes: other workers of a multi-worker cluster get disabled writers and create no
directory at all, but still run the logging steps' gradient all-reduce (a collective every
worker must join).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from .distribution import is_chief

__all__ = ["BoardHook", "choose_logdir"]


def choose_logdir(logdir: str | os.PathLike | bool | None, name: str) -> str | None:
    """The run directory: ``None`` (logging off) for ``False``; ``logs/<name>-<time>`` for
    ``None``/``True``; else the path given (see :func:`tapekit.board.resolve_logdir`).

    Example:
        >>> choose_logdir(False, "mlp") is None, choose_logdir("logs/x", "mlp")
        (True, 'logs/x')
    """
    from ..board import resolve_logdir  # the one meaning of logdir in tapekit

    return resolve_logdir(logdir, name)


class BoardHook:
    """The Trainer's logging hook (``CompiledSteps.hook``).

    Args:
        logdir: The run directory.
        strategy: The distribution strategy (only the chief writes; other workers write
            nothing and create no directory).
        log_every: Steps between per-step scalars and gradient norms.
        histogram_every: Steps between histograms (0 turns them off).
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        *,
        strategy: tf.distribute.Strategy,
        log_every: int,
        histogram_every: int,
    ) -> None:
        from ..board import GradientLogger, RunWriters

        self.logdir = os.fspath(logdir)
        self.writers = RunWriters(self.logdir, enabled=is_chief(strategy))
        self.log_every = int(log_every)
        self._gradient_logger_cls = GradientLogger
        self.histogram_every = int(histogram_every)
        self._gradients: Any = None
        self.graph_written = not self.writers.enabled  # nothing to write on other workers
        self.closed = False
        self._finalizer = weakref.finalize(self, self.writers.close)

    def check_writable(self) -> None:
        """Fail now, before training, if the log directory cannot be written."""
        self.writers.check_writable()

    def train_step(
        self, step: tf.Variable, values: Mapping[str, tf.Tensor], updates: Mapping[str, Any]
    ) -> tf.Tensor:
        """Called inside the compiled step (graph mode), in cross-replica context.

        Args:
            step: The step counter.
            values: The step's global means (``loss`` and the extras, or the step's scalars).
            updates: The optimizer updates applied in this step, by name; each gives its
                newest applied gradient through ``logged_gradients()`` (called only on steps
                that log gradients: under a strategy it all-reduces them).

        Returns:
            A boolean tensor (whether anything was due), to wait on.
        """
        writer = self.writers.writer("train")
        if self._gradients is None:
            self._gradients = self._gradient_logger_cls(
                writer,
                histogram_every=self.histogram_every,
                norms_every=self.log_every,
                enabled=self.writers.enabled,
            )
        step = tf.cast(step, tf.int64)
        log_due = tf.equal(tf.math.floormod(step, self.log_every), 0)
        due = log_due
        if self.histogram_every:
            hist_due = tf.equal(tf.math.floormod(step, self.histogram_every), 0)
            due = tf.logical_or(due, hist_due)
        several = len(updates) > 1

        def write() -> tf.Tensor:  # one cond per step: other steps cost (almost) nothing
            grads, variables = [], []
            with writer.as_default(step=step), tf.name_scope(""):  # tags without "while/cond/"
                with tf.summary.record_if(log_due):
                    for tag, value in values.items():
                        tf.summary.scalar(tag, value)
                    for name, update in updates.items():
                        g, v = update.logged_gradients()
                        grads += g
                        variables += v
                        prefix = f"optimizer/{name}/" if several else "optimizer/"
                        if several:
                            tf.summary.scalar(f"{prefix}gradient_norm", tf.linalg.global_norm(g))
                        if update.loss_scaled:
                            scale = update.optimizer.dynamic_scale
                            tf.summary.scalar(f"{prefix}loss_scale", tf.cast(scale, tf.float32))
            self._gradients(step, grads, variables)
            return tf.constant(True)

        with tf.name_scope(""):
            return tf.cond(due, write, lambda: tf.constant(False))

    def epoch_end(
        self,
        step: int,
        train: Mapping[str, float],
        validation: Mapping[str, float] | None,
        extra: Mapping[str, float],
    ) -> None:
        """Write the epoch's values eagerly and flush."""
        values = {("epoch_loss" if k == "loss" else k): v for k, v in train.items()}
        self.writers.scalars("train", {**values, **extra}, step)
        if validation:
            self.writers.scalars("validation", dict(validation), step)
        self.writers.flush()

    def write_graph(self, concrete_fn: Any) -> None:
        """Write the train step's graph once."""
        if self.graph_written or not self.writers.enabled:
            return
        from ..board import write_concrete_graph

        write_concrete_graph(concrete_fn, self.writers.writer("train"), "train_step")
        self.graph_written = True

    def flush(self) -> None:
        """Flush every writer."""
        self.writers.flush()

    def close(self) -> None:
        """Flush and close every writer (idempotent); the hook is then unusable."""
        self.writers.close()
        self.closed = True
