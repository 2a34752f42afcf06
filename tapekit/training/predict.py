"""``Trainer.predict``: the model's outputs over a dataset, one compiled call per batch.

Like ``keras.Model.predict``: the model runs in inference mode (``training=False`` for Keras
models), a batch that is a tuple ``(x, y)`` or ``(x, y, sample_weight)`` contributes ``x`` only,
and the outputs of all batches are concatenated along the first axis into NumPy arrays (the
same nest as one output). Under a strategy each global batch is split over the replicas and the
pieces are gathered back in order. The step is a ``tf.function`` traced once per input
structure and dtypes (the batch dimension is left unknown: no retrace for a partial batch).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from . import data as _data
from .distribution import is_multi_worker

__all__ = ["Predictor", "choose_model", "inputs_of"]


def inputs_of(batch: Any) -> Any:
    """The model inputs of a batch, as Keras unpacks them: ``x`` of ``(x,)``, ``(x, y)`` or
    ``(x, y, sample_weight)``; anything else is the input itself.

    Args:
        batch: One element of the dataset.

    Returns:
        The part that goes into the model.

    Example:
        >>> inputs_of(("x", "y")), inputs_of("x"), inputs_of({"a": 1})
        ('x', 'x', {'a': 1})
    """
    if isinstance(batch, tuple) and 1 <= len(batch) <= 3:
        return batch[0]
    return batch


def choose_model(models: dict[str, Any], name: str | None) -> str:
    """The name of the model ``predict`` runs: the only one, or the one ``name`` names.

    Args:
        models: The Trainer's ``{name: model}``.
        name: ``predict``'s ``model`` argument.

    Returns:
        A key of ``models``.

    Raises:
        ValueError: If there are several models and ``name`` is None, or ``name`` is not one.

    Example:
        >>> choose_model({"model": None}, None), choose_model({"g": 1, "c": 2}, "c")
        ('model', 'c')
    """
    names = ", ".join(repr(k) for k in models)
    if name is None:
        if len(models) == 1:
            return next(iter(models))
        raise ValueError(
            f"predict needs model=<name> when the Trainer trains several models ({names}), "
            f"but none was given. Pass e.g. trainer.predict(x, model={next(iter(models))!r})."
        )
    if name not in models:
        raise ValueError(
            f"predict(model={name!r}) names no model of this Trainer; its models are {names}."
        )
    return name


class Predictor:
    """Runs ``model`` over batches in inference mode and concatenates the outputs.

    Args:
        model: A Keras model/layer (called with ``training=False``) or any callable.
        strategy: The distribution strategy the model's variables live in.

    Raises:
        TypeError: If ``model`` cannot be called.

    Example:
        >>> layer = keras.layers.Dense(2, kernel_initializer="ones")
        >>> out = Predictor(layer, tf.distribute.get_strategy())(np.ones((5, 3), "float32"), 2)
        >>> out.shape, float(out[0, 0])
        ((5, 2), 3.0)
    """

    def __init__(self, model: Any, strategy: tf.distribute.Strategy) -> None:
        if not callable(model):
            raise TypeError(
                "predict needs a callable model (a keras.Model or a tf.Module with __call__), "
                f"but the Trainer's model is a {type(model).__name__}. Call your own function "
                "over the data instead."
            )
        self.model, self.strategy = model, strategy
        self._distributed = strategy.num_replicas_in_sync > 1 or is_multi_worker(strategy)
        self._fns: dict[str, Any] = {}  # one tf.function per element spec (batch dim None)

    def _forward(self, x: Any) -> Any:
        if isinstance(self.model, keras.layers.Layer):
            return self.model(x, training=False)
        return self.model(x)

    def _replica_step(self, batch: Any) -> Any:
        x = inputs_of(batch)
        if not self._distributed:
            return self._forward(x)
        out = self.strategy.run(self._forward, (x,))
        return tf.nest.map_structure(lambda t: self.strategy.gather(t, axis=0), out)

    def __call__(self, data: Any, batch_size: int | None, steps: int | None = None) -> Any:
        """Predict over ``data`` (arrays with ``batch_size``, or a batched Dataset).

        Args:
            data: Inputs, as ``Trainer.predict`` takes them.
            batch_size: Batch size for array data (None for a Dataset).
            steps: Batches to run (default: all).

        Returns:
            The concatenated outputs as NumPy arrays, in the nest of one model output.

        Raises:
            ValueError: If ``steps`` is not a positive int, or ``data`` yields no batch.
        """
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"predict needs steps >= 1 (an int) or None, got {steps!r}.")
        ds = _data.as_dataset(data, batch_size=batch_size, argument="data")
        if steps is not None:
            ds = ds.take(steps)
        dist = _data.distribute(ds, self.strategy)
        spec = _data.relaxed_spec(dist.element_spec) if dist is ds else dist.element_spec
        key = repr(spec)
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = tf.function(self._replica_step, input_signature=[spec])
        outputs = []
        for batch in dist:
            outputs.append(tf.nest.map_structure(lambda t: t.numpy(), fn(batch)))
        if not outputs:
            raise ValueError(
                "predict got no batch from `data` (it is empty); pass at least one example."
            )
        return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)
