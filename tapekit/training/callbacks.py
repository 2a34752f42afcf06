"""The callback protocol, with the built-in History, EarlyStopping and console printer.

A callback is any object with some of the methods of :class:`Callback` (missing ones are
skipped). ``logs`` are dicts of Python floats: ``loss``, the extras of ``loss_fn``, every metric,
``val_``-prefixed validation values, ``steps_per_second``. ``on_step_end`` is called after each
compiled execution (every ``steps_per_execution`` steps) and only when some callback defines it,
so the hot loop stays free of Python work otherwise; its ``logs`` hold ``step`` only (reading
the loss would cost a device round trip; read ``trainer`` state if you need it).

The console printer is an ordinary callback the Trainer adds when ``verbose > 0``: one uniform
line per epoch, ``epoch 3/10 | step 120 | loss 0.412 | ... | 142 steps/s | ETA 3s``; nothing
else in the training package prints.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "ProgressPrinter",
    "format_duration",
    "format_line",
]


class Callback:
    """Base class of Trainer callbacks; override the hooks you need.

    ``self.trainer`` is set to the Trainer before ``on_train_begin``. Set
    ``self.trainer.stop_training = True`` to stop after the current epoch.

    Args:
        (none): subclasses define their own constructor arguments.

    Example:
        >>> class PrintEpochs(Callback):
        ...     def on_epoch_end(self, epoch, logs):
        ...         print(epoch, sorted(logs))
        >>> PrintEpochs().on_epoch_end(0, {"loss": 1.0})
        0 ['loss']
    """

    trainer: Any = None

    def __init__(self) -> None:
        self.trainer = None

    def set_trainer(self, trainer: Any) -> None:
        """Give the callback its Trainer (called by ``fit``)."""
        self.trainer = trainer

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        """Called once when ``fit`` starts."""

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        """Called once when ``fit`` ends normally (not when it raises)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Called at the start of epoch ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Called at the end of epoch ``epoch`` with that epoch's values."""

    def on_step_end(self, step: int, logs: dict[str, float] | None = None) -> None:
        """Called after each compiled execution; ``step`` is the global step reached."""


class CallbackList:
    """Calls a list of callbacks in order; ``has_step_hooks`` says whether any overrides
    ``on_step_end`` (the Trainer skips the per-execution call otherwise)."""

    def __init__(self, callbacks: Iterable[Any], trainer: Any) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if hasattr(cb, "set_trainer"):
                cb.set_trainer(trainer)
            else:
                cb.trainer = trainer
        self.has_step_hooks = any(
            getattr(type(cb), "on_step_end", None) not in (None, Callback.on_step_end)
            for cb in self.callbacks
        )

    def _call(self, name: str, *args: Any) -> None:
        for cb in self.callbacks:
            method = getattr(cb, name, None)
            if method is not None:
                method(*args)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._call("on_train_begin", logs or {})

    def on_train_end(self, logs: dict | None = None) -> None:
        self._call("on_train_end", logs or {})

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._call("on_epoch_begin", epoch, logs or {})

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._call("on_epoch_end", epoch, logs or {})

    def on_step_end(self, step: int, logs: dict | None = None) -> None:
        if self.has_step_hooks:
            self._call("on_step_end", step, logs or {})


class History(Callback):
    """Per-epoch values of one ``fit`` call, returned by ``Trainer.fit``.

    Args:
        (none): ``fit`` creates it and fills it in.

    Attributes:
        history: ``{name: [value per epoch]}`` (floats), like Keras' ``History.history``.
        epochs: The 0-based epoch numbers run (a resumed run starts past 0).
        step: The global step when ``fit`` returned.

    Example:
        >>> h = History()
        >>> h.on_epoch_end(0, {"loss": 0.5})
        >>> h.on_epoch_end(1, {"loss": 0.25})
        >>> h["loss"], h.epochs
        ([0.5, 0.25], [0, 1])
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []
        self.step = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epochs.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.trainer is not None:
            self.step = self.trainer.global_step

    def __getitem__(self, name: str) -> list[float]:
        return self.history[name]

    def __repr__(self) -> str:
        return f"History(epochs={self.epochs}, step={self.step}, keys={sorted(self.history)})"


class EarlyStopping(Callback):
    """Stop training when a monitored value has stopped improving.

    Args:
        monitor: The logs key to watch, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (max for names containing "acc"/"auc"/
            "precision"/"recall", else min).
        patience: Epochs without improvement before stopping.
        min_delta: The smallest change that counts as an improvement.
        restore_best: At the end of training, put back the weights of the best epoch.

    Raises:
        ValueError: For an unknown ``mode`` or a negative ``patience``; ``KeyError`` at the first
            epoch end if ``monitor`` is not in the logs (the message lists the keys).

    Example:
        >>> stop = EarlyStopping(monitor="loss", patience=1)
        >>> for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.7]):
        ...     stop.on_epoch_end(epoch, {"loss": loss})
        >>> stop.stopped_epoch, stop.best
        (3, 0.5)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        mode: str = "auto",
        patience: int = 0,
        min_delta: float = 0.0,
        restore_best: bool = False,
    ) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'auto', 'min' or 'max', got {mode!r}.")
        if patience < 0:
            raise ValueError(f"EarlyStopping patience must be >= 0, got {patience}.")
        if mode == "auto":
            keys = ("acc", "auc", "precision", "recall")
            mode = "max" if any(k in monitor for k in keys) else "min"
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.min_delta, self.restore_best = abs(min_delta), restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0
        self._best_weights: list[Any] | None = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.wait, self.stopped_epoch = 0, None

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, which is not among the epoch's values "
                f"{sorted(logs)}. Pick one of those (validation values need validation_data)."
            )
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best and self.trainer is not None:
                self._best_weights = self.trainer.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            if self.trainer is not None:
                self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.restore_best and self._best_weights is not None and self.trainer is not None:
            self.trainer.set_weights(self._best_weights)


# -- console ---------------------------------------------------------------------------------

_LAST = ("steps_per_second",)


def format_duration(seconds: float) -> str:
    """``"42s"``, ``"3m05s"`` or ``"1h02m"``.

    Example:
        >>> format_duration(3.2), format_duration(185), format_duration(3725)
        ('3s', '3m05s', '1h02m')
    """
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}" if abs(value) >= 1 else f"{value:.3f}"


def format_line(epoch: int, epochs: int, step: int, logs: dict[str, Any], eta: float | None) -> str:
    """The epoch line: epoch, step, every value of ``logs``, steps/s and ETA.

    Example:
        >>> format_line(2, 10, 120, {"loss": 0.4123, "acc": 0.91, "steps_per_second": 142.3}, 3)
        'epoch 3/10 | step 120 | loss 0.412 | acc 0.910 | 142 steps/s | ETA 3s'
    """
    parts = [f"epoch {epoch + 1}/{epochs}", f"step {step}"]
    parts += [f"{k} {_number(float(v))}" for k, v in logs.items() if k not in _LAST]
    if "steps_per_second" in logs:
        parts.append(f"{logs['steps_per_second']:.0f} steps/s")
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


class ProgressPrinter(Callback):
    """Prints :func:`format_line` at every epoch end (the Trainer adds it for ``verbose > 0``)."""

    def __init__(self, epochs: int, stream: TextIO | None = None) -> None:
        super().__init__()
        self.epochs = epochs
        self.stream = stream

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        eta = None
        rate = logs.get("steps_per_second")
        remaining = getattr(self.trainer, "remaining_steps", None)
        if rate and remaining is not None:
            eta = remaining / rate
        step = self.trainer.global_step if self.trainer is not None else 0
        print(
            format_line(epoch, self.epochs, step, logs, eta),
            file=self.stream or sys.stdout,
            flush=True,
        )
