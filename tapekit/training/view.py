"""A Trainer's public state: counters, optimizers, metrics, variables and weights.

:class:`StateView` is the base of :class:`tapekit.Trainer` that reads (and, for weights,
writes) what the assembled parts hold; it runs nothing. ``weights`` / ``get_weights`` /
``set_weights`` follow Keras: for one Keras model they are ``model.weights`` (the lists
interchange with ``model.get_weights()``); ``variables`` adds Keras' RNG seed state and is what
checkpoints save.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from .checkpoints import Checkpoints
from .loop import FitLoop
from .model import all_variables
from .parts import Parts

__all__ = ["StateView"]


class StateView:
    """The read side of a Trainer over its :class:`~tapekit.training.parts.Parts`.

    Args:
        parts: What :func:`~tapekit.training.parts.assemble` built.
        loop: The Trainer's :class:`~tapekit.training.loop.FitLoop`.

    Example:
        >>> import tensorflow as tf, tapekit
        >>> trainer = tapekit.Trainer(tf.Variable(2.0), lambda w, b: w**2, logdir=False)
        >>> trainer.global_step, trainer.epoch, trainer.get_weights()[0].item()
        (0, 0, 2.0)
    """

    def __init__(self, parts: Parts, loop: FitLoop) -> None:
        self.models, self.model, self.optimizers = parts.models, parts.model, parts.optimizers
        self.trainable_variables = parts.trainable_variables
        self._call, self._state, self._steps = parts.call, parts.state, parts.steps
        self._loop = loop
        self._checkpoints: Checkpoints | None = None  # opened at the first step

    @property
    def optimizer(self) -> keras.optimizers.Optimizer:
        """The optimizer (with several, an error: use ``trainer.optimizers[name]``)."""
        if len(self.optimizers) != 1:
            raise AttributeError(
                f"This Trainer has several optimizers ({', '.join(self.optimizers)}); use "
                "trainer.optimizers[name]."
            )
        return next(iter(self.optimizers.values()))

    @property
    def loss_fn(self) -> Callable | None:
        """The ``loss_fn(model, batch)`` the Trainer was given (``None`` for a custom step
        without one), e.g. for a callback that measures the loss itself."""
        return self._call.loss_fn if self._call is not None else None

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far (restored from a checkpoint on resume)."""
        return int(self._state.step.numpy())

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return int(self._state.epoch.numpy())

    @property
    def epoch_step(self) -> int:
        """Steps done in the running (or interrupted) epoch; 0 at an epoch boundary."""
        return int(self._state.epoch_step.numpy())

    def epoch_means(self) -> dict[str, float]:
        """The running means of the epoch's step values (``loss``, extras): a device read."""
        return self._steps.train_means.result()

    @property
    def checkpoints(self) -> Checkpoints | None:
        """The run's checkpoints (None without ``checkpoint_dir`` or before the first step)."""
        return self._checkpoints

    @property
    def remaining_steps(self) -> int | None:
        """Steps left in the running ``fit`` (None before the first ``fit``)."""
        return self._loop.remaining_steps

    @property
    def rng(self) -> tf.random.Generator:
        """A seeded ``tf.random.Generator`` saved in checkpoints, for the user's own noise."""
        return self._state.rng

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because of non-finite values (``on_nonfinite="skip"``)."""
        return int(self._state.skipped.numpy())

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The Keras metric objects the Trainer updates."""
        return list(self._call.metrics) if self._call is not None else []

    @property
    def variables(self) -> list[Any]:
        """Every variable of the model(s) (trainable and not, with Keras' RNG seed state), as
        saved in checkpoints."""
        return all_variables(self.models)

    @property
    def weights(self) -> list[Any]:
        """The variables of ``get_weights``: one Keras model's ``model.weights`` (no RNG seed
        state: the lists interchange with ``model.get_weights()``), else ``variables``."""
        only = next(iter(self.models.values())) if len(self.models) == 1 else None
        return list(only.weights) if isinstance(only, keras.layers.Layer) else self.variables

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights as NumPy arrays, in the order of Keras' ``model.get_weights()``."""
        return [np.array(v.numpy()) for v in self.weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Assign values (in ``get_weights`` order, e.g. from ``model.get_weights()``).

        Raises:
            ValueError: If the number of arrays differs from ``len(trainer.weights)``.
        """
        weights, mine = list(weights), self.weights
        if len(weights) != len(mine):
            raise ValueError(
                f"set_weights needs {len(mine)} arrays (the order of get_weights() / "
                f"model.get_weights()), got {len(weights)}."
            )
        for v, w in zip(mine, weights, strict=True):
            v.assign(w)
