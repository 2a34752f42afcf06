"""The Trainer's own variables: counters, running sums and the RNG.

Everything here is a ``tf.Variable`` created inside the strategy scope, updated inside the
compiled step (no host round trip per step) and saved in every checkpoint, so a resumed run
continues its counters, its epoch averages and its random stream exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["RunningMeans", "TrainState"]


class RunningMeans(tf.Module):
    """Batch-size-weighted running means of named scalars (loss and ``loss_fn`` extras).

    ``add(sums, n)`` adds each value summed over a batch (mean times ``n``) to its running sum
    and ``n`` to the count; ``result()`` divides. Use it in cross-replica context with values
    reduced over all replicas.

    Example:
        >>> means = RunningMeans(["loss"])
        >>> means.add({"loss": tf.constant(8.0)}, tf.constant(4.0))
        >>> means.add({"loss": tf.constant(10.0)}, tf.constant(2.0))
        >>> {k: round(v, 3) for k, v in means.result().items()}
        {'loss': 3.0}
        >>> means.means_of([6.0, 18.0])  # what packed() holds: the count, then the sums
        {'loss': 3.0}
    """

    def __init__(self, names: Iterable[str], name: str | None = None) -> None:
        super().__init__(name=name)
        self.names = list(names)
        self.sums = {
            k: tf.Variable(0.0, trainable=False, name=f"sum_{i}") for i, k in enumerate(self.names)
        }
        self.count = tf.Variable(0.0, trainable=False, name="count")

    def add(self, sums: Mapping[str, tf.Tensor], n: tf.Tensor) -> None:
        """Accumulate ``sums`` (each a value summed over ``n`` examples)."""
        for k in self.names:
            self.sums[k].assign_add(tf.cast(sums[k], tf.float32))
        self.count.assign_add(n)

    def reset(self) -> None:
        """Set every sum and the count to zero."""
        for v in self.sums.values():
            v.assign(0.0)
        self.count.assign(0.0)

    def result(self) -> dict[str, float]:
        """The means as Python floats (NaN before anything was added): reads the device."""
        return self.means_of(self.packed())

    def packed(self) -> tf.Tensor:
        """The count and the sums as one float32 vector (in a compiled function: what
        :meth:`means_of` turns into the means on the host without reading the device)."""
        return tf.stack([tf.convert_to_tensor(v) for v in [self.count, *self.sums.values()]])

    def means_of(self, packed: Any) -> dict[str, float]:
        """The means from the count and sums :meth:`packed` returned (a vector or list)."""
        count, *sums = np.asarray(packed, np.float64).tolist()  # (one copy, not an op each)
        if count == 0:
            return {k: float("nan") for k in self.names}
        return {k: s / count for k, s in zip(self.names, sums)}


class TrainState(tf.Module):
    """Counters of one training run, saved in every checkpoint.

    Attributes:
        step: Optimizer steps done (int64).
        epoch: Completed epochs (int64).
        epoch_step: Optimizer steps done in the current (unfinished) epoch.
        position: Dataset batches consumed from the repeated training stream (int64); a resumed
            or continued run skips that many to find its place.
        data_meta: What ``position`` counts, as ``DATA_FIELDS`` (0: nothing recorded yet,
            -1: unknown), checked before a run continues at ``position``.
        data_seed: Seed of the training data shuffle, kept so a resumed run reshuffles alike.
        rng: A ``tf.random.Generator`` for the user's own randomness (``trainer.rng``).
        skipped: Steps skipped because the loss or a gradient was not finite.

    Example:
        >>> state = TrainState(seed=1)
        >>> int(state.step.numpy()), int(state.data_seed.numpy())
        (0, 1)
    """

    DATA_FIELDS = ("batch_size", "examples", "batches_per_epoch", "steps_per_epoch", "accumulate")

    def __init__(self, seed: int | None) -> None:
        super().__init__(name="train_state")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_step")
        self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="position")
        self.data_meta = tf.Variable(
            tf.zeros([len(self.DATA_FIELDS)], tf.int64), trainable=False, name="data_meta"
        )
        self.data_seed = tf.Variable(int(seed), dtype=tf.int64, trainable=False, name="data_seed")
        self.rng = tf.random.Generator.from_seed(int(seed))
        self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped")
