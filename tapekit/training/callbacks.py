"""The callback protocol, with the built-in History and EarlyStopping.

A callback is any object with some of the methods of :class:`Callback` (missing ones are
skipped). ``logs`` are dicts of Python floats: ``loss``, the extras of ``loss_fn``, every metric,
``val_``-prefixed validation values, ``steps_per_second``. ``on_step_end`` is called after each
compiled execution (every ``steps_per_execution`` steps) and only when some callback defines it,
so the hot loop stays free of Python work otherwise; its ``logs`` hold ``step`` only (reading
the loss would cost a device round trip; read ``trainer`` state if you need it).

The console printer (:mod:`tapekit.training.progress`) is an ordinary callback the Trainer adds
when ``verbose > 0``. ``EarlyStopping`` follows ``keras.callbacks.EarlyStopping`` (same stopping
epoch, same restored weights); :func:`monitor_mode` is the "auto" mode shared by the callbacks
that watch a value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "monitor_mode",
    "monitor_value",
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

    def next_step_end(self, step: int) -> int | None:
        """The next global step (after ``step``) whose end ``on_step_end`` must see, or None.

        A callback that overrides ``on_step_end`` makes the Trainer run one step per compiled
        call (when ``steps_per_execution`` is automatic), so that it sees every step. One that
        needs only some steps says which here, and the Trainer keeps running many steps per
        call, ending a call exactly at each step asked for (as it does for
        ``checkpoint_every``). ``tapekit.CurvatureMonitor`` does this. In a multi-worker
        cluster every worker must ask for the same steps (decide from ``step``, not from
        being the chief).

        Args:
            step: The global step reached so far.

        Returns:
            A step > ``step``, or None (the default): every step.

        Example:
            >>> class EveryHundred(Callback):
            ...     def on_step_end(self, step, logs=None):
            ...         print("at", step) if step % 100 == 0 else None
            ...     def next_step_end(self, step):
            ...         return (step // 100 + 1) * 100
            >>> EveryHundred().next_step_end(250)
            300
        """
        return None


def _overrides(cb: Any, method: str) -> bool:
    """Whether ``cb``'s class defines ``method`` other than the base ``Callback``'s no-op."""
    return getattr(type(cb), method, None) not in (None, getattr(Callback, method))


class CallbackList:
    """Calls a list of callbacks in order; ``has_step_hooks`` says whether any overrides
    ``on_step_end`` (the Trainer skips the per-execution call otherwise), ``every_step``
    whether one of those needs every step's end (it does not override ``next_step_end``)."""

    def __init__(self, callbacks: Iterable[Any], trainer: Any) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if hasattr(cb, "set_trainer"):
                cb.set_trainer(trainer)
            else:
                cb.trainer = trainer
        hooked = [cb for cb in self.callbacks if _overrides(cb, "on_step_end")]
        self.has_step_hooks = bool(hooked)
        self._scheduled = [cb for cb in hooked if _overrides(cb, "next_step_end")]
        self.every_step = len(self._scheduled) < len(hooked)

    def next_step_end(self, step: int) -> int | None:
        """The earliest step after ``step`` that a scheduled step callback asks to see."""
        due = [cb.next_step_end(step) for cb in self._scheduled]
        due = [int(d) for d in due if d is not None and d > step]
        return min(due) if due else None

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


def monitor_mode(monitor: str, mode: str) -> str:
    """Resolve ``mode`` ("auto", "min" or "max") for the logs key ``monitor``.

    "auto" is "max" for names containing acc/auc/precision/recall/f1 and "min" otherwise.

    Args:
        monitor: The logs key, e.g. ``"val_loss"``.
        mode: "auto", "min" or "max".

    Returns:
        "min" or "max".

    Raises:
        ValueError: For another ``mode``.

    Example:
        >>> monitor_mode("val_acc", "auto"), monitor_mode("val_loss", "auto")
        ('max', 'min')
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}.")
    if mode == "auto":
        keys = ("acc", "auc", "precision", "recall", "f1")
        return "max" if any(k in monitor for k in keys) else "min"
    return mode


def monitor_value(owner: str, monitor: str, logs: dict[str, float] | None) -> float:
    """``logs[monitor]`` as a float, or a ``KeyError`` that lists the keys there are.

    Args:
        owner: The callback's name, for the message.
        monitor: The key.
        logs: The epoch's values.

    Returns:
        The value.

    Raises:
        KeyError: If ``monitor`` is not in ``logs``.

    Example:
        >>> monitor_value("EarlyStopping", "loss", {"loss": 0.5})
        0.5
    """
    logs = logs or {}
    if monitor not in logs:
        raise KeyError(
            f"{owner} monitors {monitor!r}, which is not among the epoch's values "
            f"{sorted(logs)}. Pick one of those (validation values need validation_data)."
        )
    return float(logs[monitor])


class EarlyStopping(Callback):
    """Stop training when a monitored value has stopped improving, as Keras' ``EarlyStopping``.

    Each epoch end without improvement adds one to ``wait``; an improvement resets it to 0; when
    ``wait >= patience`` (and the epoch is not the first) training stops after this epoch. So
    ``patience=2`` stops after two epochs in a row without improvement, at the same epoch as
    ``keras.callbacks.EarlyStopping(patience=2)`` in ``keras.Model.fit``. The state is reset in
    ``on_train_begin``, so one object can serve several ``fit`` calls (it is not checkpointed:
    after a resume, patience counts from the resumed epoch, as with Keras' ``BackupAndRestore``).

    Args:
        monitor: The logs key to watch, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (see :func:`monitor_mode`).
        patience: Epochs without improvement before stopping.
        min_delta: The smallest change that counts as an improvement.
        restore_best_weights: At the end of training, put back the weights of the best epoch
            (Keras' name).
        restore_best: Alias of ``restore_best_weights``.
        baseline: Training stops unless the value beats this within ``patience`` epochs.
        start_from_epoch: Epochs to wait before watching at all.

    Raises:
        ValueError: For an unknown ``mode`` or a negative ``patience``; ``KeyError`` at the first
            epoch end if ``monitor`` is not in the logs (the message lists the keys).

    Example:
        >>> stop = EarlyStopping(monitor="loss", patience=1)
        >>> stop.on_train_begin()
        >>> for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.7]):
        ...     stop.on_epoch_end(epoch, {"loss": loss})
        ...     if stop.stopped_epoch is not None:
        ...         break
        >>> stop.stopped_epoch, stop.best, stop.best_epoch
        (2, 0.5, 1)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        mode: str = "auto",
        patience: int = 0,
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
        restore_best: bool | None = None,
        baseline: float | None = None,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping patience must be an int >= 0, got {patience!r}.")
        self.monitor, self.mode = monitor, monitor_mode(monitor, mode)
        self.patience, self.min_delta = patience, abs(min_delta)
        self.restore_best = restore_best_weights if restore_best is None else restore_best
        self.baseline, self.start_from_epoch = baseline, start_from_epoch
        self.on_train_begin()

    @property
    def restore_best_weights(self) -> bool:
        """Keras' name of ``restore_best``."""
        return self.restore_best

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.wait = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._best_weights: list[Any] | None = None

    def _improved(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        value = monitor_value("EarlyStopping", self.monitor, logs)
        if epoch < self.start_from_epoch:
            return
        weights = self.restore_best and self.trainer is not None
        if weights and self._best_weights is None:  # as Keras: the first epoch is the fallback
            self._best_weights, self.best_epoch = self.trainer.get_weights(), epoch
        self.wait += 1
        if self._improved(value, self.best):
            self.best, self.best_epoch = value, epoch
            if weights:
                self._best_weights = self.trainer.get_weights()
            if self.baseline is None or self._improved(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            if self.trainer is not None:
                self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.restore_best and self._best_weights is not None and self.trainer is not None:
            self.trainer.set_weights(self._best_weights)

    def stop_message(self) -> str | None:
        """Why training stopped (None if this callback did not stop it); the console prints it."""
        if self.stopped_epoch is None:
            return None
        best = ""
        if self.best is not None and self.best_epoch is not None:
            best = f", best {self.best:.4g} at epoch {self.best_epoch + 1}"
        restored = "; restored the weights of that epoch" if self.restore_best else ""
        return (
            f"early stopping after epoch {self.stopped_epoch + 1}: {self.monitor} did not improve "
            f"for {self.wait} epoch(s) (patience {self.patience}{best}){restored}"
        )
