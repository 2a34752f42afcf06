"""Calling the user's ``loss_fn`` and feeding Keras metrics: the documented hooks.

``loss_fn(model, batch)`` returns a scalar loss, or ``(loss, extras)`` where ``extras`` is a dict
of scalars to report (averaged like the loss). Two reserved keys of ``extras``, ``"y_true"`` and
``"y_pred"``, are not reported: when both are present they feed the Keras metrics, so metrics
need no second forward pass. If ``loss_fn`` has a ``training`` parameter it receives
``training=True`` in ``fit``/``step`` and ``training=False`` in ``evaluate``.

Metrics receive ``(y_true, y_pred)`` from, in this order: ``metrics_fn(model, batch)`` if given,
the reserved extras above, or, for a batch ``(x, y, ...)`` and a callable model,
``(y, model(x, training=False))``.

``"accuracy"`` / ``"acc"`` resolve as in ``keras.Model.compile``, from the shapes of the first
``(y_true, y_pred)``: binary accuracy when ``y_pred`` has a last dimension of 1, sparse
categorical accuracy when the labels are integer class ids (lower rank, or a last dimension of
1), categorical accuracy otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from .. import _compile
from .._args import fn_name
from ..errors import describe_received

__all__ = ["LossCall", "resolve_metrics"]

_TARGETS = ("y_true", "y_pred")
_ACCURACY = ("accuracy", "acc")


class _PendingAccuracy:
    """``"accuracy"`` until the shapes of ``(y_true, y_pred)`` are known (see module doc)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shapes: tuple | None = None

    def resolve(self) -> keras.metrics.Metric:
        y_true, y_pred = self.shapes
        if y_pred[-1] == 1:
            return keras.metrics.BinaryAccuracy(name=self.name)
        if len(y_true) < len(y_pred) or (y_true[-1] == 1 and (y_pred[-1] or 0) > 1):
            return keras.metrics.SparseCategoricalAccuracy(name=self.name)
        return keras.metrics.CategoricalAccuracy(name=self.name)


def resolve_metrics(
    metrics: Sequence[Any], strategy: tf.distribute.Strategy
) -> list[keras.metrics.Metric]:
    """Keras metric objects from names or instances, made inside ``strategy.scope()``.

    ``"accuracy"``/``"acc"`` stay pending until :meth:`LossCall.resolve_pending` knows the
    shapes of the targets (as ``keras.Model.compile`` resolves them).

    Under a multi-replica strategy, instances created outside the scope are re-created inside
    it from their config (the originals are not updated).

    Example:
        >>> [m.name for m in resolve_metrics(["mae"], tf.distribute.get_strategy())]
        ['mean_absolute_error']
    """
    out = []
    with strategy.scope():
        for m in metrics:
            if isinstance(m, str) and m.lower() in _ACCURACY:
                out.append(_PendingAccuracy(m))
                continue
            if isinstance(m, str):
                obj = keras.metrics.get(m)
                if not isinstance(obj, keras.metrics.Metric):
                    obj = keras.metrics.MeanMetricWrapper(obj, name=m)
                out.append(obj)
            elif isinstance(m, keras.metrics.Metric):
                created_in = [
                    strategy.extended.variable_created_in_scope(v.value) for v in m.variables
                ]
                if strategy.num_replicas_in_sync > 1 and not all(created_in):
                    m = type(m).from_config(m.get_config())
                out.append(m)
            else:
                raise TypeError(
                    "Trainer `metrics` must be Keras metrics or their names (e.g. 'accuracy'), "
                    f"but received {describe_received(m)}. Report other values from loss_fn "
                    "as (loss, {name: value})."
                )
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"Trainer metrics need unique names, but received {names}.")
    return out


class LossCall:
    """Calls ``loss_fn`` (and the metrics hook) and checks what it returns.

    Args:
        model: The model passed as first argument.
        loss_fn: ``loss_fn(model, batch) -> loss | (loss, extras)``.
        metrics: Keras metrics to update.
        metrics_fn: Optional ``metrics_fn(model, batch) -> (y_true, y_pred)``.
        model_losses: Add the Keras model's ``losses`` (kernel/activity regularizers,
            ``add_loss``) to the loss, as ``keras.Model.fit`` and ``evaluate`` do.
    """

    def __init__(
        self,
        model: Any,
        loss_fn: Callable,
        metrics: Sequence[keras.metrics.Metric] = (),
        metrics_fn: Callable | None = None,
        model_losses: bool = True,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(
                f"Trainer needs a callable `loss_fn(model, batch)`, but received "
                f"{describe_received(loss_fn)}."
            )
        if metrics_fn is not None and not callable(metrics_fn):
            raise TypeError(f"`metrics_fn` must be callable, got {describe_received(metrics_fn)}.")
        self.model, self.loss_fn, self.metrics, self.metrics_fn = (
            model,
            loss_fn,
            metrics,
            metrics_fn,
        )
        from .model import call_arguments

        self._pass_training = call_arguments(loss_fn)
        models = model.values() if isinstance(model, dict) else [model]
        self._regularized = [m for m in models if isinstance(m, keras.layers.Layer)]
        if not model_losses:
            self._regularized = []

    def __call__(self, batch: Any, training: bool) -> tuple[tf.Tensor, dict, tuple | None]:
        """Returns ``(loss as float32 scalar, {name: float32 scalar}, (y_true, y_pred) | None)``."""
        loss_fn = _compile.autographed(self.loss_fn)  # (traced: the user's if/for converted)
        if self._pass_training:
            out = loss_fn(self.model, batch, training=training)
        else:
            out = loss_fn(self.model, batch)
        name = fn_name(self.loss_fn)
        if out is None:
            raise TypeError(
                f"`{name}` (the Trainer's loss_fn) returned None; it must return the loss, a float "
                "scalar (the mean over the batch), or (loss, {name: scalar}). Add `return loss` "
                "at its end."
            )
        if isinstance(out, (tuple, list)):
            if len(out) != 2 or not isinstance(out[1], Mapping):
                raise TypeError(
                    f"`{name}` must return a scalar loss or (loss, {{name: scalar}}), but returned "
                    f"{describe_received(out)}."
                )
            loss, extras = out[0], dict(out[1])
        else:
            loss, extras = out, {}
        loss = self._scalar(loss, "the loss", name)
        added = [tf.cast(v, tf.float32) for m in self._regularized for v in m.losses]
        if added:  # read after loss_fn ran the model: add_loss values of this call are there
            loss = loss + tf.add_n(added)
        targets = None
        if all(k in extras for k in _TARGETS):
            targets = (extras.pop("y_true"), extras.pop("y_pred"))
        extras = {str(k): self._scalar(v, f"extras[{k!r}]", name) for k, v in extras.items()}
        if "loss" in extras:
            raise ValueError(f"`{name}` returned an extra value named 'loss'; rename it.")
        return loss, extras, targets

    @staticmethod
    def _scalar(value: Any, what: str, name: str) -> tf.Tensor:
        value = tf.convert_to_tensor(value)
        if not value.dtype.is_floating or value.shape.rank != 0:
            raise ValueError(
                f"`{name}` must return {what} as a float scalar, but it has dtype "
                f"{value.dtype.name} and shape {tuple(value.shape)}. Reduce it with "
                "tf.reduce_mean (the Trainer averages over batches and replicas itself)."
            )
        return tf.cast(value, tf.float32)

    def update_metrics(self, batch: Any, targets: tuple | None) -> None:
        """Update every metric with ``(y_true, y_pred)`` for ``batch``."""
        if not self.metrics:
            return
        if self.metrics_fn is not None:
            targets = _compile.autographed(self.metrics_fn)(self.model, batch)
        elif targets is None:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and callable(self.model)):
                raise TypeError(
                    "Trainer metrics need (y_true, y_pred): pass metrics_fn(model, batch) -> "
                    "(y_true, y_pred), return {'y_true': ..., 'y_pred': ...} among loss_fn's "
                    f"extras, or use batches (x, y) with a callable model; the batch was "
                    f"{describe_received(batch)}."
                )
            targets = (batch[1], _compile.autographed(self.model)(batch[0], training=False))
        y_true, y_pred = targets
        for m in self.metrics:
            if isinstance(m, _PendingAccuracy):  # the first trace only records the shapes
                m.shapes = (tuple(y_true.shape), tuple(y_pred.shape))
                continue
            m.update_state(y_true, y_pred)

    def resolve_pending(self, strategy: tf.distribute.Strategy) -> None:
        """Create the metric behind each pending ``"accuracy"`` (after the first trace)."""
        pending = [m for m in self.metrics if isinstance(m, _PendingAccuracy)]
        if not pending:
            return
        with strategy.scope():
            self.metrics = [
                m.resolve() if isinstance(m, _PendingAccuracy) and m.shapes else m
                for m in self.metrics
            ]

    def metric_results(self) -> dict[str, float]:
        """Current metric values as floats (reads the device once per metric)."""
        out = {}
        for m in self.metrics:
            value = m.result()
            if isinstance(value, Mapping):
                out.update({f"{m.name}_{k}": float(v) for k, v in value.items()})
            else:
                out[m.name] = float(value)
        return out

    def reset_metrics(self) -> None:
        """Reset every metric's state."""
        for m in self.metrics:
            m.reset_state()
