"""Checkpoints through ``tf.train.CheckpointManager``, with resume and corrupt-file fallback.

Everything that decides where training is goes into one ``tf.train.Checkpoint``: the model, the
optimizer (slots and iteration counter), the Trainer's counters and RNG state, the running
epoch averages and the Keras metrics. The data position is part of the counters: a resumed run
rebuilds the (seeded) pipeline and skips the batches already consumed, which works for every
strategy and does not store a shuffle buffer the size of the data set in each checkpoint.

Before the first step the directory is checked: it must be (or become) a writable directory,
else :class:`CheckpointError` says so at once instead of after an epoch of training; the
``ckpt-N_temp`` directories that a killed save leaves behind are removed. Each checkpoint also
records the optimizer's class: restoring an Adam checkpoint into an SGD Trainer is refused.

Restoring tries the newest checkpoint first; if it is unreadable (truncated, missing files) it
warns and falls back to the previous one, and raises :class:`CheckpointError` if none is
readable.

Under a multi-worker strategy only the chief writes to ``directory``. Every worker must still
take part in each save (reading the variables involves collectives), so the others save into a
private temporary directory that is deleted right after. On resume every worker restores from
``directory`` (so it must be storage all workers can read), and the workers check that they all
restored the same checkpoint.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
import warnings
from typing import Any

import tensorflow as tf

from ..errors import TapekitError
from .distribution import is_chief, is_multi_worker, replica_values, task_name

__all__ = ["CheckpointError", "Checkpoints", "optimizer_name"]


class CheckpointError(TapekitError, RuntimeError):
    """No checkpoint in the directory could be restored, or it belongs to another model."""


# What reading a truncated or partially written checkpoint raises, depending on the damage.
_READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, OSError, RuntimeError)


def optimizer_name(optimizer: Any) -> str:
    """The optimizer's class, with the wrapped one for a loss-scale wrapper, as recorded in
    checkpoints.

    Args:
        optimizer: A Keras optimizer.

    Returns:
        E.g. ``"Adam"`` or ``"LossScaleOptimizer(SGD)"``.

    Example:
        >>> import keras
        >>> optimizer_name(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()))
        'LossScaleOptimizer(SGD)'
    """
    inner = getattr(optimizer, "inner_optimizer", None)
    name = type(optimizer).__name__
    return f"{name}({type(inner).__name__})" if inner is not None else name


def _check_directory(directory: str) -> None:
    """Fail before training if ``directory`` is a file or cannot be created or written."""
    fix = "Pass a writable directory as checkpoint_dir (or None to train without checkpoints)."
    if tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(directory):
        raise CheckpointError(
            f"checkpoint_dir must be a directory, but {directory!r} is a file. {fix}"
        )
    probe = os.path.join(directory, f".tapekit-write-test-{os.getpid()}")
    try:
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
        raise CheckpointError(
            f"checkpoint_dir must be writable, but {directory!r} is not ({reason}). {fix}"
        ) from exc


def _remove_temp_leftovers(directory: str) -> None:
    """Delete the ``ckpt-N_temp*`` directories/files of saves that were killed midway."""
    for path in tf.io.gfile.glob(os.path.join(directory, "ckpt-*_temp*")):
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)


def _number(path: str) -> int:
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else -1


class Checkpoints:
    """Save and restore one training run.

    Args:
        directory: Where checkpoints live (created if needed).
        objects: Named trackables to save, e.g. ``{"model": m, "optimizer": opt, ...}``.
        keep: How many recent checkpoints to keep on disk.
        strategy: The distribution strategy (decides who writes where).
        meta: Strings that must be equal on restore, e.g. ``{"optimizer": "Adam"}``; a
            checkpoint written with other values raises :class:`CheckpointError`.

    Raises:
        CheckpointError: If ``directory`` is a file or cannot be created or written.

    Example:
        >>> import tempfile
        >>> v = tf.Variable(1.0)
        >>> ckpt = Checkpoints(tempfile.mkdtemp(), {"v": v}, keep=2)
        >>> _ = ckpt.save(5); _ = v.assign(7.0)
        >>> os.path.basename(ckpt.restore_latest()), float(v.numpy())
        ('ckpt-5', 1.0)
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        objects: dict[str, Any],
        *,
        keep: int = 3,
        strategy: tf.distribute.Strategy | None = None,
        meta: dict[str, str] | None = None,
    ) -> None:
        self.strategy = strategy or tf.distribute.get_strategy()
        self.directory = os.fspath(directory)
        self.is_chief = is_chief(self.strategy)
        if self.is_chief:
            _check_directory(self.directory)
            _remove_temp_leftovers(self.directory)
        self.meta = dict(meta or {})
        with tf.device("/cpu:0"):
            self._meta_vars = {
                k: tf.Variable(v, dtype=tf.string, trainable=False, name=f"meta_{k}")
                for k, v in self.meta.items()
            }
        extra = {"meta": self._meta_vars} if self._meta_vars else {}
        self.checkpoint = tf.train.Checkpoint(**objects, **extra)
        # Restores go through a Checkpoint without the record, so checkpoints written before
        # it existed still match; the record is read from the file instead (_check_meta).
        self._restorer = tf.train.Checkpoint(**objects)
        self.keep = keep
        self.manager = self._open_manager()
        self._extra: dict[str, tf.train.CheckpointManager] = {}

    def _new_manager(self, directory: str, keep: int) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=keep)

    def _open_manager(self) -> tf.train.CheckpointManager | None:
        try:
            return self._new_manager(self.directory, self.keep)
        except (tf.errors.OpError, ValueError):  # unreadable "checkpoint" state file
            if not self.is_chief:  # only the chief touches the directory; scan the files
                return None
        os.replace(
            os.path.join(self.directory, "checkpoint"),
            os.path.join(self.directory, "checkpoint.corrupt"),
        )
        warnings.warn(
            f"The checkpoint state file in {self.directory} was unreadable; "
            "moved it aside to checkpoint.corrupt and scanning for checkpoints.",
            stacklevel=3,
        )
        return self._new_manager(self.directory, self.keep)

    def candidates(self) -> list[str]:
        """Checkpoint prefixes on disk, newest first (from the state file and the index files)."""
        found = set(self.manager.checkpoints if self.manager is not None else ())
        for index in glob.glob(os.path.join(self.directory, "ckpt-*.index")):
            found.add(index[: -len(".index")])
        return sorted(found, key=_number, reverse=True)

    def latest(self) -> str | None:
        """The newest checkpoint on disk, or None."""
        found = self.candidates()
        return found[0] if found else None

    def save(self, step: int) -> str:
        """Write a checkpoint numbered ``step``; returns its path (old ones beyond ``keep`` go).

        Every worker of a cluster must call this at the same step; only the chief's copy is
        kept, the path returned is where the chief wrote it.
        """
        return self._save_with(self.manager, self.directory, step)

    def save_to(self, directory: str, step: int) -> str:
        """Write a checkpoint numbered ``step`` into ``directory``, keeping only that one
        (e.g. ``<checkpoint_dir>/best``); the run's own checkpoints are not touched.

        Every worker of a cluster must call this at the same step, as :meth:`save`.
        """
        manager = self._extra.get(directory)
        if manager is None and self.is_chief:
            _check_directory(directory)
            manager = self._extra[directory] = self._new_manager(directory, 1)
        return self._save_with(manager, directory, step)

    def _save_with(self, manager: Any, directory: str, step: int) -> str:
        if self.is_chief:
            return manager.save(checkpoint_number=step)
        name = task_name(self.strategy).replace(" ", "")
        scratch = tempfile.mkdtemp(prefix=f"tapekit-checkpoint-{name}-")
        try:
            self._new_manager(scratch, 1).save(checkpoint_number=step)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return os.path.join(directory, f"ckpt-{step}")

    def restore_latest(self) -> str | None:
        """Restore the newest readable checkpoint; ``None`` if the directory holds none.

        Under a multi-worker strategy every worker must call this at the same time.

        Raises:
            CheckpointError: If checkpoints exist but none can be read, they were written for a
                different model/optimizer, or the workers of a cluster restored different
                checkpoints.
        """
        path = self._restore_newest()
        if is_multi_worker(self.strategy):
            self._check_workers_agree(path)
        return path

    def _check_meta(self, path: str) -> None:
        """Refuse a checkpoint whose recorded ``meta`` differs (one without a record passes)."""
        reader = tf.train.load_checkpoint(path)
        for k in self.meta:
            key = f"meta/{k}/.ATTRIBUTES/VARIABLE_VALUE"
            if not reader.has_tensor(key):
                continue
            found = reader.get_tensor(key)
            found = found.decode() if isinstance(found, bytes) else str(found)
            if found != self.meta[k]:
                raise CheckpointError(
                    f"The checkpoint {path} was written with {k} {found}, but this Trainer "
                    f"uses {self.meta[k]}; its {k} state would not be restored. Use the same "
                    f"{k} to resume, or a new checkpoint_dir (or delete the old checkpoints) "
                    "to start afresh."
                )

    def _check_workers_agree(self, path: str | None) -> None:
        steps = sorted(set(replica_values(self.strategy, _number(path) if path else -1)))
        if len(steps) > 1:
            seen = ", ".join(f"ckpt-{s}" if s >= 0 else "none" for s in reversed(steps))
            found = os.path.basename(path) if path else "no checkpoint"
            raise CheckpointError(
                "Every worker must resume from the same checkpoint, but the workers restored "
                f"different ones ({seen}); this is {task_name(self.strategy)}, which found "
                f"{found} in {self.directory}. Put checkpoint_dir on storage every worker reads "
                "(a shared filesystem or gs://...) under the same path on every host, or delete "
                "the checkpoints to start afresh."
            )

    def _restore_newest(self) -> str | None:
        candidates = self.candidates()
        errors = []
        for path in candidates:
            try:
                self._check_meta(path)
                status = self._restorer.restore(path)
            except CheckpointError:
                raise
            except _READ_ERRORS as exc:
                if isinstance(exc, ValueError) and "shape" in str(exc):
                    raise CheckpointError(
                        f"The checkpoint {path} does not match this Trainer's model/optimizer "
                        f"({str(exc).splitlines()[0][:200]}). Use a new checkpoint_dir for a "
                        "different model, or delete the old checkpoints."
                    ) from exc
                errors.append(f"{os.path.basename(path)}: {type(exc).__name__}: {exc}".strip())
                warnings.warn(
                    f"Checkpoint {path} could not be read ({type(exc).__name__}); it is corrupt "
                    "or partially written. Falling back to the previous checkpoint.",
                    stacklevel=2,
                )
                continue
            try:
                status.assert_existing_objects_matched()
                status.expect_partial()  # the meta record is read from the file, not restored
            except AssertionError as exc:
                raise CheckpointError(
                    f"The checkpoint {path} does not match this Trainer's model/optimizer "
                    f"({str(exc).splitlines()[0][:200]}). Use a new checkpoint_dir for a "
                    "different model, or delete the old checkpoints."
                ) from exc
            return path
        if candidates:
            detail = "; ".join(e.splitlines()[0][:160] for e in errors)
            raise CheckpointError(
                f"None of the {len(candidates)} checkpoint(s) in {self.directory} could be "
                f"restored ({detail}). Delete the directory to start afresh, or point "
                "checkpoint_dir elsewhere."
            )
        return None
