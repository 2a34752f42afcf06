"""``BestCheckpoint``: keep the checkpoint of the best epoch besides the last ones.

Keras' ``ModelCheckpoint(save_best_only=True)`` for the Trainer: at each epoch end whose
monitored value improves on the best so far, the whole training state (the same
``tf.train.Checkpoint`` as the run's own checkpoints) is written to ``<checkpoint_dir>/best``
(only the newest best is kept) and ``best.json`` beside it records the value, epoch and step.
The record is read back when training starts, so a resumed run does not overwrite a better
checkpoint with a worse one. The run's own ``ckpt-N`` checkpoints (which resume uses) are not
affected. To load the best weights into a model::

    tf.train.Checkpoint(model=model).restore(best.path).expect_partial()
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import tensorflow as tf

from .callbacks import Callback, monitor_mode, monitor_value
from .distribution import is_chief

__all__ = ["BestCheckpoint"]


class BestCheckpoint(Callback):
    """Save the training state of the epoch with the best ``monitor`` value.

    Args:
        monitor: The logs key, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: "auto", "min" or "max" (see :func:`tapekit.training.callbacks.monitor_mode`).
        min_delta: The smallest change that counts as an improvement.
        subdir: The directory inside ``checkpoint_dir`` for the best checkpoint.

    Attributes:
        best: The best value so far (None before the first epoch end).
        path: The best checkpoint's path prefix (None before the first save).

    Raises:
        ValueError: When ``fit`` starts, if the Trainer has no ``checkpoint_dir``.

    Example:
        >>> import keras, numpy as np, tempfile, tapekit
        >>> w = tf.Variable(0.0)
        >>> best = BestCheckpoint("loss")
        >>> trainer = tapekit.Trainer(w, lambda w, b: tf.reduce_mean((w - b) ** 2),
        ...     optimizer=keras.optimizers.SGD(0.1), checkpoint_dir=tempfile.mkdtemp(),
        ...     callbacks=[best], logdir=False)
        >>> _ = trainer.fit(np.ones(8, "float32"), epochs=3, batch_size=4, verbose=0)
        >>> os.path.basename(best.path), round(best.best, 3)
        ('ckpt-6', 0.138)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        mode: str = "auto",
        min_delta: float = 0.0,
        subdir: str = "best",
    ) -> None:
        super().__init__()
        self.monitor, self.mode, self.min_delta = monitor, monitor_mode(monitor, mode), min_delta
        self.subdir = subdir
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.path: str | None = None

    @property
    def directory(self) -> str:
        """``<checkpoint_dir>/<subdir>``."""
        return os.path.join(self.trainer.checkpoint_dir, self.subdir)

    def set_trainer(self, trainer: Any) -> None:
        if trainer.checkpoint_dir is None:
            raise ValueError(
                "BestCheckpoint needs Trainer(checkpoint_dir=...), but checkpoint_dir is None. "
                "Pass a checkpoint_dir, or drop the callback."
            )
        super().set_trainer(trainer)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        record = os.path.join(self.directory, "best.json")
        self.best = self.best_epoch = self.path = None
        if tf.io.gfile.exists(record):  # a resumed run keeps the earlier best
            with tf.io.gfile.GFile(record) as f:
                saved = json.load(f)
            if saved.get("monitor") == self.monitor:
                self.best, self.best_epoch = float(saved["value"]), int(saved["epoch"])
                self.path = saved.get("path")

    def _improved(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best):
            return not math.isnan(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        value = monitor_value("BestCheckpoint", self.monitor, logs)
        if not self._improved(value):
            return
        step = self.trainer.global_step
        self.path = self.trainer.checkpoints.save_to(self.directory, step)
        self.best, self.best_epoch = value, epoch
        if is_chief(self.trainer.strategy):
            record = {"monitor": self.monitor, "value": value, "epoch": epoch, "step": step}
            with tf.io.gfile.GFile(os.path.join(self.directory, "best.json"), "w") as f:
                json.dump({**record, "path": self.path}, f)
