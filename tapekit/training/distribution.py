"""The Trainer under ``tf.distribute``, and what it needs to know about its strategy.

``Trainer(..., strategy=...)`` takes any ``tf.distribute.Strategy``: the default one,
``MirroredStrategy`` (the devices of one machine) or ``MultiWorkerMirroredStrategy`` (a cluster
described by ``TF_CONFIG``). Build the model with a factory (``Trainer(model=build_model)``) or
inside ``strategy.scope()``; variables created outside are refused with an error saying so.
Each batch of the data is a GLOBAL batch: the strategy splits it over the replicas, each
replica's loss is weighted by its share of the global batch, gradients are clipped after they
are aggregated, and the reported loss and metrics are reduced over all replicas (see
:mod:`tapekit.training.step`), so training matches one device with the same global batch.

A multi-worker cluster runs the same program in every worker process; create the strategy
before anything else runs in TensorFlow. The workers must all take part in every collective
(gradient all-reduce, reading metrics, saving checkpoints), but only one of them, the *chief*,
writes checkpoints, TensorBoard logs and console lines where the user asked: the task of type
``"chief"`` if the cluster has one, else worker 0. On resume every worker restores from
``checkpoint_dir``, which must be storage all of them read. ``MirroredStrategy`` and the default
strategy run in one process, which is always the chief.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["first_local", "is_chief", "is_multi_worker", "replica_values", "task_name"]


def _cluster(strategy: tf.distribute.Strategy) -> dict:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver.cluster_spec().as_dict() if resolver is not None else {}


def first_local(strategy: tf.distribute.Strategy, value: Any) -> Any:
    """The first local replica's component of each per-replica or mirrored value in ``value``.

    Use it on values every replica holds equally (all-reduced): it picks one copy.

    Example:
        >>> first_local(tf.distribute.get_strategy(), {"a": 1.0})
        {'a': 1.0}
    """
    if strategy.num_replicas_in_sync == 1:
        return value
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` spans several processes (a ``TF_CONFIG`` cluster of 2+ tasks).

    Example:
        >>> is_multi_worker(tf.distribute.get_strategy())
        False
    """
    cluster = _cluster(strategy)
    return sum(len(cluster.get(kind, ())) for kind in ("chief", "worker")) > 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and summaries (the chief, or worker 0).

    Example:
        >>> is_chief(tf.distribute.get_strategy())
        True
    """
    cluster = _cluster(strategy)
    if not cluster:
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def task_name(strategy: tf.distribute.Strategy) -> str:
    """``"worker 1"``-style name of this process in its cluster (``"chief"`` for one process).

    Example:
        >>> task_name(tf.distribute.get_strategy())
        'chief'
    """
    if not _cluster(strategy):
        return "chief"
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type} {resolver.task_id}"


def replica_values(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """``value`` as given by every replica of every worker, in replica order.

    Under a multi-worker strategy this is a collective (an all-gather): every worker must call
    it at the same point of the program, each with its own ``value``.

    Args:
        strategy: The strategy whose replicas exchange the value.
        value: This process's integer.

    Returns:
        One integer per replica (``num_replicas_in_sync`` of them).

    Example:
        >>> replica_values(tf.distribute.get_strategy(), 7)
        [7]
    """
    if strategy.num_replicas_in_sync == 1:
        return [int(value)]

    def gather() -> tf.Tensor:
        local = tf.constant([int(value)], tf.int64)
        return tf.distribute.get_replica_context().all_gather(local, axis=0)

    with strategy.scope():
        gathered = tf.function(lambda: strategy.run(gather))()
    return [int(v) for v in strategy.experimental_local_results(gathered)[0].numpy()]
