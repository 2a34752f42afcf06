"""Checkpoints through ``tf.train.CheckpointManager``, with resume and corrupt-file fallback.

Everything that decides where training is goes into one ``tf.train.Checkpoint``: the model, the
optimizer (slots and iteration counter), the Trainer's counters and RNG state, the running
epoch averages and the Keras metrics. The data position is part of the counters: a resumed run
rebuilds the (seeded) pipeline and skips the batches already consumed, which works for every
strategy and does not store a shuffle buffer the size of the data set in each checkpoint.

Restoring tries the newest checkpoint first; if it is unreadable (truncated, missing files) it
warns and falls back to the previous one, and raises :class:`CheckpointError` if none is
readable. Only the chief writes to ``directory``; other workers write to a private temporary
directory (see :func:`tapekit.training.data.writable_dir`).
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from typing import Any

import tensorflow as tf

from ..errors import TapekitError
from .data import is_chief, writable_dir

__all__ = ["CheckpointError", "Checkpoints"]


class CheckpointError(TapekitError, RuntimeError):
    """No checkpoint in the directory could be restored, or it belongs to another model."""


# What reading a truncated or partially written checkpoint raises, depending on the damage.
_READ_ERRORS = (tf.errors.OpError, ValueError, IndexError, OSError, RuntimeError)


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
    ) -> None:
        strategy = strategy or tf.distribute.get_strategy()
        self.requested = os.fspath(directory)
        self.is_chief = is_chief(strategy)
        self.directory = writable_dir(directory, strategy, "checkpoints")
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.keep = keep
        try:
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, self.directory, max_to_keep=keep
            )
        except (tf.errors.OpError, ValueError):  # unreadable "checkpoint" state file
            os.replace(
                os.path.join(self.directory, "checkpoint"),
                os.path.join(self.directory, "checkpoint.corrupt"),
            )
            warnings.warn(
                f"The checkpoint state file in {self.directory} was unreadable; "
                "moved it aside to checkpoint.corrupt and scanning for checkpoints.",
                stacklevel=2,
            )
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, self.directory, max_to_keep=keep
            )

    def candidates(self) -> list[str]:
        """Checkpoint prefixes on disk, newest first (from the state file and the index files)."""
        found = set(self.manager.checkpoints)
        for index in glob.glob(os.path.join(self.directory, "ckpt-*.index")):
            found.add(index[: -len(".index")])
        return sorted(found, key=_number, reverse=True)

    def save(self, step: int) -> str:
        """Write a checkpoint numbered ``step``; returns its path (old ones beyond ``keep`` go)."""
        return self.manager.save(checkpoint_number=step)

    def restore_latest(self) -> str | None:
        """Restore the newest readable checkpoint; ``None`` if the directory holds none.

        Raises:
            CheckpointError: If checkpoints exist but none can be read, or they were written
                for a different model/optimizer.
        """
        candidates = self.candidates()
        errors = []
        for path in candidates:
            try:
                status = self.checkpoint.restore(path)
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
