"""Turning user data into ``tf.data`` pipelines, and where a distributed run keeps its data.

The Trainer accepts a ``tf.data.Dataset`` or anything ``Dataset.from_tensor_slices`` understands
(an array, a tuple/dict of arrays). The training stream of arrays (:func:`array_stream`) is
pass after pass, each in a stateless seeded order of its own and batched with one partial last
batch, so any position is reached by skipping batch indices within one pass (that is how a
resumed run finds its place). ``distribute`` hands the stream to the strategy: each global
batch is split over the replicas (and, under ``MultiWorkerMirroredStrategy``, auto-sharded by
data over the workers, every worker building the same seeded pipeline).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from ..errors import describe_received
from .distribution import is_multi_worker

__all__ = [
    "array_stream",
    "as_dataset",
    "check_arrays",
    "count_batches",
    "distribute",
    "example_count",
    "leading_size",
    "relaxed_spec",
    "steps_per_epoch",
    "validation_batch_size",
]


def _leaves(data: Any) -> list[Any]:
    return tf.nest.flatten(data)


def check_arrays(data: Any, batch_size: int | None, argument: str = "data") -> None:
    """Raise the error :func:`as_dataset` raises for array ``data`` it cannot batch.

    Args:
        data: An array or a nest of arrays.
        batch_size: Examples per batch.
        argument: The argument's name, for error messages.

    Raises:
        ValueError: If ``batch_size`` is missing or the arrays' first dimensions differ.
        TypeError: If ``data`` holds no arrays, or arrays without a leading dimension.

    Example:
        >>> check_arrays((np.zeros((5, 2)), np.ones(5)), 2)  # fine: nothing happens
    """
    if batch_size is None or int(batch_size) < 1:
        raise ValueError(
            f"`{argument}` holds arrays, so `batch_size` must be a positive int, but received "
            f"batch_size={batch_size!r}. Pass e.g. batch_size=32."
        )
    leaves = _leaves(data)
    if not leaves:
        raise TypeError(f"`{argument}` is empty ({describe_received(data)}); pass arrays.")
    try:
        sizes = {int(np.shape(x)[0]) for x in leaves}
    except (IndexError, TypeError) as exc:
        raise TypeError(
            f"`{argument}` must be arrays with a leading example dimension (or a tf.data.Dataset), "
            f"but received {describe_received(data)}."
        ) from exc
    if len(sizes) != 1:
        raise ValueError(
            f"All arrays in `{argument}` need the same number of examples (first dimension), but "
            f"received sizes {sorted(sizes)}. Check that inputs and labels match."
        )


def as_dataset(
    data: Any,
    *,
    batch_size: int | None,
    argument: str = "data",
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` from ``data`` (not repeated, in the data's order; the
    training stream of arrays, shuffled, is :func:`array_stream`).

    Args:
        data: A ``tf.data.Dataset`` (used as it is: it must already be batched), or an array /
            tensor, or a tuple / list / dict (nested) of them with equal first dimensions.
        batch_size: Examples per batch for array data; must be ``None`` for a Dataset.
        argument: The argument's name, for error messages.

    Returns:
        A dataset whose elements have a leading batch dimension of unknown size (``None``).

    Raises:
        ValueError: If ``batch_size`` is missing for arrays or given for a Dataset, or the
            arrays' first dimensions differ.
        TypeError: If ``data`` cannot be turned into a dataset.

    Example:
        >>> ds = as_dataset((np.zeros((5, 2)), np.ones(5)), batch_size=2)
        >>> [int(x.shape[0]) for x, _ in ds]
        [2, 2, 1]
    """
    if isinstance(data, tf.data.Dataset):
        if batch_size is not None:
            raise ValueError(
                f"`batch_size` applies to array data only, but `{argument}` is a tf.data.Dataset "
                f"and batch_size={batch_size} was given. Batch the dataset yourself "
                f"(dataset.batch({batch_size})) and drop batch_size."
            )
        return data
    if isinstance(data, tf.distribute.DistributedDataset):
        raise TypeError(
            f"`{argument}` is already a distributed dataset; pass the plain tf.data.Dataset: the "
            "Trainer distributes it with its own strategy."
        )
    check_arrays(data, batch_size, argument)
    return tf.data.Dataset.from_tensor_slices(data).batch(int(batch_size))


def array_stream(
    data: Any, *, batch_size: int, shuffle: bool, seed: int, start: int = 0
) -> tf.data.Dataset:
    """The training stream of array ``data``: pass after pass, from batch ``start`` on.

    Pass ``p`` is the examples in the order of a stateless permutation drawn from ``(seed, p)``
    alone (or in their order, without ``shuffle``), cut into batches of ``batch_size`` with one
    partial last batch. So any position is reached by skipping within its own pass, and only
    the batches' indices are skipped: a resume or a continued ``fit`` costs the same after 1
    epoch as after 1000, and no shuffle buffer copies the data.

    Args:
        data: An array or a nest of arrays with equal first dimensions (as :func:`as_dataset`),
            or ``tf.data.Dataset.from_tensors`` of them (converted once by the caller).
        batch_size: Examples per batch.
        shuffle: Shuffle each pass.
        seed: The shuffle's seed (the Trainer's ``data_seed``).
        start: Batches of the stream to leave out (the data position).

    Returns:
        An infinite ``tf.data.Dataset`` of batches, leading dimension ``None``.

    Example:
        >>> s = array_stream(np.arange(5), batch_size=2, shuffle=False, seed=0, start=2)
        >>> [b.numpy().tolist() for b in s.take(4)]
        [[4], [0, 1], [2, 3], [4]]
    """
    whole = data if isinstance(data, tf.data.Dataset) else tf.data.Dataset.from_tensors(data)
    n = int(tf.nest.flatten(whole.element_spec)[0].shape[0])
    first, offset = divmod(int(start), -(-n // int(batch_size)))
    seed = tf.constant(int(seed), tf.int64)

    def one_pass(p: tf.Tensor) -> tf.data.Dataset:
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([seed, p]))
        return tf.data.Dataset.from_tensor_slices(order).batch(int(batch_size))

    stream = tf.data.Dataset.range(first, np.iinfo(np.int64).max).flat_map(one_pass)
    if offset:
        stream = stream.skip(offset)
    # The arrays enter as the dataset's input (one element, repeated by reference), not as a
    # capture of the gather function: a captured tensor would be copied into every new
    # pipeline's function and kept with it.
    batches = tf.data.Dataset.zip((stream, whole.repeat())).map(
        lambda idx, t: tf.nest.map_structure(lambda a: tf.gather(a, idx), t)
    )
    return batches.prefetch(2)  # the next batches are gathered while a step runs


def count_batches(dataset: tf.data.Dataset) -> int:
    """Batches in one pass over ``dataset``: its cardinality, counted once if unknown.

    Returns ``-1`` for an infinite dataset.

    Example:
        >>> count_batches(tf.data.Dataset.range(10).batch(3)), count_batches(
        ...     tf.data.Dataset.range(3).repeat())
        (4, -1)
    """
    batches = int(dataset.cardinality())
    if batches == tf.data.INFINITE_CARDINALITY:
        return -1
    if batches == tf.data.UNKNOWN_CARDINALITY:  # e.g. after filter(): count once
        batches = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    return batches


def example_count(data: Any) -> int:
    """Examples in array ``data`` (first dimension); ``-1`` for a ``tf.data.Dataset``.

    Example:
        >>> example_count((np.zeros((5, 2)), np.ones(5))), example_count(tf.data.Dataset.range(2))
        (5, -1)
    """
    if isinstance(data, tf.data.Dataset):
        return -1
    return int(np.shape(_leaves(data)[0])[0])


def steps_per_epoch(
    dataset: tf.data.Dataset | None,
    requested: int | None,
    accumulate: int,
    batches: int | None = None,
) -> int:
    """Optimizer steps in one epoch of ``dataset`` (each step uses ``accumulate`` batches).

    Args:
        dataset: The batched (not yet repeated) dataset, or None (a step without data).
        requested: The user's ``steps_per_epoch``, or ``None`` for one pass over the data.
        accumulate: Batches per optimizer step.
        batches: The dataset's batches per pass if already known (see :func:`count_batches`).

    Returns:
        The number of steps (at least 1).

    Raises:
        ValueError: If the dataset is infinite and ``requested`` is ``None``, or too short.

    Example:
        >>> steps_per_epoch(tf.data.Dataset.range(10).batch(3), None, 2)
        2
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)):
            raise ValueError(f"steps_per_epoch must be an int >= 1, but received {requested!r}.")
        if int(requested) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, but received {requested!r}.")
        return int(requested)
    if dataset is None:
        raise ValueError("Without data, pass steps_per_epoch=N.")
    if batches is None or batches == tf.data.UNKNOWN_CARDINALITY:
        batches = count_batches(dataset)
    if batches == -1:
        raise ValueError(
            "The training dataset repeats forever, so an epoch has no natural end. Pass "
            "steps_per_epoch=..., or remove the .repeat()."
        )
    if batches < accumulate:
        raise ValueError(
            f"An epoch needs at least accumulate_steps={accumulate} batches, but the dataset has "
            f"{batches}. Use a smaller batch_size or accumulate_steps."
        )
    return batches // accumulate


def validation_batch_size(data: Any, requested: int | None, train: int | None) -> int | None:
    """The batch size for validation ``data``: None for a Dataset, else ``requested`` or the
    training batch size.

    Example:
        >>> validation_batch_size(np.zeros(4), None, 16), validation_batch_size(
        ...     tf.data.Dataset.range(2), 8, 16)
        (16, None)
    """
    if isinstance(data, tf.data.Dataset):
        return None
    return requested or train


def relaxed_spec(spec: Any) -> Any:
    """``spec`` (a nest of ``tf.TensorSpec``) with the leading (batch) dimension set to ``None``.

    Example:
        >>> relaxed_spec(tf.TensorSpec([32, 3], tf.float32))
        TensorSpec(shape=(None, 3), dtype=tf.float32, name=None)
    """

    def relax(s: Any) -> Any:
        if isinstance(s, tf.TensorSpec) and s.shape.rank:
            return tf.TensorSpec([None, *s.shape[1:]], s.dtype)
        return s

    return tf.nest.map_structure(relax, spec)


def leading_size(batch: Any) -> tf.Tensor:
    """The number of examples in a batch (first dimension of its first tensor), as float32."""
    first = tf.nest.flatten(batch)[0]
    return tf.cast(tf.shape(first)[0], tf.float32)


def distribute(dataset: tf.data.Dataset, strategy: tf.distribute.Strategy) -> Any:
    """``strategy.experimental_distribute_dataset(dataset)``; the dataset itself on one replica.

    Each element of ``dataset`` is a GLOBAL batch: the strategy splits it over the replicas
    (a partial last batch too; a replica may get no example, which the step handles).
    """
    if strategy.num_replicas_in_sync == 1 and not is_multi_worker(strategy):
        return dataset
    return strategy.experimental_distribute_dataset(dataset)
