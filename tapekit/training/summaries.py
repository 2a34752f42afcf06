"""TensorBoard logging of a Trainer run, through ``tapekit.board`` (the interface in BOARD_API).

TensorBoard groups charts by the tag's prefix before the first ``/``, sorts the groups by name
and opens the first two, and draws every run's values of one tag in one chart. So the tags
read top-down: ``epoch`` first (``epoch/loss``, ``epoch/<metric>``: train and validation
overlaid), then ``gradient_norm``, ``optimizer`` and ``step`` (``step/loss``, ``step/<name>``,
the noisier per-step curves). Under ``<logdir>/train``:

* every ``log_every`` steps, from inside the compiled step: ``step/loss`` and ``step/<name>``
  for the extras of ``loss_fn`` (or the scalars a custom step returns); ``gradient_norm/global``
  and ``gradient_norm/<variable>`` (:class:`tapekit.board.GradientLogger`, over the gradients
  each optimizer applied last in the step); with several optimizers also
  ``optimizer/<name>/gradient_norm``; under float16 loss scaling ``optimizer/loss_scale``
  (``optimizer/<name>/loss_scale`` with several); every ``histogram_every`` steps the
  histograms ``gradients/<variable>`` and ``weights/<variable>``;
* at each epoch end: ``epoch/loss`` (the epoch average) and ``epoch/<name>`` for every extra
  and metric; ``optimizer/learning_rate`` (``optimizer/<name>/learning_rate`` with several
  optimizers), ``optimizer/steps_per_second`` and, once a step was skipped,
  ``optimizer/skipped_steps`` (the count so far);
* the graph of the compiled train step (forward, backward and update), once.

Under ``<logdir>/validation``, at each epoch end: ``epoch/<name>`` for the loss, extras and
metrics, and ``step/<name>`` for the loss and extras (the values train logs per step), so the
per-step chart shows validation as one point per epoch end. Epoch values are written at the
global step the epoch ended on, so per-step and per-epoch charts share their x axis. History
keys, callbacks' ``logs`` and the console line keep their plain names (``loss``, ``val_loss``,
``learning_rate``, ``steps_per_second``).

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

_SKIPPED = "skipped_steps"  # a count the loop adds to the epoch's logs, not a mean


def _optimizer_tag(what: str, name: str, several: bool) -> str:
    """``optimizer/<what>``, or ``optimizer/<name>/<what>`` when there are several."""
    return f"optimizer/{name}/{what}" if several else f"optimizer/{what}"


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
        self._step_names: frozenset[str] = frozenset({"loss"})  # names logged per step
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
        self._step_names = frozenset(values)  # at trace time: the keys are static

        def write() -> tf.Tensor:  # one cond per step: other steps cost (almost) nothing
            grads, variables = [], []
            with writer.as_default(step=step), tf.name_scope(""):  # tags without "while/cond/"
                with tf.summary.record_if(log_due):
                    for name, value in values.items():
                        tf.summary.scalar(f"step/{name}", value)
                    for name, update in updates.items():
                        g, v = update.logged_gradients()
                        grads += g
                        variables += v
                        if several:
                            tag = _optimizer_tag("gradient_norm", name, several)
                            tf.summary.scalar(tag, tf.linalg.global_norm(g))
                        if update.loss_scaled:
                            scale = tf.cast(update.optimizer.dynamic_scale, tf.float32)
                            tf.summary.scalar(_optimizer_tag("loss_scale", name, several), scale)
            self._gradients(step, grads, variables)
            return tf.constant(True)

        with tf.name_scope(""):
            return tf.cond(due, write, lambda: tf.constant(False))

    def epoch_end(
        self,
        step: int,
        train: Mapping[str, float],
        validation: Mapping[str, float] | None,
        *,
        learning_rates: Mapping[str, float],
        steps_per_second: float,
    ) -> None:
        """Write the epoch's values eagerly (tags in the module doc) and flush.

        Args:
            step: The global step the epoch ended on (the x of every value written here).
            train: The epoch's training means and metrics by plain name (``loss``, ...), and
                ``skipped_steps`` once a step was skipped.
            validation: The validation values by plain name, or ``None``.
            learning_rates: Each optimizer's learning rate, by optimizer name.
            steps_per_second: The epoch's training speed.
        """
        train = dict(train)
        skipped = train.pop(_SKIPPED, None)
        several = len(learning_rates) > 1
        values = {f"epoch/{name}": v for name, v in train.items()}
        for name, rate in learning_rates.items():
            values[_optimizer_tag("learning_rate", name, several)] = rate
        values["optimizer/steps_per_second"] = steps_per_second
        if skipped is not None:
            values[f"optimizer/{_SKIPPED}"] = skipped
        self.writers.scalars("train", values, step)
        if validation:
            per_step = {f"step/{n}": v for n, v in validation.items() if n in self._step_names}
            epoch = {f"epoch/{name}": v for name, v in validation.items()}
            self.writers.scalars("validation", {**epoch, **per_step}, step)
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
