"""Learning-rate callbacks with Keras' semantics: ``ReduceLROnPlateau`` and
``LearningRateScheduler``.

Both set ``trainer.optimizer.learning_rate`` (a variable of the Keras optimizer, so the compiled
step reads the new value without retracing and checkpoints keep it) and add ``learning_rate``
to the epoch's logs as Keras does. The Trainer logs the learning rate to TensorBoard at every
epoch end whatever set it (these callbacks, a ``LearningRateSchedule``, your own code).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from .callbacks import Callback, monitor_mode, monitor_value

__all__ = ["LearningRateScheduler", "ReduceLROnPlateau", "get_learning_rate", "set_learning_rate"]


def get_learning_rate(optimizer: Any) -> float:
    """The optimizer's current learning rate as a float (a schedule's value at this step).

    Args:
        optimizer: A Keras optimizer.

    Returns:
        The learning rate.

    Example:
        >>> get_learning_rate(keras.optimizers.SGD(0.25))
        0.25
    """
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def set_learning_rate(optimizer: Any, value: float, owner: str) -> None:
    """Assign ``value`` to the optimizer's learning-rate variable.

    Args:
        optimizer: A Keras optimizer created with a float learning rate.
        value: The new learning rate.
        owner: Who sets it, for the message.

    Raises:
        TypeError: If the optimizer's learning rate is a ``LearningRateSchedule``.

    Example:
        >>> opt = keras.optimizers.SGD(0.25)
        >>> set_learning_rate(opt, 0.125, "me")
        >>> get_learning_rate(opt)
        0.125
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if isinstance(inner._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(
            f"{owner} sets the learning rate, but the optimizer follows a "
            f"{type(inner._learning_rate).__name__} schedule, which cannot be assigned. Create "
            "the optimizer with a float learning rate, or drop the callback."
        )
    optimizer.learning_rate = float(value)


def target_optimizer(trainer: Any, name: str | None, owner: str) -> tuple[Any, str]:
    """``(optimizer, logs key)``: the optimizer ``owner`` adjusts and where its rate is logged.

    Args:
        trainer: The Trainer (``trainer.optimizers``: name -> optimizer).
        name: The optimizer's name, or None for a Trainer's only one.
        owner: The callback's name, for messages.

    Raises:
        ValueError: If ``name`` is None but the Trainer has several optimizers, or it names
            none of them.

    Example:
        >>> t = type("T", (), {"optimizers": {"model": keras.optimizers.SGD(0.5)}})()
        >>> target_optimizer(t, None, "cb")[1]
        'learning_rate'
    """
    optimizers = dict(trainer.optimizers)
    if name is None and len(optimizers) == 1:
        return next(iter(optimizers.values())), "learning_rate"
    if name in optimizers:
        key = "learning_rate" if len(optimizers) == 1 else f"learning_rate/{name}"
        return optimizers[name], key
    what = f"optimizer={name!r}" if name is not None else "no optimizer name"
    raise ValueError(
        f"{owner} sets one optimizer's learning rate, but received {what} and this Trainer "
        f"has {len(optimizers)} ({', '.join(optimizers)}). Pass {owner}(..., "
        f"optimizer={next(iter(optimizers))!r}) with one of those names."
    )


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stopped improving, as Keras.

    After ``patience`` epoch ends without an improvement of at least ``min_delta`` the rate
    becomes ``max(lr * factor, min_lr)``; then ``cooldown`` epochs pass before counting again.

    Args:
        monitor: The logs key to watch.
        factor: The multiplier (< 1).
        patience: Epochs without improvement before a reduction.
        mode: "auto", "min" or "max" (see :func:`tapekit.training.callbacks.monitor_mode`).
        min_delta: The smallest change that counts as an improvement.
        cooldown: Epochs to wait after a reduction before counting again.
        min_lr: The lower bound of the learning rate.
        optimizer: Which optimizer of a Trainer with several (e.g. ``"critic"``); None for
            the only one.

    Raises:
        ValueError: For ``factor >= 1``, a negative ``patience`` or an unknown ``mode``; at
            the first epoch end, for a Trainer with several optimizers and no ``optimizer``.

    Example:
        >>> opt = keras.optimizers.SGD(1.0)
        >>> cb = ReduceLROnPlateau("loss", factor=0.5, patience=1)
        >>> cb.trainer = type("T", (), {"optimizers": {"model": opt}})()
        >>> cb.on_train_begin()
        >>> for epoch, loss in enumerate([1.0, 1.0, 1.0]):
        ...     cb.on_epoch_end(epoch, {"loss": loss})
        >>> get_learning_rate(opt)
        0.25
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        optimizer: str | None = None,
    ) -> None:
        super().__init__()
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau needs factor < 1, got factor={factor!r}.")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"ReduceLROnPlateau patience must be an int >= 0, got {patience!r}.")
        self.monitor, self.mode = monitor, monitor_mode(monitor, mode)
        self.factor, self.patience, self.min_delta = factor, patience, abs(min_delta)
        self.cooldown, self.min_lr, self.optimizer = cooldown, min_lr, optimizer
        self.on_train_begin()

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.cooldown_counter = 0

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        optimizer, key = target_optimizer(self.trainer, self.optimizer, "ReduceLROnPlateau")
        if logs is not None:
            logs[key] = get_learning_rate(optimizer)
        value = monitor_value("ReduceLROnPlateau", self.monitor, logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            old = get_learning_rate(optimizer)
            if old > np.float32(self.min_lr):
                set_learning_rate(
                    optimizer, max(old * self.factor, self.min_lr), "ReduceLROnPlateau"
                )
                self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """Set the learning rate at each epoch start to ``schedule(epoch, lr)``, as Keras.

    Args:
        schedule: ``schedule(epoch, lr) -> float`` (0-based epoch, current rate), or
            ``schedule(epoch) -> float``.
        optimizer: Which optimizer of a Trainer with several (e.g. ``"generator"``); None for
            the only one.

    Raises:
        ValueError: At an epoch start, if ``schedule`` returned something other than a float,
            or for a Trainer with several optimizers and no ``optimizer``.

    Example:
        >>> opt = keras.optimizers.SGD(1.0)
        >>> cb = LearningRateScheduler(lambda epoch, lr: lr * 0.5 if epoch else lr)
        >>> cb.trainer = type("T", (), {"optimizers": {"model": opt}})()
        >>> for epoch in range(3):
        ...     cb.on_epoch_begin(epoch)
        >>> get_learning_rate(opt)
        0.25
    """

    def __init__(self, schedule: Callable[..., float], *, optimizer: str | None = None) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler needs a callable, got {schedule!r}.")
        self.schedule, self.optimizer = schedule, optimizer

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        optimizer, _ = target_optimizer(self.trainer, self.optimizer, "LearningRateScheduler")
        current = get_learning_rate(optimizer)
        try:
            value = self.schedule(epoch, current)
        except TypeError:  # the one-argument form, as Keras accepts it
            value = self.schedule(epoch)
        if not isinstance(value, (float, np.floating)):
            raise ValueError(
                f"LearningRateScheduler's schedule must return a float, but for epoch {epoch} "
                f"it returned {value!r} ({type(value).__name__}). Return float(...)."
            )
        set_learning_rate(optimizer, value, "LearningRateScheduler")

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        optimizer, key = target_optimizer(self.trainer, self.optimizer, "LearningRateScheduler")
        if logs is not None:
            logs[key] = get_learning_rate(optimizer)
