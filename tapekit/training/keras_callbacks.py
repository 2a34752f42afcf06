"""Keras callback objects (``keras.callbacks.*``) in ``Trainer(callbacks=[...])``.

``Trainer`` wraps each ``keras.callbacks.Callback`` in :class:`KerasCallback`, which gives it
what ``keras.Model.fit`` would: ``set_model`` with the Trainer's Keras model, ``set_params``,
``model.optimizer`` (the Trainer's optimizer, while ``fit`` runs), ``model.stop_training``
(read back after each epoch and batch hook), and the epoch ``logs`` under Keras' names
(``loss``, metric names, ``val_*``). So ``EarlyStopping``, ``ReduceLROnPlateau``,
``ModelCheckpoint``, ``CSVLogger``, ``TerminateOnNaN``, ``LambdaCallback`` and the like work.

Differences, by design: batch hooks (``on_train_batch_end``) are called once per compiled
execution with the in-epoch index of its last batch and ``logs={"loss": <epoch's running
mean>}``, and a callback that defines them makes
the Trainer run one step per execution (slower; Keras does the same with its own
``steps_per_execution``); a stop request is honoured at the epoch end. Refused at ``Trainer``
construction (with what to use instead): ``BackupAndRestore`` (use ``checkpoint_dir``),
``TensorBoard`` (use ``logdir``) and ``ProgbarLogger`` (use ``verbose``); any Keras callback
when the model is not a ``keras.Model``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from .callbacks import Callback

__all__ = ["KerasCallback", "adapt_callbacks"]

_REFUSED = {
    "BackupAndRestore": "Trainer(checkpoint_dir=...), which resumes exactly after a restart",
    "TensorBoard": "Trainer(logdir=...), which logs loss, metrics, gradients and the graph",
    "ProgbarLogger": "fit(verbose=1), the Trainer's own progress bar",
}


def _overrides(cb: Any, *names: str) -> bool:
    """True if ``cb`` defines one of the hooks (in its class or, as LambdaCallback, itself)."""
    base = keras.callbacks.Callback
    return any(n in vars(cb) or getattr(type(cb), n, None) is not getattr(base, n) for n in names)


class KerasCallback(Callback):
    """Runs one ``keras.callbacks.Callback`` inside ``Trainer.fit`` (see the module notes).

    Args:
        callback: The Keras callback.
        model: The Trainer's ``keras.Model``.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        >>> wrapped = KerasCallback(keras.callbacks.History(), model)
        >>> wrapped.callback.model is model
        True
    """

    def __init__(self, callback: keras.callbacks.Callback, model: keras.Model) -> None:
        super().__init__()
        self.callback, self.model = callback, model
        callback.set_model(model)
        self._previous_optimizer: Any = None

    def _sync_stop(self) -> None:
        if getattr(self.model, "stop_training", False) and self.trainer is not None:
            self.trainer.stop_training = True

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._previous_optimizer = getattr(self.model, "optimizer", None)
        self.model.optimizer = self.trainer.optimizer  # what ReduceLROnPlateau & co. reach for
        self.model.stop_training = False
        self.callback.set_model(self.model)
        self.callback.set_params({"verbose": 0, "epochs": None, "steps": None})
        self.callback.on_train_begin(logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.callback.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.callback.on_epoch_end(epoch, logs)
        self._sync_stop()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        self.callback.on_train_end(logs)
        if self._previous_optimizer is not None:
            self.model.optimizer = self._previous_optimizer

    def stop_message(self) -> str | None:
        """For the console: which Keras callback stopped training, and at which epoch."""
        stopped = getattr(self.callback, "stopped_epoch", 0)
        if isinstance(self.callback, keras.callbacks.EarlyStopping) and stopped:
            return (
                f"early stopping after epoch {stopped + 1}: {self.callback.monitor} did not "
                f"improve for {self.callback.wait} epoch(s) (keras.callbacks.EarlyStopping, "
                f"patience {self.callback.patience})"
            )
        return None


class _KerasBatchCallback(KerasCallback):
    """A :class:`KerasCallback` whose callback has batch hooks (called per execution)."""

    _epoch_start = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        done = self.trainer.epoch_step  # > 0 in a resumed epoch
        self._epoch_start = self.trainer.global_step - done
        super().on_epoch_begin(epoch, logs)

    def on_step_end(self, step: int, logs: dict[str, float] | None = None) -> None:
        running = self.trainer.epoch_means()  # one device read per execution
        batch = step - 1 - self._epoch_start  # Keras' index: the last batch done, in the epoch
        self.callback.on_train_batch_end(batch, {"loss": running.get("loss", float("nan"))})
        self._sync_stop()


def adapt_callbacks(callbacks: Iterable[Any], models: dict[str, Any]) -> list[Any]:
    """Wrap the Keras callbacks among ``callbacks``; refuse those that cannot work.

    Args:
        callbacks: ``Trainer(callbacks=...)``.
        models: The Trainer's ``{name: model}``; Keras callbacks need exactly one, a
            ``keras.Model``.

    Returns:
        The callbacks, each Keras one wrapped in :class:`KerasCallback`.

    Raises:
        TypeError: For a Keras callback with a model that is not a ``keras.Model``, with
            several models, or one of ``BackupAndRestore``, ``TensorBoard``,
            ``ProgbarLogger`` (the message says what to use instead).

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        >>> cbs = adapt_callbacks([keras.callbacks.TerminateOnNaN()], {"model": model})
        >>> [type(c).__name__ for c in cbs]
        ['_KerasBatchCallback']
    """
    model = next(iter(models.values())) if len(models) == 1 else None
    adapted = []
    for cb in callbacks:
        if not isinstance(cb, keras.callbacks.Callback):
            adapted.append(cb)
            continue
        name = type(cb).__name__
        for refused, instead in _REFUSED.items():
            if isinstance(cb, getattr(keras.callbacks, refused)):
                raise TypeError(
                    f"keras.callbacks.{refused} cannot drive tapekit.Trainer (it relies on "
                    f"keras.Model.fit's internals), but callbacks holds {name}. Use {instead}."
                )
        if len(models) > 1:
            raise TypeError(
                f"Keras callbacks need the Trainer to train one keras.Model (they call "
                f"set_model and read model.optimizer), but callbacks holds "
                f"keras.callbacks.{name} and the Trainer trains {len(models)} models "
                f"({', '.join(models)}). Use tapekit's callbacks (tapekit.EarlyStopping, "
                "tapekit.ReduceLROnPlateau, tapekit.BestCheckpoint, ...) instead."
            )
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"Keras callbacks need a keras.Model (they call set_model, read "
                f"model.stop_training and model.optimizer), but callbacks holds "
                f"keras.callbacks.{name} and the Trainer's model is a {type(model).__name__}. "
                "Use tapekit's callbacks (tapekit.EarlyStopping, tapekit.ReduceLROnPlateau, "
                "tapekit.LearningRateScheduler, tapekit.BestCheckpoint) instead."
            )
        batch = _overrides(cb, "on_train_batch_end", "on_batch_end")
        if isinstance(cb, keras.callbacks.ModelCheckpoint) and cb.save_freq == "epoch":
            batch = False  # its batch hook does nothing then: keep the fast multi-step calls
        adapted.append((_KerasBatchCallback if batch else KerasCallback)(cb, model))
    return adapted
