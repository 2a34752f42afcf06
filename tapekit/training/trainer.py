"""``Trainer``: a custom training loop with the features of ``keras.Model.fit``, compiled whole.

Parts are built in ``parts``; the outer loop is ``loop``; the compiled step ``step``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import data as _data
from .callbacks import CallbackList, History, ProgressPrinter
from .checkpoints import Checkpoints
from .distribution import is_chief
from .loop import FitLoop
from .model import all_variables
from .parts import (
    ASSEMBLY_ARGS,
    OPTION_ARGS,
    assemble,
    check_options,
    checkpoint_objects,
    run_guarded,
)
from .summaries import BoardHook, choose_logdir

__all__ = ["Trainer"]


class Trainer:
    """A compiled, strategy-aware training loop for Keras models, ``tf.Module``s and variables.

    Two forms, one machinery: ``Trainer(model, loss_fn, optimizer=...)`` trains ``loss_fn``'s
    mean loss (the default step); ``Trainer(models={...}, step=my_step, optimizers={...})``
    runs a step you write (GANs, meta-learning, PINNs), which records its own tapes and hands
    each gradient to a named optimizer (see :class:`tapekit.training.context.StepContext`).

    Args:
        model: A ``keras.Model``, ``tf.Module``, ``tf.Variable`` or a dict/list/tuple of them,
            or a zero-argument factory of one (called in the strategy scope and dtype policy).
        loss_fn: ``loss_fn(model, batch) -> loss`` (a float scalar, the mean over the batch) or
            ``-> (loss, {name: scalar})``; see :mod:`tapekit.training.calls` for the reserved
            ``y_true``/``y_pred`` keys and the optional ``training`` argument. With ``step``
            it is optional and used by ``evaluate`` and ``validation_data`` only.
        models: Named models (or factories) instead of ``model``, e.g.
            ``{"generator": make_g, "critic": make_c}``; each optimizer trains the model of
            its name. ``trainer.model`` is then the dict.
        step: ``step(ctx, batch) -> {name: scalar}``, a user-written training step (``batch``
            is None for ``fit(None, steps_per_epoch=N)``); needs ``accumulate_steps=1`` and
            ``jit_compile=False``.
        optimizer: A Keras optimizer or its name ("adam", ...); with several models, a name
            gives each model its own.
        optimizers: ``{model name: optimizer}`` for a step with several optimizers.
        metrics: Keras metrics or their names, fed ``(y_true, y_pred)`` (see ``metrics_fn``).
        metrics_fn: ``metrics_fn(model, batch) -> (y_true, y_pred)`` for the metrics.
        model_losses: Add Keras models' ``losses`` (regularizers, ``add_loss``) to
            ``loss_fn``'s loss, as ``fit`` does (False: the loss as returned).
        clip_norm: Clip each optimizer's aggregated gradient to this global norm.
        clip_value: Clip each aggregated gradient element to ``[-clip_value, clip_value]``.
        accumulate_steps: Micro-batches summed per optimizer step (= k-times larger batches).
        mixed_precision: None, "mixed_float16" (with dynamic loss scaling) or "mixed_bfloat16".
        jit_compile: XLA-compile the forward and backward pass (default step only).
        steps_per_execution: Optimizer steps per compiled call; None: up to 64, stopping at
            epoch ends, checkpoints and ``on_step_end`` callbacks (results are the same).
        checkpoint_dir: Directory for checkpoints; a new Trainer pointed at it resumes.
        keep_checkpoints: How many checkpoints to keep.
        checkpoint_every: Also save every this many steps (default: at epoch ends only).
        callbacks: Objects following the :class:`tapekit.Callback` protocol.
        seed: Seeds the data shuffle, ``trainer.rng`` and (before a factory runs) the global
            Keras/TF/NumPy seeds. Two runs with a seed are bitwise equal on CPU.
        strategy: A ``tf.distribute.Strategy`` (default: the current one); batches are GLOBAL
            batches split over the replicas (see :mod:`tapekit.training.distribution`).
        logdir: TensorBoard run directory; None: ``logs/<name>-<time>``; False: no logging.
        log_every: Steps between per-step scalars (loss, gradient norms).
        histogram_every: Steps between gradient and weight histograms (0: none).
        on_nonfinite: "raise" (:class:`tapekit.NonFiniteError`) or "skip" such steps.
        allow_unused: Allow trainable variables that get no gradient (else an error names them).
        name: Run name, used for the default logdir.

    Raises:
        TypeError, ValueError: For arguments of the wrong kind or out of range (with the fix).

    Example:
        >>> import keras, numpy as np, tensorflow as tf, tapekit
        >>> w = tf.Variable(0.0)
        >>> x = np.linspace(-1, 1, 32).astype("float32")
        >>> trainer = tapekit.Trainer(
        ...     w, lambda w, b: tf.reduce_mean((w * b[0] - b[1]) ** 2),
        ...     optimizer=keras.optimizers.SGD(0.5), logdir=False, seed=0)
        >>> _ = trainer.fit((x, 3 * x), epochs=20, batch_size=8, verbose=0)
        >>> round(float(w.numpy()), 2)
        3.0
    """

    def __init__(
        self,
        model: Any = None,
        loss_fn: Callable | None = None,
        *,
        models: dict[str, Any] | None = None,
        step: Callable | None = None,
        optimizer: Any = "adam",
        optimizers: dict[str, Any] | None = None,
        metrics: Sequence[Any] = (),
        metrics_fn: Callable | None = None,
        model_losses: bool = True,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        accumulate_steps: int = 1,
        mixed_precision: str | None = None,
        jit_compile: bool = False,
        steps_per_execution: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        keep_checkpoints: int = 3,
        checkpoint_every: int | None = None,
        callbacks: Sequence[Any] = (),
        seed: int | None = None,
        strategy: tf.distribute.Strategy | None = None,
        logdir: str | os.PathLike | None | bool = None,
        log_every: int = 10,
        histogram_every: int = 100,
        on_nonfinite: str = "raise",
        allow_unused: bool = False,
        name: str | None = None,
    ) -> None:
        self.strategy = strategy = strategy or tf.distribute.get_strategy()
        given = locals()
        check_options(**{k: given[k] for k in OPTION_ARGS})
        parts = assemble(**{k: given[k] for k in ASSEMBLY_ARGS})
        self.models, self.model, self.optimizers = parts.models, parts.model, parts.optimizers
        self.trainable_variables = parts.trainable_variables
        self._call, self._state, self._steps = parts.call, parts.state, parts.steps
        default_name = getattr(self.model, "name", None) if models is None else None
        self.name = name or default_name or "run"
        self._loop = FitLoop(
            self._steps,
            self._state,
            strategy=strategy,
            accumulate=accumulate_steps,
            steps_per_execution=steps_per_execution,
        )
        self.steps_per_execution, self.accumulate_steps = steps_per_execution, accumulate_steps
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self._keep, self._ckpt_every = keep_checkpoints, checkpoint_every
        self._checkpoints: Checkpoints | None = None
        self.callbacks = list(callbacks)
        self.logdir = choose_logdir(logdir, self.name)
        self._log_every, self._histogram_every = log_every, histogram_every
        self._hook: Any = None
        self._ready = False
        self.restored_from: str | None = None
        self.stop_training = False

    # -- public state ------------------------------------------------------------------------

    @property
    def optimizer(self) -> keras.optimizers.Optimizer:
        """The optimizer (with several, an error: use ``trainer.optimizers[name]``)."""
        if len(self.optimizers) != 1:
            raise AttributeError(
                f"This Trainer has several optimizers ({', '.join(self.optimizers)}); use "
                "trainer.optimizers[name]."
            )
        return next(iter(self.optimizers.values()))

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far (restored from a checkpoint on resume)."""
        return int(self._state.step.numpy())

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return int(self._state.epoch.numpy())

    @property
    def remaining_steps(self) -> int | None:
        """Steps left in the running ``fit`` (None before the first ``fit``)."""
        return self._loop.remaining_steps

    @property
    def rng(self) -> tf.random.Generator:
        """A seeded ``tf.random.Generator`` saved in checkpoints, for the user's own noise."""
        return self._state.rng

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because of non-finite values (``on_nonfinite="skip"``)."""
        return int(self._state.skipped.numpy())

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The Keras metric objects the Trainer updates."""
        return list(self._call.metrics) if self._call is not None else []

    @property
    def variables(self) -> list[Any]:
        """Every variable of the model(s) (trainable and not), as saved by ``get_weights``."""
        return all_variables(self.models)

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every model variable's value, as NumPy arrays."""
        return [np.array(v.numpy()) for v in self.variables]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign values (in ``get_weights`` order) to the model's variables."""
        for v, w in zip(self.variables, weights, strict=True):
            v.assign(w)

    # -- set-up ------------------------------------------------------------------------------

    def _ensure_ready(self, element_spec: Any) -> None:
        """Build the optimizers, trace-check the step, restore the newest checkpoint, open logs."""
        if self._ready:
            return
        self._steps.prepare(element_spec)
        if self.checkpoint_dir is not None:
            objects = checkpoint_objects(
                self.model, self.variables, self.optimizers, self._state, self._steps
            )
            self._checkpoints = Checkpoints(
                self.checkpoint_dir, objects, keep=self._keep, strategy=self.strategy
            )
            self.restored_from = self._checkpoints.restore_latest()
        self._open_logs()
        self._ready = True

    def _open_logs(self) -> None:
        if self.logdir is None or (self._hook is not None and not self._hook.closed):
            return
        self._hook = BoardHook(
            self.logdir,
            strategy=self.strategy,
            log_every=self._log_every,
            histogram_every=self._histogram_every,
        )
        self._hook.check_writable()
        self._steps.set_hook(self._hook)

    def save_checkpoint(self) -> str:
        """Write a checkpoint now, e.g. from your own loop around :meth:`step`.

        ``fit`` saves by itself (at epoch ends and every ``checkpoint_every`` steps). Under a
        multi-worker strategy every worker must call this; only the chief's copy is kept.

        Returns:
            The checkpoint's path prefix (``<checkpoint_dir>/ckpt-<step>``).

        Raises:
            ValueError: If the Trainer has no ``checkpoint_dir`` or has not run a step yet.
        """
        if self.checkpoint_dir is None or self._checkpoints is None:
            raise ValueError(
                "save_checkpoint needs Trainer(checkpoint_dir=...) and at least one call of "
                f"fit/step/evaluate first; checkpoint_dir is {self.checkpoint_dir!r}."
            )
        return self._checkpoints.save(self.global_step)

    def close(self) -> None:
        """Flush and close the TensorBoard writers (a later ``fit`` opens new ones)."""
        if self._hook is not None:
            self._hook.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- running -----------------------------------------------------------------------------

    def step(self, batch: Any = None) -> dict[str, tf.Tensor]:
        """Run one optimizer step on ``batch`` (for users with their own outer loop).

        ``accumulate_steps`` does not apply here: the batch is one whole step. The step is
        compiled once per batch structure/dtypes; the batch size may vary without retracing.

        Args:
            batch: The batch, as ``loss_fn`` / the step receives it (tensors or arrays, any
                nest), or None for a step without data.

        Returns:
            The step's values (``{"loss": scalar, **extras}`` for the default step) as scalar
            tensors (global means over the batch).

        Raises:
            NonFiniteError: If the loss or a gradient is not finite (``on_nonfinite="raise"``).
        """
        spec = None
        if batch is not None:
            batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
            spec = _data.relaxed_spec(tf.nest.map_structure(tf.TensorSpec.from_tensor, batch))
        self._ensure_ready(spec)
        fn = self._steps.batch_function(spec)
        if self._steps.replicas > 1 and batch is not None:
            batch = self._steps.split_batch(batch)
        return run_guarded(fn, (batch,), self._steps, self._checkpoints)

    def evaluate(
        self, data: Any, *, batch_size: int | None = None, steps: int | None = None
    ) -> dict[str, float]:
        """Loss, extras and metrics over ``data`` (no update; ``loss_fn(training=False)``).

        Args:
            data: A batched ``tf.data.Dataset`` or arrays (with ``batch_size``).
            batch_size: Batch size for array data.
            steps: Batches to evaluate (default: all).

        Returns:
            ``{"loss": float, **extras, **metrics}``, means over all examples.

        Raises:
            ValueError: If the Trainer has no ``loss_fn`` (a custom step without one).
        """
        if self._call is None:
            raise ValueError(
                "evaluate (and validation_data) need a loss_fn, but this Trainer runs a custom "
                "step only. Pass Trainer(..., step=..., loss_fn=eval_loss) to evaluate with it."
            )
        ds = _data.as_dataset(data, batch_size=batch_size, argument="data")
        self._ensure_ready(ds.element_spec)
        return self._steps.evaluate(ds, _data.steps_per_epoch(ds, steps, 1))

    def fit(
        self,
        data: Any,
        *,
        epochs: int = 1,
        batch_size: int | None = None,
        steps_per_epoch: int | None = None,
        validation_data: Any = None,
        validation_batch_size: int | None = None,
        shuffle: bool = True,
        verbose: int = 1,
    ) -> History:
        """Train until ``epochs`` epochs are complete (counting epochs done before a resume).

        A ``fit`` continues where the last one stopped (returned, raised, or was killed and
        resumed from ``checkpoint_dir``): at the same step and the next example of the data, so
        ``fit(epochs=1)`` then ``fit(epochs=3)`` equals one ``fit(epochs=3)``.

        Args:
            data: A batched ``tf.data.Dataset``, arrays / a tuple or dict of arrays, or None
                for a step that makes its own data (with ``steps_per_epoch``).
            epochs: The epoch to stop after (a run resumed at epoch 3 of 10 runs 7 more).
            batch_size: Batch size for array data.
            steps_per_epoch: Optimizer steps per epoch (default: one pass over ``data``).
            validation_data: Evaluated at each epoch end (values get a ``val_`` prefix).
            validation_batch_size: Batch size for array validation data (default batch_size).
            shuffle: Shuffle array data every epoch (seeded by ``seed``).
            verbose: 0 prints nothing, 1 prints one line per epoch (on the chief only).

        Returns:
            A :class:`tapekit.History` with per-epoch values and the final step.

        Raises:
            NonFiniteError: On a non-finite loss or gradient (``on_nonfinite="raise"``).
            CheckpointError: If ``checkpoint_dir`` holds checkpoints none of which is readable.
            ValueError: If the data is empty, runs out, or differs mid-epoch from the data the
                saved position was recorded for.
            OSError: If ``logdir`` is not writable (before any training).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"fit needs epochs >= 1 (an int), got {epochs!r}.")
        plan = self._loop.plan(
            data, batch_size=batch_size, steps_per_epoch=steps_per_epoch, shuffle=shuffle
        )
        self._ensure_ready(None if plan[0] is None else plan[0].element_spec)
        validation = None
        if validation_data is not None:
            val_ds = _data.as_dataset(
                validation_data,
                argument="validation_data",
                batch_size=_data.validation_batch_size(
                    validation_data, validation_batch_size, batch_size
                ),
            )
            val_steps = _data.steps_per_epoch(val_ds, None, 1)
            validation = lambda: self.evaluate(val_ds, steps=val_steps)  # noqa: E731
        history = History()
        printing = verbose and is_chief(self.strategy)  # one console for the whole cluster
        cbs = [history, *self.callbacks] + ([ProgressPrinter(epochs)] if printing else [])
        self.stop_training = False
        self._loop.run(
            plan,
            epochs=epochs,
            callbacks=CallbackList(cbs, self),
            validation=validation,
            checkpoints=self._checkpoints,
            checkpoint_every=self._ckpt_every,
            hook=self._hook,
            guard=lambda fn, *args: run_guarded(fn, args, self._steps, self._checkpoints),
            should_stop=lambda: self.stop_training,
        )
        return history
