"""``CurvatureMonitor``: a Trainer callback logging curvature, gradient noise and update sizes.

At every multiple of ``every`` steps (step 0 included), on one fixed batch and with the model
in inference mode, it logs to ``<logdir>/train`` (on the chief only; other workers compute nothing):

* ``curvature/top_eigenvalue`` (the sharpness) and ``curvature/top_eigenvalue_2`` .. ``_k``;
* ``curvature/trace`` (and its standard error), ``curvature/density`` (the eigenvalue
  spectrum as a histogram: eigenvalues per bucket), when asked for;
* ``gradient_noise/b_simple`` (and its two parts), when asked for;
* ``update_ratio/<variable path>``: ``|Δw| / |w|`` of the optimizer step that ends at the
  measured step;
* ``gradient_flow/heatmap``: the per-layer gradient norms of all monitored steps as one image,
  and once a custom-scalars layout grouping the per-layer curves (see
  :mod:`tapekit.board.gradient_flow`).

It uses the Trainer's public surface only (``model``, ``trainable_variables``, ``strategy``,
``logdir``, ``global_step``, ``loss_fn``). Through ``next_step_end`` it asks the Trainer to end
a compiled call at the step before each measurement and at the measured step, and nowhere
else: training keeps running many steps per call, and the update ratio is exact for one step.
``benchmarks/curvature.py`` measures the cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from .. import curvature as _curvature
from ..noise_scale import gradient_noise_scale
from .callbacks import Callback
from .distribution import is_chief
from .model import tf_variable, variable_names

__all__ = ["CurvatureMonitor"]

_HISTORY_COLUMNS = 200  # columns of the gradient-flow heat map (the most recent ones)


def _trainer_loss_fn(trainer: Any) -> Callable:
    """The Trainer's ``loss_fn(model, batch)``."""
    loss_fn = trainer.loss_fn
    if loss_fn is None:
        raise ValueError(
            "CurvatureMonitor measures the Trainer's loss_fn, but this Trainer runs a custom step "
            "without one. Pass CurvatureMonitor(..., loss_fn=lambda model, batch: ...)."
        )
    return loss_fn


def _first_batch(data: Any) -> Any:
    if isinstance(data, tf.data.Dataset):
        return next(iter(data))
    return tf.nest.map_structure(tf.convert_to_tensor, data)


class CurvatureMonitor(Callback):
    """Log the sharpness, trace, spectrum, gradient noise scale and update ratios while training.

    Args:
        data: One batch, as ``loss_fn`` receives it (arrays or tensors, any nest), or a
            ``tf.data.Dataset`` whose first batch is used. The same batch at every
            measurement, so curves show the change of the model, not of the data.
        every: Measure at every multiple of this many steps (step 0 included: a ``fit`` that
            starts at step 0 measures before training).
        k: Top Hessian eigenvalues to log.
        trace: Also log the Hessian trace (``trace_samples`` Hessian-vector products).
        density: Also log the eigenvalue density (``density_steps`` products).
        noise_scale: Also log the gradient noise scale ``B_simple`` (two-batch estimator over
            ``noise_chunks`` parts of the batch).
        loss_fn: ``loss_fn(model, batch)`` to measure; default the Trainer's (called with
            ``training=False`` if it has a ``training`` parameter).
        batch_size: The training batch size, logged as ``gradient_noise/batch_size`` so that
            ``tapekit inspect`` can compare it with ``B_simple``.
        max_iters: Lanczos iterations per eigenvalue (warm-started from the previous step's
            eigenvectors, so a few usually suffice).
        tol: Relative accuracy of the eigenvalues (1% by default: enough for a curve, and
            about half the Hessian-vector products of 0.1%).
        trace_samples: Random vectors of the trace estimate.
        density_steps: Lanczos steps of the density estimate (one run).
        noise_chunks: Small batches the batch is split into for ``B_simple``.
        seed: Seeds the random vectors.

    Attributes:
        history: ``{tag: [(step, value), ...]}`` of every scalar logged (also without a logdir).

    Raises:
        ValueError: If ``every``, ``k`` or another count is not a positive int.

    Example:
        >>> import keras, numpy as np, tensorflow as tf, tapekit
        >>> w = tf.Variable([1.0, 1.0], name="w")
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
        >>> loss = lambda w, b: tf.reduce_mean((tf.linalg.matvec(b, w)) ** 2)  # H = diag(1, 4)
        >>> monitor = tapekit.CurvatureMonitor(x, every=5, k=2)
        >>> trainer = tapekit.Trainer(w, loss, optimizer=keras.optimizers.SGD(0.1),
        ...                           callbacks=[monitor], logdir=False)
        >>> _ = trainer.fit(x, batch_size=2, epochs=10, verbose=0)
        >>> [round(v, 3) for _, v in monitor.history["curvature/top_eigenvalue"]][:2]
        [4.0, 4.0]
        >>> sorted(monitor.history)[:3]
        ['curvature/top_eigenvalue', 'curvature/top_eigenvalue_2', 'update_ratio/w']
    """

    def __init__(
        self,
        data: Any,
        *,
        every: int = 100,
        k: int = 1,
        trace: bool = False,
        density: bool = False,
        noise_scale: bool = False,
        loss_fn: Callable | None = None,
        batch_size: int | None = None,
        max_iters: int = 20,
        tol: float = 1e-2,
        trace_samples: int = 16,
        density_steps: int = 32,
        noise_chunks: int = 4,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        for value, name in (
            (every, "every"),
            (k, "k"),
            (max_iters, "max_iters"),
            (trace_samples, "trace_samples"),
            (density_steps, "density_steps"),
            (noise_chunks, "noise_chunks"),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"CurvatureMonitor needs `{name}` to be an int >= 1, but received {value!r}."
                )
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"CurvatureMonitor needs `loss_fn` to be callable or None, got {loss_fn!r}."
            )
        self.data, self.every, self.k = data, every, k
        self.trace, self.density, self.noise_scale = trace, density, noise_scale
        self.loss_fn, self.batch_size = loss_fn, batch_size
        self.max_iters, self.tol, self.seed = max_iters, tol, seed
        self.trace_samples, self.density_steps, self.noise_chunks = (
            trace_samples,
            density_steps,
            noise_chunks,
        )
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._ready_for: Any = None
        self._last: int | None = None
        self._before: tuple[int, list[np.ndarray]] | None = None
        self._vectors: Any = None
        self._flow: list[np.ndarray] = []
        self._flow_steps: list[int] = []

    # -- set-up ------------------------------------------------------------------------------

    def _setup(self) -> None:
        trainer = self.trainer
        if self._ready_for is trainer:
            return
        self._ready_for = trainer
        self._chief = is_chief(trainer.strategy)
        loss_fn = self.loss_fn or _trainer_loss_fn(trainer)
        batch = _first_batch(self.data)
        self._variables = list(trainer.trainable_variables)
        self._names = variable_names(trainer.model, self._variables)
        fn = _curvature._inference_loss(trainer.model, loss_fn, batch)
        self._fn, self._primals = fn, (self._variables,)
        watched = [tf_variable(v) for v in self._variables]

        @tf.function(autograph=False)
        def update_ratios(before: list[tf.Tensor]) -> list[tf.Tensor]:
            return [
                tf.norm(v - w0) / tf.maximum(tf.norm(w0), np.finfo(np.float32).tiny)
                for v, w0 in zip(watched, before)
            ]

        self._update_ratio_fn = update_ratios
        self._snapshot = tf.function(lambda: [tf.identity(v) for v in watched], autograph=False)
        self._batch = batch
        if self.noise_scale:

            def per_example(b: Any) -> tf.Tensor:  # the batch mean, once per example of b
                size = tf.shape(tf.nest.flatten(b)[0])[:1]
                return tf.fill(size, tf.cast(fn(None, b), self._variables[0].dtype))

            self._noise = gradient_noise_scale(
                per_example, self._variables, method="two_batch", chunks=self.noise_chunks
            )
        self._writers = None
        if trainer.logdir is not None and self._chief:
            from ..board import RunWriters
            from ..board.gradient_flow import write_layout

            self._writers = RunWriters(trainer.logdir)
            write_layout(self._writers.writer("train"))

    # -- hooks -------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._setup()
        step = self.trainer.global_step
        if step % self.every == 0 and self._last != step:  # curves on one grid of steps
            self._measure(step)

    def on_step_end(self, step: int, logs: dict[str, float] | None = None) -> None:
        if not self._chief:
            return
        last = self._last if self._last is not None else step
        if step // self.every > last // self.every:
            self._update_ratios(step)
            self._measure(step)
        if (step + 1) % self.every == 0:  # a call ends here (next_step_end): the next measures
            self._before = (step, self._snapshot())

    def next_step_end(self, step: int) -> int | None:
        """The step before the next measurement (for the weights before it), then that step:
        the Trainer keeps running many steps per call in between."""
        due = (step // self.every + 1) * self.every
        return due - 1 if step < due - 1 else due

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self._writers is not None:
            self._writers.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self._writers is not None:
            self._writers.flush()

    # -- measuring ---------------------------------------------------------------------------

    def _record(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.history.setdefault(tag, []).append((step, float(value)))
        if self._writers is not None:
            self._writers.scalars("train", values, step)

    def _update_ratios(self, step: int) -> None:
        """``|w_step - w_before| / |w_before|`` per variable, over one step when possible."""
        if self._before is None or self._before[0] >= step:
            return
        before_step, before = self._before
        span = step - before_step  # 1: a call ends at the step before each measurement
        ratios = self._update_ratio_fn(before)
        values = {f"update_ratio/{name}": float(r) / span for name, r in zip(self._names, ratios)}
        self._record(step, values)
        self._before = None

    def _measure(self, step: int) -> None:
        self._last = step
        if not self._chief:
            return
        # (the Lanczos loop computes the gradient too: its norms are the gradient flow's)
        values, vectors, gradient_norms = _curvature.top_eigenpairs(
            self._fn,
            self._primals,
            self.k,
            "algebraic",
            self.max_iters,
            self.tol,
            self.seed,
            self._vectors,
        )
        self._vectors = vectors
        scalars = {
            "curvature/top_eigenvalue" + ("" if i == 0 else f"_{i + 1}"): float(v)
            for i, v in enumerate(values.numpy())
        }
        if self.trace:
            est, err = _curvature.trace(
                self._fn, self._primals, samples=self.trace_samples, seed=self.seed
            )
            scalars["curvature/trace"] = float(est)
            scalars["curvature/trace_standard_error"] = float(err)
        if self.noise_scale:
            noise = self._noise(self._batch)
            scalars.update({f"gradient_noise/{k}": float(v) for k, v in noise.items()})
            if self.batch_size is not None:
                scalars["gradient_noise/batch_size"] = float(self.batch_size)
        self._record(step, scalars)
        if self.density:
            self._write_density(step)
        self._write_flow(step, gradient_norms)

    def _write_density(self, step: int) -> None:
        grid, dens = _curvature.density(
            self._fn, self._primals, steps=self.density_steps, runs=1, seed=self.seed
        )
        g, d = grid.numpy().astype(np.float64), dens.numpy().astype(np.float64)
        n_params = sum(int(np.prod(v.shape)) for v in self._variables)
        edges = np.linspace(g[0], g[-1], 65)
        cdf = np.concatenate([[0.0], np.cumsum((d[1:] + d[:-1]) / 2 * np.diff(g))])
        counts = np.diff(np.interp(edges, g, cdf)) * n_params  # eigenvalues per bucket
        buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
        if self._writers is None:
            return
        from tensorboard.plugins.histogram import metadata

        meta = metadata.create_summary_metadata(
            display_name="curvature/density",
            description="Hessian eigenvalue density (stochastic Lanczos quadrature): "
            f"eigenvalues per bucket, {n_params} in all.",
        )
        with self._writers.writer("train").as_default():
            tf.summary.write("curvature/density", tf.constant(buckets), step=step, metadata=meta)

    def _write_flow(self, step: int, gradient_norms: np.ndarray) -> None:
        self._flow.append(np.asarray(gradient_norms, np.float64))
        self._flow_steps.append(step)
        del self._flow[:-_HISTORY_COLUMNS], self._flow_steps[:-_HISTORY_COLUMNS]
        if self._writers is None:
            return
        from ..board.gradient_flow import write_heatmap

        write_heatmap(
            "gradient_flow/heatmap",
            np.stack(self._flow, axis=1),
            self._names,
            self._flow_steps,
            step,
            writer=self._writers.writer("train"),
        )
