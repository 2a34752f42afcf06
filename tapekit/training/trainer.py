"""``Trainer``: a custom training loop with the features of ``keras.Model.fit``, compiled whole.

Parts are built in ``parts``; the outer loop is ``loop``; the compiled step ``step``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import tensorflow as tf

from . import data as _data
from . import fit_setup as _setup
from .callbacks import History
from .keras_callbacks import adapt_callbacks
from .loop import FitLoop
from .parts import (
    ASSEMBLY_ARGS,
    OPTION_ARGS,
    assemble,
    check_options,
    checkpoint_objects,
    run_guarded,
)
from .predict import Predictor, choose_model
from .summaries import BoardHook, choose_logdir
from .view import StateView

__all__ = ["Trainer"]


class Trainer(StateView):
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
        steps_per_execution: Optimizer steps per compiled call; None: automatic, 64 at first,
            then as many as take about half a second (1 to 1024, measured as it trains), so
            the host's share stays well under 1% and the console, callbacks and SIGTERM are
            served about once a second (64 per call in a multi-worker cluster). Calls stop
            at epoch ends, checkpoints and the steps callbacks ask for with
            ``next_step_end`` (a callback with ``on_step_end`` but no ``next_step_end``
            gets 1 step per call); results are bitwise the same however steps are grouped.
        checkpoint_dir: Directory for checkpoints; a new Trainer pointed at it resumes.
        keep_checkpoints: How many checkpoints to keep.
        checkpoint_every: Also save every this many steps (default: at epoch ends only).
        callbacks: :class:`tapekit.Callback` objects, or ``keras.callbacks`` ones for one
            ``keras.Model`` (see :mod:`tapekit.training.keras_callbacks`).
        seed: Seeds the data shuffle, ``trainer.rng`` and (before a factory runs) the global
            Keras/TF/NumPy seeds. Two runs with a seed are bitwise equal on CPU.
        strategy: A ``tf.distribute.Strategy`` (default: the current one); batches are GLOBAL
            batches split over the replicas (see :mod:`tapekit.training.distribution`).
        logdir: TensorBoard run directory; None: ``logs/<name>-<time>``; False: no logging.
        log_every: Steps between per-step scalars (loss, gradient norms).
        histogram_every: Steps between gradient and weight histograms (0: none).
        on_nonfinite: "raise" (:class:`tapekit.NonFiniteError`) or "skip" such steps; None
            applies every update unchecked, as ``keras.Model.fit`` does (a few percent faster
            for small models, where the check keeps an update from overlapping the
            backward pass; a NaN then reaches the weights silently; not with float16 loss
            scaling, which needs the check).
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
        on_nonfinite: str | None = "raise",
        allow_unused: bool = False,
        name: str | None = None,
    ) -> None:
        self.strategy = strategy = strategy or tf.distribute.get_strategy()
        given = locals()
        check_options(**{k: given[k] for k in OPTION_ARGS})
        parts = assemble(**{k: given[k] for k in ASSEMBLY_ARGS})
        loop = FitLoop(
            parts.steps,
            parts.state,
            strategy=strategy,
            accumulate=accumulate_steps,
            steps_per_execution=steps_per_execution,
        )
        super().__init__(parts, loop)
        default_name = getattr(self.model, "name", None) if models is None else None
        self.name = name or default_name or "run"
        self.steps_per_execution, self.accumulate_steps = steps_per_execution, accumulate_steps
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self._keep, self._ckpt_every = keep_checkpoints, checkpoint_every
        self.callbacks = adapt_callbacks(callbacks, self.models)  # keras.callbacks.* wrapped
        self.logdir = choose_logdir(logdir, self.name)
        self._log_every, self._histogram_every = log_every, histogram_every
        self._hook: Any = None
        self._ready = self.stop_training = False
        self.restored_from: str | None = None
        self._announce: str | None = None  # the restore the next fit's console announces
        self._predictors: dict[str, Predictor] = {}

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
            self._checkpoints = _setup.open_checkpoints(
                self.checkpoint_dir, objects, self.optimizers, self._keep, self.strategy
            )
            self.restored_from = self._announce = self._checkpoints.restore_latest()
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

    def _flush(self) -> None:
        if self._hook is not None:
            self._hook.flush()

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

    def predict(
        self,
        data: Any,
        *,
        batch_size: int | None = None,
        steps: int | None = None,
        model: str | None = None,
    ) -> Any:
        """The model's outputs over ``data`` in inference mode, like ``keras.Model.predict``.

        Args:
            data: Inputs: arrays (a nest of them) with ``batch_size``, or a batched
                ``tf.data.Dataset``; a tuple ``(x, y)`` / ``(x, y, w)`` contributes ``x`` only.
            batch_size: Batch size for array data.
            steps: Batches to run (default: all).
            model: With several models (``models={...}``), the name of the one to run.

        Returns:
            NumPy arrays concatenated over the batches, in the nest of one model output.

        Raises:
            TypeError: If the model is not callable (e.g. bare variables).
            ValueError: If the Trainer has a ``checkpoint_dir`` that was not restored yet (it
                is restored at the first ``fit``/``step``/``evaluate``), for bad ``steps``, or
                if ``model`` is missing (several models) or names none of them.

        Example:
            >>> import keras, numpy as np, tapekit
            >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
            >>> trainer = tapekit.Trainer(model, lambda m, b: 0.0, logdir=False)
            >>> trainer.predict(np.ones((5, 2), "float32"), batch_size=2).shape
            (5, 1)
        """
        if self.checkpoint_dir is not None and not self._ready:
            raise ValueError(
                f"predict would use the initial weights: the checkpoints in checkpoint_dir="
                f"{self.checkpoint_dir!r} are restored at the first fit/step/evaluate (they "
                "need a training batch). Call trainer.evaluate(validation_data) first."
            )
        name = choose_model(self.models, model)
        if name not in self._predictors:
            self._predictors[name] = Predictor(self.models[name], self.strategy)
        return self._predictors[name](data, batch_size, steps)

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
        ``fit(epochs=1)`` then ``fit(epochs=3)`` equals one ``fit(epochs=3)`` (``epochs``
        counts over every call and resume, as Keras' ``BackupAndRestore`` does). A call with
        nothing left to train warns and returns an empty History; to train ``n`` more, pass
        ``epochs=trainer.epoch + n``.

        Args:
            data: A batched ``tf.data.Dataset``, arrays / a tuple or dict of arrays, or None
                for a step that makes its own data (with ``steps_per_epoch``).
            epochs: The epoch to stop after (a run resumed at epoch 3 of 10 runs 7 more).
            batch_size: Batch size for array data.
            steps_per_epoch: Optimizer steps per epoch (default: one pass over ``data``).
            validation_data: Evaluated at each epoch end (values get a ``val_`` prefix).
            validation_batch_size: Batch size for array validation data (default batch_size).
            shuffle: Shuffle array data every epoch (seeded by ``seed``).
            verbose: 0 prints nothing, 2 one line per epoch, 1 also a progress bar within the
                epoch when the console is a terminal (on the chief only), see
                :mod:`tapekit.training.progress`.

        Returns:
            A :class:`tapekit.History` with per-epoch values and the final step.

        Raises:
            NonFiniteError: On a non-finite loss or gradient (``on_nonfinite="raise"``).
            CheckpointError: If ``checkpoint_dir`` is not a writable directory, or holds
                checkpoints none of which is readable or that other optimizers wrote.
            ValueError: If the data is empty, runs out, or differs mid-epoch from the data the
                saved position was recorded for.
            OSError: If ``logdir`` is not writable (before any training).
            Preempted: On SIGTERM, after the running execution and a checkpoint at the exact
                position (``SystemExit`` 42, see :mod:`tapekit.training.preemption`).
            KeyboardInterrupt: On SIGINT, after the running execution (nothing saved).
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"fit needs epochs >= 1 (an int), got {epochs!r}.")
        plan = self._loop.plan(
            data, batch_size=batch_size, steps_per_epoch=steps_per_epoch, shuffle=shuffle
        )
        self._ensure_ready(None if plan[0] is None else plan[0].element_spec)
        if self.epoch >= epochs and self.epoch_step == 0:
            return _setup.nothing_left(self, epochs)
        validation = _setup.validation_fn(
            self.evaluate, validation_data, batch_size=validation_batch_size or batch_size
        )
        resumed, self._announce = self._announce, None
        callbacks, history, printer = _setup.fit_callbacks(
            self, epochs=epochs, verbose=verbose, steps_per_epoch=plan[1], resumed_from=resumed
        )
        self.stop_training = False
        with _setup.stop_signals(self.strategy) as stop:
            at_boundary = partial(  # SIGTERM: save at the exact position, flush, Preempted
                stop.check, flush=self._flush, step=lambda: self.global_step, printing=bool(printer)
            )
            self._loop.run(
                plan,
                epochs=epochs,
                callbacks=callbacks,
                validation=validation,
                checkpoints=self._checkpoints,
                checkpoint_every=self._ckpt_every,
                hook=self._hook,
                guard=lambda fn, *args: run_guarded(fn, args, self._steps, self._checkpoints),
                should_stop=lambda: self.stop_training,
                printer=printer,
                interrupt=at_boundary,
            )
        return history
