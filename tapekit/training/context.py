"""``StepContext``: what a user-written training step receives, and how it hands back gradients.

A step is ``step(ctx, batch) -> {name: scalar}``. It runs inside the Trainer's compiled
function, once per replica (``strategy.run``), records its own tapes, and gives each gradient
to a named optimizer::

    def wgan_step(ctx, batch):
        g, c = ctx.models["generator"], ctx.models["critic"]
        for _ in range(5):
            with tf.GradientTape() as tape:
                critic_loss = ...
            ctx.minimize("critic", critic_loss, tape)
        with tf.GradientTape() as tape:
            gen_loss = -tf.reduce_mean(c(g(ctx.rng.normal([n, 2]))))
        ctx.minimize("generator", gen_loss, tape)
        return {"critic_loss": critic_loss, "generator_loss": gen_loss}

``ctx.minimize`` does for each named optimizer what the default ``loss_fn`` step does for its
one: loss scaling, clipping after the cross-replica sum, the non-finite check naming variables
and step, gradient logging, the "variable got no gradient" check (see
:mod:`tapekit.training.update`). The returned scalars are averaged over replicas (weighted by
each replica's share of the batch) and over steps, and reach the console, ``History``,
callbacks and TensorBoard like ``loss`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf

from .. import _compile
from .update import OptimizerUpdate

__all__ = ["StepContext"]


class StepContext:
    """The Trainer's side of one (per-replica) training step.

    Args:
        models: The Trainer's models by name.
        updates: The optimizer updates by name (each trains the model of the same name).
        rng: The Trainer's seeded ``tf.random.Generator`` (saved in checkpoints). Under a
            multi-replica strategy each replica draws its own stream (TensorFlow's rule for a
            generator used in replica context).
        step: The global step this step is (int64 tensor; counts from 0).
        share: This replica's share of the global step (examples / global examples, or
            1 / replicas without data); the weight ``gradients`` applies to a replica's loss.
        examples: The number of examples in the global step (1.0 without data).
        replicas: The number of replicas in sync.
        reported: Trace-time: for the step's ``minimize`` calls in order, whether the step
            reports a value computed from that call's loss (learned by the Trainer in a first
            trace of the step, see :meth:`minimize`); None: check every loss.
        training: Always True here (for symmetry with ``loss_fn(..., training)``).

    Example:
        >>> import keras, tapekit
        >>> w = tf.Variable(2.0)
        >>> def step(ctx, batch):
        ...     with tf.GradientTape() as tape:
        ...         loss = (ctx.models["model"] - 5.0) ** 2
        ...     ctx.minimize("model", loss, tape)
        ...     return {"loss": loss}
        >>> trainer = tapekit.Trainer(w, step=step, optimizer=keras.optimizers.SGD(0.25),
        ...                           logdir=False)
        >>> _ = trainer.fit(None, steps_per_epoch=10, verbose=0)
        >>> round(float(w.numpy()), 3)
        4.997
    """

    def __init__(
        self,
        *,
        models: Mapping[str, Any],
        updates: Mapping[str, OptimizerUpdate],
        rng: tf.random.Generator,
        step: tf.Tensor,
        share: Any,
        examples: Any,
        replicas: int,
        reported: Sequence[bool] | None = None,
    ) -> None:
        self.models = dict(models)
        self._updates = dict(updates)
        self.rng, self.step, self.share, self.examples = rng, step, share, examples
        self.replicas = replicas
        self.training = True
        self._reported = reported
        self.minimized: list[tf.Tensor] = []  # trace-time: each minimize call's loss, in order

    @property
    def model(self) -> Any:
        """The only model (an error naming the models if there are several)."""
        if len(self.models) != 1:
            raise AttributeError(
                f"ctx.model is ambiguous with several models ({', '.join(self.models)}); use "
                "ctx.models[name]."
            )
        return next(iter(self.models.values()))

    def update(self, name: str) -> OptimizerUpdate:
        """The update of optimizer ``name``.

        Raises:
            KeyError: If there is no optimizer of that name (the message lists them).
        """
        try:
            return self._updates[name]
        except KeyError:
            raise KeyError(
                f"The step asked for optimizer {name!r}, but the Trainer has "
                f"{sorted(self._updates)}. Pass optimizers={{{name!r}: ...}} (one per model) "
                "or use one of those names."
            ) from None

    def gradients(self, name: str, loss: tf.Tensor, tape: tf.GradientTape) -> list[Any]:
        """This replica's share of the gradient of ``loss`` for optimizer ``name``'s variables.

        Args:
            name: The optimizer (and model) name.
            loss: This replica's scalar loss, recorded on ``tape`` (a mean over its examples).
            tape: The ``tf.GradientTape`` that recorded ``loss``.

        Returns:
            One gradient per variable (already weighted by ``share`` and loss-scaled), to pass
            to :meth:`apply` (possibly after your own changes).

        Raises:
            DisconnectedGradientError: If a variable gets no gradient (``allow_unused=False``).
        """
        weight = None if self.replicas == 1 else self.share
        return self.update(name).gradients(loss, tape, weight)

    def apply(self, name: str, grads: Sequence[Any], loss: tf.Tensor | None = None) -> tf.Tensor:
        """Clip, check and apply ``grads`` (from :meth:`gradients`) with optimizer ``name``.

        Args:
            name: The optimizer name.
            grads: One gradient (or None for an allowed unused variable) per variable.
            loss: The loss they came from, checked for finiteness too (optional; always
                checked when given).

        Returns:
            A boolean tensor: whether the update was applied (False only when skipped).
        """
        return self.update(name).apply(list(grads), loss)

    def minimize(self, name: str, loss: tf.Tensor, tape: tf.GradientTape) -> tf.Tensor:
        """``apply(name, gradients(name, loss, tape), loss)``: one optimizer update.

        With ``on_nonfinite`` set, the gradients are always checked before the update writes
        anything, and ``loss`` too when the step reports it or a value computed from it (it
        is computed anyway then). A loss the step does not report is not computed just for
        the check: TensorFlow skips the ops its gradients do not need (for recipe 08's four
        unreported critic losses, a dozen small ops each per step), and a non-finite loss
        whose gradients are finite moves no weight wrongly (Optax's ``apply_if_finite`` and
        Keras's ``LossScaleOptimizer`` check only gradients too). To check such a loss, report
        it or call ``apply(name, gradients(name, loss, tape), loss)``. The Trainer learns
        which losses are reported in a first trace of the step, before training; that trace
        must make the same ``minimize`` calls in the same order (any step whose Python code
        does not depend on outside state changing between traces does). A loss computed
        inside the step's own TensorFlow control flow (a ``tf.range`` loop, a ``tf.cond``)
        counts as unreported.

        Args:
            name: The optimizer name.
            loss: This replica's scalar loss, recorded on ``tape``.
            tape: The tape that recorded it.

        Returns:
            Whether the update was applied (a boolean tensor).
        """
        k = len(self.minimized)
        self.minimized.append(loss)
        reported = self._reported
        checked = reported is None or k >= len(reported) or reported[k]
        return self.apply(name, self.gradients(name, loss, tape), loss if checked else None)


for _name in ("update", "gradients", "apply", "minimize"):  # called as they are from user steps
    _compile.no_autograph(getattr(StepContext, _name))
