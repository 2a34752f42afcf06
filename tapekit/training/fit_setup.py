"""What ``Trainer`` wires around the :class:`~tapekit.training.loop.FitLoop`.

``open_checkpoints`` makes the run's :class:`~tapekit.training.checkpoints.Checkpoints` with a
record of every optimizer's class (:func:`optimizer_record`: a restore into other optimizers is
refused); ``fit_callbacks`` puts the user's callbacks, then :class:`History` (it sees what they
add to the logs, as in Keras), then the console; ``nothing_left`` is ``fit``'s answer when
``epochs`` epochs are already complete (``epochs`` counts over every ``fit`` and resume, as
Keras' ``BackupAndRestore`` does); ``stop_signals`` is the SIGTERM/SIGINT context of one
``fit`` (see :mod:`tapekit.training.preemption`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from . import data as _data
from .callbacks import CallbackList, History
from .checkpoints import Checkpoints, optimizer_name
from .distribution import is_chief, is_multi_worker
from .preemption import StopSignals
from .progress import ProgressPrinter

__all__ = [
    "fit_callbacks",
    "nothing_left",
    "open_checkpoints",
    "optimizer_record",
    "stop_signals",
    "validation_fn",
]


def optimizer_record(optimizers: dict[str, Any]) -> dict[str, str]:
    """What a checkpoint records of the optimizers (and refuses to restore into others).

    Args:
        optimizers: The Trainer's ``{name: optimizer}``.

    Returns:
        ``{"optimizer": class}`` for the default step's one optimizer, else
        ``{"optimizers": "name=class, ..."}`` naming every optimizer (sorted by name).

    Example:
        >>> import keras
        >>> optimizer_record({"model": keras.optimizers.Adam()})
        {'optimizer': 'Adam'}
        >>> optimizer_record({"g": keras.optimizers.Adam(), "c": keras.optimizers.SGD()})
        {'optimizers': 'c=SGD, g=Adam'}
    """
    if list(optimizers) == ["model"]:
        return {"optimizer": optimizer_name(optimizers["model"])}
    names = ", ".join(f"{k}={optimizer_name(optimizers[k])}" for k in sorted(optimizers))
    return {"optimizers": names}


def open_checkpoints(
    directory: str,
    objects: dict[str, Any],
    optimizers: dict[str, Any],
    keep: int,
    strategy: Any,
) -> Checkpoints:
    """The run's checkpoints of ``objects``, with :func:`optimizer_record` as the record a
    restore must match.

    Args:
        directory: ``checkpoint_dir``.
        objects: What :func:`~tapekit.training.parts.checkpoint_objects` lists.
        optimizers: ``{name: optimizer}`` (recorded by class).
        keep: Checkpoints to keep.
        strategy: The distribution strategy.

    Returns:
        The :class:`~tapekit.training.checkpoints.Checkpoints` (nothing restored yet).

    Raises:
        CheckpointError: If ``directory`` is a file or cannot be written.

    Example:
        >>> import tempfile, keras, tensorflow as tf
        >>> ckpt = open_checkpoints(tempfile.mkdtemp(), {"v": tf.Variable(1.0)},
        ...     {"model": keras.optimizers.SGD()}, 1, tf.distribute.get_strategy())
        >>> ckpt.meta
        {'optimizer': 'SGD'}
    """
    return Checkpoints(
        directory, objects, keep=keep, strategy=strategy, meta=optimizer_record(optimizers)
    )


def nothing_left(trainer: Any, epochs: int) -> History:
    """``fit(epochs=n)`` when ``n`` epochs are already complete: warn (at the user's ``fit``
    call) and return an empty History.

    Args:
        trainer: The Trainer (``epoch``, ``global_step``).
        epochs: ``fit``'s ``epochs``.

    Returns:
        A History with no epochs and the current step.

    Example:
        >>> import warnings, tensorflow as tf, tapekit
        >>> trainer = tapekit.Trainer(tf.Variable(1.0), lambda w, b: w**2, logdir=False)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     nothing_left(trainer, 0).epochs
        []
        >>> "nothing to train" in str(caught[0].message)
        True
    """
    done = trainer.epoch
    warnings.warn(
        f"fit(epochs={epochs}) has nothing to train: {done} epoch(s) are already complete "
        f"(step {trainer.global_step}). `epochs` is the epoch to stop after, counted over every "
        "fit call and resume of this run (as with Keras' BackupAndRestore), not epochs more; "
        f"pass epochs={done + epochs} to train {epochs} more.",
        UserWarning,
        stacklevel=3,  # nothing_left <- Trainer.fit <- the user's call
    )
    history = History()
    history.set_trainer(trainer)
    history.on_train_end()
    return history


def fit_callbacks(
    trainer: Any,
    *,
    epochs: int,
    verbose: int,
    steps_per_epoch: int,
    resumed_from: str | None,
) -> tuple[CallbackList, History, ProgressPrinter | None]:
    """The callbacks of one ``fit``: the user's, then History, then the console (chief only).

    Args:
        trainer: The Trainer the callbacks get; ``trainer.callbacks`` are the user's (Keras
            ones already adapted).
        epochs: The epoch ``fit`` stops after.
        verbose: ``fit``'s ``verbose`` (0: no console).
        steps_per_epoch: Steps per epoch (the progress bar's total).
        resumed_from: The checkpoint to announce as resumed from (or None).

    Returns:
        ``(callback list, history, printer or None)``.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> trainer = tapekit.Trainer(tf.Variable(1.0), lambda w, b: w**2, logdir=False)
        >>> cbs, history, printer = fit_callbacks(trainer, epochs=1, verbose=0,
        ...     steps_per_epoch=4, resumed_from=None)
        >>> cbs.callbacks == [history], printer
        (True, None)
    """
    history = History()
    printer = None
    if verbose and is_chief(trainer.strategy):  # one console for the whole cluster
        printer = ProgressPrinter(
            epochs, verbose=verbose, steps_per_epoch=steps_per_epoch, resumed_from=resumed_from
        )
    cbs = [*trainer.callbacks, history] + ([printer] if printer is not None else [])
    return CallbackList(cbs, trainer), history, printer


def stop_signals(strategy: Any) -> StopSignals:
    """The SIGTERM/SIGINT context of one ``fit`` (nothing installed under multi-worker).

    Args:
        strategy: The distribution strategy.

    Returns:
        A :class:`~tapekit.training.preemption.StopSignals` to enter around the loop.

    Example:
        >>> import tensorflow as tf
        >>> stop_signals(tf.distribute.get_strategy()).enabled
        True
    """
    return StopSignals(enabled=not is_multi_worker(strategy))


def validation_fn(
    evaluate: Callable[..., dict[str, float]], data: Any, *, batch_size: int | None
) -> Callable[[], dict[str, float]] | None:
    """What ``fit`` calls at each epoch end for ``validation_data`` (None: no validation).

    Args:
        evaluate: ``Trainer.evaluate``.
        data: ``validation_data`` (a batched Dataset, or arrays batched by ``batch_size``).
        batch_size: The validation batch size for arrays.

    Returns:
        A callable returning the validation values, or None if ``data`` is None.

    Example:
        >>> import numpy as np
        >>> fn = validation_fn(lambda ds, steps: {"loss": float(steps)}, np.zeros(10), batch_size=4)
        >>> fn()
        {'loss': 3.0}
    """
    if data is None:
        return None
    ds = _data.as_dataset(
        data,
        argument="validation_data",
        batch_size=_data.validation_batch_size(data, batch_size, None),
    )
    steps = _data.steps_per_epoch(ds, None, 1)
    return lambda: evaluate(ds, steps=steps)
