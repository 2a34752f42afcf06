"""The compiled training and evaluation steps (one ``tf.function`` per input signature).

One optimizer step, for any strategy (the default one, ``MirroredStrategy`` and
``MultiWorkerMirroredStrategy`` alike):

1. In each replica (``strategy.run``): for each of the ``accumulate`` micro-batches, call
   ``loss_fn``, weight the loss by the micro-batch's share of the GLOBAL number of examples in
   the step (``tf.nn.compute_average_loss`` semantics, so replicas and micro-batches add up to
   the mean over the whole step), scale it for float16 loss scaling, take the gradient and sum.
2. Check that loss and gradient are finite and clip. Clipping needs the aggregated gradient, so
   with ``clip_norm``/``clip_value`` and several replicas the gradient is all-reduced here,
   clipped, and handed to the optimizer divided by the replica count: Keras 3's TF optimizers
   always sum gradients over replicas themselves in ``apply`` (they have no switch to skip it,
   and cannot be applied in cross-replica context), so the sum of the shares is the clipped
   aggregate (exact for power-of-two replica counts). Without clipping the local gradients go
   to the optimizer, which all-reduces them once. The reported loss and extras, the example
   count and the per-replica "finite" flags are all-reduced in one small collective, so every
   replica (and every worker) takes the same decision. Under float16 loss scaling the
   ``LossScaleOptimizer`` decides from the gradient of ONE replica; a replica whose local
   gradient overflowed makes every replica's gradient non-finite first, so all of them skip.
3. In cross-replica context, ``apply`` runs ``optimizer.apply`` in each replica and advances
   the counters and running means. With ``on_nonfinite="raise"`` it runs unconditionally, but
   every op of it waits for a ``tf.debugging.Assert(finite)`` that the host turns into
   :class:`tapekit.NonFiniteError`; a small ``tf.cond`` first records which variables were
   non-finite (nothing is applied, no host round trip per step). With ``"skip"`` it is
   ``tf.cond(finite, apply, skip)``, ``skip`` counting the step as skipped. The optional
   logging hook runs here too; it gets the aggregated, unscaled gradient, all-reduced only on
   the steps it logs.

Steps run in a ``tf.range`` loop inside the function, ``steps_per_execution`` at a time, pulling
batches from a (distributed) iterator whose element shapes have an unknown batch dimension: a
partial last batch never retraces. ``jit_compile`` XLA-compiles the forward/backward part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from ..errors import DisconnectedGradientError, NonFiniteError
from .calls import LossCall
from .data import leading_size, relaxed_spec
from .state import RunningMeans, TrainState

__all__ = ["CompiledSteps", "NONFINITE_MARK"]

NONFINITE_MARK = "tapekit-nonfinite-step"
_SUM = tf.distribute.ReduceOp.SUM


class CompiledSteps:
    """Builds and holds the compiled train / eval functions of one Trainer.

    ``prepare(element_spec)`` must run first: it traces ``loss_fn`` once (without executing it)
    to learn the names of its extra values and to find trainable variables with no gradient.
    """

    def __init__(
        self,
        *,
        call: LossCall,
        variables: Sequence[Any],
        names: Sequence[str],
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        state: TrainState,
        clip_norm: float | None,
        clip_value: float | None,
        accumulate: int,
        steps_per_execution: int | None,
        on_nonfinite: str,
        allow_unused: bool,
        jit_compile: bool,
    ) -> None:
        self.call, self.optimizer, self.strategy, self.state = call, optimizer, strategy, state
        self.variables, self.names = list(variables), list(names)
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.accumulate, self.spe = accumulate, steps_per_execution
        self.on_nonfinite, self.allow_unused = on_nonfinite, allow_unused
        self.replicas = strategy.num_replicas_in_sync
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.hook: Any = None  # logging hook: hook.train_step(step, values, grads, variables)
        self.extras: list[str] | None = None
        self.used = list(self.variables)
        self.train_means: RunningMeans | None = None
        self.eval_means: RunningMeans | None = None
        self._compute = self._local_gradients
        if jit_compile:
            self._compute = tf.function(self._local_gradients, jit_compile=True)
        self.eval_fn = tf.function(self._eval_loop)
        self._build_train_functions()

    def _build_train_functions(self) -> None:
        body = self._train_once if self.spe == 1 else self._train_loop
        self.train_fn = tf.function(body)
        self.batch_fn = tf.function(self._train_batch, reduce_retracing=True)

    # -- preparation -------------------------------------------------------------------------

    def set_hook(self, hook: Any) -> None:
        """Install the logging hook; the compiled train functions are rebuilt to include it."""
        self.hook = hook
        self._build_train_functions()

    def prepare(self, element_spec: Any) -> None:
        """Trace ``loss_fn`` on ``element_spec`` (nothing runs) to check it; create the sums."""
        if self.extras is not None:
            return
        found: dict[str, Any] = {}

        def probe(batch: Any) -> tf.Tensor:
            with tf.GradientTape() as tape:
                loss, extras, _ = self.call(batch, training=True)
            found["extras"] = sorted(extras)
            found["grads"] = tape.gradient(loss, self.variables)
            return loss

        tf.function(probe, autograph=False).get_concrete_function(relaxed_spec(element_spec))
        missing = [n for n, g in zip(self.names, found["grads"]) if g is None]
        if missing and not self.allow_unused:
            raise DisconnectedGradientError(
                f"Trainer: every trainable variable needs a gradient, but {len(missing)} received "
                f"none from `loss_fn` at the first step: {', '.join(missing)}. Use them in the "
                "loss, make them non-trainable (layer.trainable = False / "
                "tf.Variable(..., trainable=False)), or pass allow_unused=True.",
                [(n, "not used by the loss") for n in missing],
            )
        self.used = [v for v, g in zip(self.variables, found["grads"]) if g is not None]
        self.extras = found["extras"]
        names = ["loss", *self.extras]
        with self.strategy.scope():
            self.train_means = RunningMeans(names, name="train_means")
            self.eval_means = RunningMeans(names, name="eval_means")

    # -- replica side ------------------------------------------------------------------------

    def _local_gradients(self, batches: list[Any], total: tf.Tensor) -> tuple:
        """Gradient of this replica's share of the step loss; reported sums; metric targets."""
        grads, sums, targets = None, None, []
        for batch in batches:
            n = leading_size(batch)
            with tf.GradientTape() as tape:
                loss, extras, target = self.call(batch, training=True)
                weighted = loss * (n / total) if (self.replicas > 1 or len(batches) > 1) else loss
                if self.replicas > 1:  # a replica may get no example of a small last batch
                    weighted = tf.where(n > 0, weighted, 0.0)
                if self.loss_scaled:
                    weighted = self.optimizer.scale_loss(weighted)
            g = tape.gradient(weighted, self.used)
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            batch_sums = {k: self._times(v, n) for k, v in {"loss": loss, **extras}.items()}
            sums = batch_sums if sums is None else {k: sums[k] + batch_sums[k] for k in sums}
            targets.append(target)
        return grads, sums, targets

    def _times(self, value: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
        """``value * n``; 0 for an empty replica batch (whose mean is NaN)."""
        return value * n if self.replicas == 1 else tf.where(n > 0, value * n, 0.0)

    def _aggregate(self) -> bool:
        """Whether the full gradient is all-reduced in the replica step (to clip it)."""
        return self.replicas > 1 and (self.clip_norm is not None or self.clip_value is not None)

    def _replica_step(self, batches: list[Any]) -> tuple:
        ctx = tf.distribute.get_replica_context()
        local_total = tf.add_n([leading_size(b) for b in batches])
        total = ctx.all_reduce(_SUM, local_total) if self.replicas > 1 else local_total
        grads, sums, targets = self._compute(batches, total)
        for batch, target in zip(batches, targets):
            self.call.update_metrics(batch, target)
        if self._aggregate():
            grads = ctx.all_reduce(_SUM, grads)
        local_ok = self._all_finite(grads) if self.loss_scaled else None
        grads, finite = self._check_and_clip(grads)
        if self.replicas > 1:  # one small collective: reported sums and the replicas' verdicts
            ok = local_ok if local_ok is not None else finite
            reduced = ctx.all_reduce(_SUM, {"sums": sums, "bad": 1.0 - tf.cast(ok, tf.float32)})
            sums, agreed = reduced["sums"], tf.equal(reduced["bad"], 0.0)
            if self.loss_scaled:
                if not self._aggregate():  # see module doc: all replicas must skip together
                    grads = tf.cond(
                        agreed, lambda: grads, lambda: [g + float("nan") for g in grads]
                    )
            else:
                finite = agreed
        return grads, sums, total, finite

    @staticmethod
    def _all_finite(grads: list[tf.Tensor]) -> tf.Tensor:
        return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))

    def _check_and_clip(self, grads: list[tf.Tensor]) -> tuple:
        if self.loss_scaled:  # LossScaleOptimizer skips non-finite gradients itself
            finite, norm, scale = tf.constant(True), None, self.optimizer.dynamic_scale
        else:
            norm, scale = tf.linalg.global_norm(grads), None
            finite = tf.math.is_finite(norm)
        if self.clip_norm is not None:
            limit = self.clip_norm * scale if scale is not None else self.clip_norm
            grads, _ = tf.clip_by_global_norm(grads, limit, use_norm=norm)
        if self.clip_value is not None:
            limit = self.clip_value * scale if scale is not None else self.clip_value
            grads = [tf.clip_by_value(g, -limit, limit) for g in grads]
        return grads, finite

    def _apply_replica(self, grads: list[tf.Tensor], after: Sequence[Any]) -> None:
        # Keras' TF optimizers all-reduce (sum) in replica context; aggregated gradients are
        # divided by the replica count first, local ones are passed as they are. Every op of
        # the update waits for the ops in `after` (set here: replica functions may run in
        # threads of their own, which do not see the caller's control dependencies).
        with tf.control_dependencies(after):
            if self._aggregate():
                grads = [g / self.replicas for g in grads]
            self.optimizer.apply(grads, self.used)

    # -- cross-replica side ------------------------------------------------------------------

    def _first(self, value: Any) -> Any:
        if self.replicas == 1:
            return value
        return tf.nest.map_structure(
            lambda v: self.strategy.experimental_local_results(v)[0], value
        )

    def _record_nonfinite(self, grads: list[tf.Tensor], loss_sum: tf.Tensor) -> tf.Tensor:
        flags = iter(tf.unstack(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads])))
        used = {id(v) for v in self.used}
        full = [next(flags) if id(v) in used else tf.constant(True) for v in self.variables]
        self.state.record_nonfinite(tf.math.is_finite(loss_sum), tf.stack(full))
        return tf.constant(False)

    def _logged_gradients(self, grads: Any) -> list[tf.Tensor]:
        """The aggregated, unscaled gradient for the logging hook (called on logging steps)."""
        if self.replicas > 1 and not self._aggregate():
            grads = self.strategy.run(
                lambda g: tf.distribute.get_replica_context().all_reduce(_SUM, g), args=(grads,)
            )
        grads = self._first(grads)
        if self.loss_scaled:
            grads = [g / self.optimizer.dynamic_scale for g in grads]
        return grads

    def _one_step(self, batches: list[Any]) -> dict[str, tf.Tensor]:
        grads, sums, total, finite = self.strategy.run(self._replica_step, args=(batches,))
        sums, total, finite = self._first((sums, total, finite))  # equal in every replica
        finite = tf.logical_and(tf.math.is_finite(sums["loss"]), finite)

        def advance() -> None:  # epoch_step and position are kept by the host (loop.py)
            self.state.step.assign_add(1)

        def apply(after: Sequence[Any] = ()) -> tf.Tensor:
            self.strategy.run(self._apply_replica, args=(grads, after))
            with tf.control_dependencies(after):
                self.train_means.add(sums, total)
                advance()
            return tf.constant(True)

        def skip() -> tf.Tensor:
            self.state.skipped.assign_add(1)
            advance()
            return tf.constant(False)

        def record() -> tf.Tensor:
            return self._record_nonfinite(self._first(grads), sums["loss"])

        means = {k: v / tf.maximum(total, 1.0) for k, v in sums.items()}
        if self.hook is not None:  # every worker runs it: its all-reduce is a collective
            self.hook.train_step(
                self.state.step, means, lambda: self._logged_gradients(grads), self.used
            )
        if self.on_nonfinite == "skip":
            tf.cond(finite, apply, skip)
            return means
        # "raise": the update runs unconditionally, but every op of it waits for an Assert that
        # fails on a non-finite step (nothing is applied; the host turns the failure into
        # NonFiniteError). Only the small diagnostics sit in a tf.cond: putting the whole
        # update in a cond branch costs ~5% of this MLP's step (benchmarks/training.py).
        recorded = tf.cond(finite, lambda: tf.constant(True), record)
        apply([tf.debugging.Assert(recorded, [NONFINITE_MARK, self.state.step])])
        return means

    def _train_once(self, iterator: Any, num_steps: tf.Tensor) -> None:
        del num_steps  # always 1
        with self.strategy.scope():  # cross-replica context: Keras must not all-reduce again
            self._one_step([next(iterator) for _ in range(self.accumulate)])

    def _train_loop(self, iterator: Any, num_steps: tf.Tensor) -> None:
        with self.strategy.scope():
            for _ in tf.range(num_steps):
                self._one_step([next(iterator) for _ in range(self.accumulate)])

    def _train_batch(self, batch: Any) -> dict[str, tf.Tensor]:
        with self.strategy.scope():
            return self._one_step([batch])

    # -- evaluation --------------------------------------------------------------------------

    def _replica_eval(self, batch: Any) -> tuple:
        n = leading_size(batch)
        loss, extras, target = self.call(batch, training=False)
        self.call.update_metrics(batch, target)
        sums = {k: self._times(v, n) for k, v in {"loss": loss, **extras}.items()}
        if self.replicas > 1:
            sums, n = tf.distribute.get_replica_context().all_reduce(_SUM, (sums, n))
        return sums, n

    def _eval_loop(self, iterator: Any, num_steps: tf.Tensor) -> None:
        with self.strategy.scope():
            self._eval_steps(iterator, num_steps)

    def _eval_steps(self, iterator: Any, num_steps: tf.Tensor) -> None:
        for _ in tf.range(num_steps):
            sums, n = self.strategy.run(self._replica_eval, args=(next(iterator),))
            self.eval_means.add(*self._first((sums, n)))

    # -- helpers for the Trainer -------------------------------------------------------------

    def split_batch(self, batch: Any) -> Any:
        """Spread one global batch over the replicas (for ``Trainer.step``)."""
        if self.replicas == 1:
            return tf.nest.map_structure(tf.convert_to_tensor, batch)
        batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
        size = int(tf.nest.flatten(batch)[0].shape[0])

        def part(ctx: tf.distribute.ReplicaContext) -> Any:
            r, n = ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
            lo, hi = r * size // n, (r + 1) * size // n
            return tf.nest.map_structure(lambda t: t[lo:hi], batch)

        return self.strategy.experimental_distribute_values_from_function(part)

    def nonfinite_error(self, saved: str) -> NonFiniteError:
        """The error for the step that failed (read from the diagnostics in ``state``)."""
        flags = self.state.bad_grads.numpy().tolist()
        names = [n for n, bad in zip(self.names, flags) if bad]
        step = int(self.state.bad_step.numpy())
        step = step if step >= 0 else int(self.state.step.numpy())
        what = (["the loss"] if bool(self.state.bad_loss.numpy()) else []) + (
            [f"the gradients of {', '.join(names)}"] if names else []
        )
        found = " and ".join(what) or "the global gradient norm (it overflowed)"
        return NonFiniteError(
            f"Trainer: training produced non-finite values (NaN or inf) at step {step} in "
            f"{found}. That step was not applied; {saved}. Lower the learning rate, clip "
            "gradients (clip_norm=...), check the data for NaN/inf, or pass "
            "on_nonfinite='skip' to skip such steps.",
            step=step,
            variables=names,
        )

    def trace_counts(self) -> dict[str, int]:
        """How many times each compiled function was traced (for tests and diagnostics)."""
        fns: dict[str, Callable] = {"train": self.train_fn, "eval": self.eval_fn}
        return {k: int(f.experimental_get_tracing_count()) for k, f in fns.items()}
