"""The default training step: ``loss_fn(model, batch)`` as a step on the general machinery.

``Trainer(model, loss_fn, optimizer=...)`` trains with :class:`SupervisedStep`, an ordinary
step ``(ctx, batches) -> {name: scalar}`` on the same compiled loop and the same optimizer
update (:mod:`tapekit.training.update`) as a user-written step. What it adds: gradient
accumulation over ``accumulate_steps`` micro-batches, each micro-batch's loss weighted by its
share of the GLOBAL number of examples in the step (``tf.nn.compute_average_loss`` semantics,
so replicas and micro-batches add up to the mean over the whole step), optional XLA
compilation of the forward and backward pass, and the Keras metrics update.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from .calls import LossCall
from .context import StepContext
from .data import leading_size
from .update import OptimizerUpdate

__all__ = ["SupervisedStep"]


class SupervisedStep:
    """``loss_fn`` as a training step for the model (and optimizer) named ``name``.

    Args:
        call: The checked ``loss_fn`` call (and metrics).
        update: The optimizer update of the one model.
        replicas: Replicas in sync.
        jit_compile: XLA-compile the forward and backward pass.
    """

    def __init__(
        self, call: LossCall, update: OptimizerUpdate, replicas: int, jit_compile: bool
    ) -> None:
        self.call, self.update, self.replicas = call, update, replicas
        self._compute = self._local_gradients
        if jit_compile:
            self._compute = tf.function(self._local_gradients, jit_compile=True)

    def _local_gradients(self, batches: list[Any], total: tf.Tensor) -> tuple:
        """Gradient of this replica's share of the step loss; reported means; metric targets."""
        grads, sums, targets = None, None, []
        weigh = self.replicas > 1 or len(batches) > 1
        for batch in batches:
            n = leading_size(batch)
            with tf.GradientTape() as tape, tf.name_scope("forward"):
                loss, extras, target = self.call(batch, training=True)
                weighted = loss * (n / total) if weigh else loss
                if self.replicas > 1:  # a replica may get no example of a small last batch
                    weighted = tf.where(n > 0, weighted, 0.0)
            g = self.update.gradients(weighted, tape)
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            batch_sums = {k: self._times(v, n) for k, v in {"loss": loss, **extras}.items()}
            sums = batch_sums if sums is None else {k: sums[k] + batch_sums[k] for k in sums}
            targets.append(target)
        return grads, sums, targets

    def _times(self, value: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
        """``value * n``; 0 for an empty replica batch (whose mean is NaN)."""
        return value * n if self.replicas == 1 else tf.where(n > 0, value * n, 0.0)

    def __call__(self, ctx: StepContext, batches: list[Any]) -> dict[str, tf.Tensor]:
        """Run the step: the replica's means are returned as sums / local example count."""
        local = tf.add_n([leading_size(b) for b in batches])
        grads, sums, targets = self._compute(batches, ctx.examples)
        for batch, target in zip(batches, targets):
            self.call.update_metrics(batch, target)
        ctx.apply(self.update.name, grads, sums["loss"])  # an empty replica's sums are 0
        return {k: v / tf.maximum(local, 1.0) for k, v in sums.items()}
