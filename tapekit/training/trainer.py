"""``Trainer``: a custom training loop with the features of ``keras.Model.fit``, compiled whole.

The loop itself is in :mod:`tapekit.training.step`; this module wires the parts together:
data (``data``), the user's model and hooks (``model``, ``calls``), checkpoints
(``checkpoints``), callbacks and the console line (``callbacks``) and TensorBoard
logging (``summaries``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import data as _data
from .callbacks import History
from .calls import LossCall, resolve_metrics
from .checkpoints import Checkpoints, optimizer_name
from .keras_callbacks import adapt_callbacks
from .loop import run_fit
from .model import (
    build_model,
    check_in_scope,
    check_positive,
    resolve_optimizer,
    tf_variable,
    trainable_variables,
    variable_names,
)
from .predict import Predictor
from .state import TrainState
from .step import NONFINITE_MARK, CompiledSteps
from .summaries import BoardHook, choose_logdir

__all__ = ["Trainer"]


class Trainer:
    """A compiled, strategy-aware training loop for Keras models, ``tf.Module``s and variables.

    Args:
        model: A ``keras.Model``, a ``tf.Module``, a ``tf.Variable`` or a dict/list/tuple of
            them, or a zero-argument factory returning one (called inside the strategy scope
            and the mixed-precision policy). Its trainable variables are trained.
        loss_fn: ``loss_fn(model, batch) -> loss`` (a float scalar, the mean over the batch) or
            ``-> (loss, {name: scalar})``; see :mod:`tapekit.training.calls` for the reserved
            ``y_true``/``y_pred`` keys and the optional ``training`` argument.
        optimizer: A Keras optimizer or its name ("adam", "sgd", ...).
        metrics: Keras metrics or their names, fed ``(y_true, y_pred)`` (see ``metrics_fn``).
        metrics_fn: ``metrics_fn(model, batch) -> (y_true, y_pred)`` for the metrics.
        clip_norm: Clip the aggregated gradient to this global norm.
        clip_value: Clip each aggregated gradient element to ``[-clip_value, clip_value]``.
        accumulate_steps: Micro-batches whose gradients are summed per optimizer step; equals
            training with batches ``accumulate_steps`` times larger.
        mixed_precision: None, "mixed_float16" (with dynamic loss scaling) or "mixed_bfloat16".
        jit_compile: XLA-compile the forward and backward pass.
        steps_per_execution: Optimizer steps per call of the compiled function. None (default)
            runs up to 64 steps per call, stopping at epoch ends and checkpoints, and 1 when a
            callback defines ``on_step_end``; results are identical for every value.
        checkpoint_dir: Directory for checkpoints; a new Trainer pointed at it resumes.
        keep_checkpoints: How many checkpoints to keep.
        checkpoint_every: Also save every this many steps (default: at epoch ends only).
        callbacks: Objects following the :class:`tapekit.Callback` protocol, or Keras
            callbacks (``keras.callbacks.EarlyStopping``, ``ReduceLROnPlateau``,
            ``ModelCheckpoint``, ``CSVLogger``, ...; see
            :mod:`tapekit.training.keras_callbacks`).
        seed: Seeds the data shuffle and ``trainer.rng``; for a model factory, also the global
            Keras/TF/NumPy seeds before it is called. Two runs with a seed are bitwise equal on CPU.
        strategy: A ``tf.distribute.Strategy`` (default: the current one), e.g. Mirrored or
            MultiWorkerMirrored. Batches are GLOBAL batches split over the replicas; only the
            chief writes (see :mod:`tapekit.training.distribution`).
        logdir: TensorBoard run directory; None means ``logs/<name>-<time>`` (if
            ``tapekit.board`` is available), False disables logging.
        log_every: Steps between per-step scalars (loss, gradient norms); 10 by default keeps
            logging overhead small (see benchmarks/training.py).
        histogram_every: Steps between gradient and weight histograms (0: none).
        on_nonfinite: "raise" (:class:`tapekit.NonFiniteError`) or "skip" such steps.
        allow_unused: Allow trainable variables that get no gradient (else an error names them).
        name: Run name, used for the default logdir.

    Raises:
        TypeError, ValueError: For arguments of the wrong kind or out of range (with the fix),
            e.g. a Keras callback that cannot work here.

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
        model: Any,
        loss_fn: Callable,
        *,
        optimizer: Any = "adam",
        metrics: Sequence[Any] = (),
        metrics_fn: Callable | None = None,
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
        check_positive(clip_norm, "clip_norm", float, allow_none=True)
        check_positive(clip_value, "clip_value", float, allow_none=True)
        for value, arg in (
            (accumulate_steps, "accumulate_steps"),
            (keep_checkpoints, "keep_checkpoints"),
            (log_every, "log_every"),
        ):
            check_positive(value, arg)
        check_positive(checkpoint_every, "checkpoint_every", allow_none=True)
        check_positive(steps_per_execution, "steps_per_execution", allow_none=True)
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}.")
        is_factory = callable(model) and not isinstance(
            model, (keras.layers.Layer, tf.Module, tf.Variable, dict, list, tuple)
        )
        if is_factory and seed is not None:
            keras.utils.set_random_seed(seed)
        self.model = build_model(model, strategy, mixed_precision)
        self.optimizer = resolve_optimizer(optimizer, strategy, mixed_precision)
        self.trainable_variables = trainable_variables(self.model)
        check_in_scope(self.trainable_variables, self.optimizer, strategy)
        names = variable_names(self.model, self.trainable_variables)
        metric_objs = resolve_metrics(metrics, strategy)
        self._call = LossCall(self.model, loss_fn, metric_objs, metrics_fn)
        with strategy.scope():
            self._state = TrainState(len(self.trainable_variables), seed)
        self.name = name or getattr(self.model, "name", None) or "run"
        self._steps = CompiledSteps(
            call=self._call,
            variables=self.trainable_variables,
            names=names,
            optimizer=self.optimizer,
            strategy=strategy,
            state=self._state,
            clip_norm=clip_norm,
            clip_value=clip_value,
            accumulate=accumulate_steps,
            steps_per_execution=steps_per_execution,
            on_nonfinite=on_nonfinite,
            allow_unused=allow_unused,
            jit_compile=jit_compile,
        )
        self.steps_per_execution, self.accumulate_steps = steps_per_execution, accumulate_steps
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self._keep, self._ckpt_every = keep_checkpoints, checkpoint_every
        self._checkpoints: Checkpoints | None = None
        self.callbacks = adapt_callbacks(callbacks, self.model)  # keras.callbacks.* wrapped
        self.logdir = choose_logdir(logdir, self.name)
        self._log_every, self._histogram_every = log_every, histogram_every
        self._hook: Any = None
        self._ready = False
        self._resume_position: int | None = None
        self.restored_from: str | None = None
        self.stop_training = False
        self._remaining_steps: int | None = None
        self._step_fns: dict[Any, Any] = {}
        self._predictor: Predictor | None = None

    # -- public state ------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far (restored from a checkpoint on resume)."""
        return int(self._state.step.numpy())

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return int(self._state.epoch.numpy())

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
        return list(self._call.metrics)

    @property
    def variables(self) -> list[Any]:
        """Every variable of the model (trainable and not, with Keras' RNG seed state), as
        saved in checkpoints."""
        if isinstance(self.model, (keras.layers.Layer, tf.Module)):
            return list(self.model.variables)
        return [v for v in tf.nest.flatten(self.model) if isinstance(v, (tf.Variable,))]

    @property
    def weights(self) -> list[Any]:
        """The variables of ``get_weights``: a Keras model's ``model.weights`` (no RNG seed
        state, so the lists interchange with ``model.get_weights()``), else ``variables``."""
        if isinstance(self.model, keras.layers.Layer):
            return list(self.model.weights)
        return self.variables

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights as NumPy arrays, in the order of Keras' ``model.get_weights()``."""
        return [np.array(v.numpy()) for v in self.weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign values (in ``get_weights`` order, e.g. from ``model.get_weights()``).

        Raises:
            ValueError: If the number of arrays differs from ``len(trainer.weights)``.
        """
        weights = list(weights)
        if len(weights) != len(self.weights):
            raise ValueError(
                f"set_weights needs {len(self.weights)} arrays (the order of get_weights() / "
                f"model.get_weights()), got {len(weights)}."
            )
        for v, w in zip(self.weights, weights, strict=True):
            v.assign(w)

    # -- set-up ------------------------------------------------------------------------------

    def _ensure_ready(self, element_spec: Any) -> None:
        """Build the optimizer, trace-check loss_fn, restore the newest checkpoint, open logs."""
        if self._ready:
            return
        with self.strategy.scope():
            self.optimizer.build(self.trainable_variables)
        self._steps.prepare(element_spec)
        if self.checkpoint_dir is not None:
            # Keras keeps some state (e.g. dropout seed generators) in variables that
            # tf.train.Checkpoint does not reach through the model; list them all explicitly.
            every = [tf_variable(v) for v in self.variables]
            objects = dict(
                model=self.model,
                model_variables=every,
                optimizer=self.optimizer,
                state=self._state,
                train_means=self._steps.train_means,
                metrics=self._call.metrics,
            )
            self._checkpoints = Checkpoints(
                self.checkpoint_dir,
                objects,
                keep=self._keep,
                strategy=self.strategy,
                meta={"optimizer": optimizer_name(self.optimizer)},
            )
            self.restored_from = self._checkpoints.restore_latest()
            if self.restored_from is not None:
                self._resume_position = int(self._state.position.numpy())
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
        self._step_fns.clear()

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

    def _run(self, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except tf.errors.InvalidArgumentError as exc:
            if NONFINITE_MARK not in str(exc):
                raise
            saved = "no checkpoint_dir was set"
            if self._checkpoints is not None:
                latest = self._checkpoints.latest()
                saved = f"the newest checkpoint on disk is {latest}" if latest else "none saved"
            raise self._steps.nonfinite_error(saved) from None

    def step(self, batch: Any) -> dict[str, tf.Tensor]:
        """Run one optimizer step on ``batch`` (for users with their own outer loop).

        ``accumulate_steps`` does not apply here: the batch is one whole step. The step is
        compiled once per batch structure/dtypes; the batch size may vary without retracing.

        Args:
            batch: The batch, as ``loss_fn`` receives it (tensors or arrays, any nest).

        Returns:
            ``{"loss": scalar, **extras}`` as scalar tensors (the global means over the batch).

        Raises:
            NonFiniteError: If the loss or a gradient is not finite (``on_nonfinite="raise"``).
        """
        batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
        spec = _data.relaxed_spec(tf.nest.map_structure(tf.TensorSpec.from_tensor, batch))
        self._ensure_ready(spec)
        if self._steps.replicas > 1:
            return self._run(self._steps.batch_fn, self._steps.split_batch(batch))
        key = tf.nest.flatten(spec), tf.nest.map_structure(lambda _: None, spec)
        key = repr(key)
        fn = self._step_fns.get(key)
        if fn is None:
            fn = self._step_fns[key] = tf.function(self._steps._train_batch, input_signature=[spec])
        return self._run(fn, batch)

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
        """
        ds = _data.as_dataset(data, batch_size=batch_size, argument="data")
        self._ensure_ready(ds.element_spec)
        steps = _data.steps_per_epoch(ds, steps, 1)
        self._steps.eval_means.reset()
        self._call.reset_metrics()
        iterator = iter(_data.distribute(ds, self.strategy))
        self._steps.eval_fn(iterator, tf.constant(steps, tf.int64))
        return {**self._steps.eval_means.result(), **self._call.metric_results()}

    def predict(self, data: Any, *, batch_size: int | None = None, steps: int | None = None) -> Any:
        """The model's outputs over ``data`` in inference mode, like ``keras.Model.predict``.

        Args:
            data: Inputs: arrays (a nest of them) with ``batch_size``, or a batched
                ``tf.data.Dataset``; a tuple ``(x, y)`` / ``(x, y, w)`` contributes ``x`` only.
            batch_size: Batch size for array data.
            steps: Batches to run (default: all).

        Returns:
            NumPy arrays concatenated over the batches, in the nest of one model output.

        Raises:
            TypeError: If the model is not callable (e.g. bare variables).
            ValueError: If the Trainer has a ``checkpoint_dir`` that was not restored yet (it
                is restored at the first ``fit``/``step``/``evaluate``), or for bad ``steps``.

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
        if self._predictor is None:
            self._predictor = Predictor(self.model, self.strategy)
        return self._predictor(data, batch_size, steps)

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

        ``epochs`` counts over every ``fit`` call and resume of the run, as Keras'
        ``BackupAndRestore`` does: ``fit(epochs=1)`` then ``fit(epochs=3)`` trains epochs 2 and
        3; a call with nothing left to do warns (and prints, if ``verbose``) and returns an
        empty History. To train ``n`` more, pass ``epochs=trainer.epoch + n``.

        Args:
            data: A batched ``tf.data.Dataset``, or arrays / a tuple or dict of arrays.
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
                checkpoints none of which is readable or that another optimizer wrote.
            OSError: If ``logdir`` is not writable (before any training).
            Preempted: On SIGTERM, after the running execution and a checkpoint (a
                ``SystemExit`` with status 42, see :mod:`tapekit.training.preemption`).
            KeyboardInterrupt: On SIGINT, after the running execution (nothing saved).
        """
        return run_fit(
            self,
            data,
            epochs=epochs,
            batch_size=batch_size,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation_data,
            validation_batch_size=validation_batch_size,
            shuffle=shuffle,
            verbose=verbose,
        )
