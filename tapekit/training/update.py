"""One named optimizer and the variables it trains: gradients, checks, clipping and the update.

Every optimizer update of a Trainer, the default ``loss_fn`` step's and each ``ctx.apply`` of a
user-written step alike, goes through :class:`OptimizerUpdate`:

1. ``gradients(loss, tape, weight)`` (replica context): the gradient of ``loss`` times the
   replica's ``weight`` (its share of the global step) and, under float16 loss scaling, the
   dynamic loss scale (passed as ``output_gradients``, so the user's tape needs no change). A
   trainable variable that gets no gradient is an error naming it (``allow_unused`` permits it).
2. ``apply(grads, loss)`` (replica context): with clipping and several replicas the gradient
   is all-reduced here and clipped (Keras 3's TF optimizers always sum over replicas in
   ``apply``, so the clipped aggregate is handed on divided by the replica count); the
   replicas agree on "finite" in one small collective. Then one ``merge_call`` enters
   cross-replica context, where the update runs under ``strategy.run``:

   * ``on_nonfinite="raise"``: every op of the update waits for an ``Assert`` on "finite"
     (the raw op: no ``tf.cond`` around it, which costs 5-10% of a small model's step). A
     failing Assert aborts the compiled call before any of the update, or anything after it
     in the step (its logging included), runs; its message carries the step, the optimizer
     and which values were not finite (:func:`failure_of`), and the host raises
     :class:`tapekit.NonFiniteError` from it.
   * ``"skip"``: inside ``tf.cond(finite, apply, skip)`` (a synchronising update cannot sit
     in a ``tf.cond`` in replica context, hence the merge).
   * ``None``: no check; the update is applied as it is (as ``keras.Model.fit`` does), and
     its ops may start while the step's other gradients are still being computed.
   Under float16 loss scaling the ``LossScaleOptimizer`` decides itself; a replica whose local
   gradient overflowed makes every replica's gradient non-finite first, so all of them skip.

``apply`` returns a boolean token (was the update applied); the step waits on all tokens before
it advances the counters, and keeps the last gradient per optimizer for the logging hook.

The finiteness test is the global norm's own sum of squares (``tf.nn.l2_loss`` per gradient,
as ``tf.linalg.global_norm`` computes it), so checking costs no extra pass over the gradients;
a variable is named as non-finite when its squared norm is (NaN/inf, or so large that its
square overflows).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from ..errors import DisconnectedGradientError
from .distribution import first_local

__all__ = ["NONFINITE_MARK", "OptimizerUpdate", "failure_of"]

NONFINITE_MARK = "tapekit-nonfinite-step"
# The Assert's message: [mark optimizer-index] [step] [loss finite 0/1] [half squared norms]
_FAILURE = re.compile(re.escape(NONFINITE_MARK) + r" (\d+)\] \[(-?\d+)\] \[(\d)\] \[([^\]]*)\]")


def failure_of(message: str) -> tuple[int, int, bool, list[bool]] | None:
    """``(step, optimizer index, loss was bad, bad flag per variable)`` from the message of a
    failed non-finite Assert, or None if ``message`` is not one.

    Example:
        >>> failure_of("assertion failed: [tapekit-nonfinite-step 1] [7] [1] [0.5 nan 2]")
        (7, 1, False, [False, True, False])
        >>> failure_of("some other error") is None
        True
    """
    found = _FAILURE.search(message)
    if found is None:
        return None
    index, step, loss_ok, halves = found.groups()
    flags = [not (float(h) < float("inf")) for h in halves.split()]  # NaN compares False
    return int(step), int(index), loss_ok != "1", flags


_SUM = tf.distribute.ReduceOp.SUM


class OptimizerUpdate:
    """Applies one optimizer to its variables from inside a compiled step (see module doc).

    Args:
        name: The optimizer's name (the model it trains), used in tags and messages.
        index: Its position among the Trainer's optimizers (for the non-finite diagnostics).
        optimizer: A built Keras optimizer (possibly a ``LossScaleOptimizer``).
        variables: The trainable variables it updates.
        names: Their readable names, same order.
        strategy: The Trainer's distribution strategy.
        step: The Trainer's step counter (read only).
        clip_norm: Clip the aggregated gradient to this global norm.
        clip_value: Clip each aggregated gradient element to ``[-clip_value, clip_value]``.
        on_nonfinite: ``"raise"``, ``"skip"`` or ``None`` (no check).
        allow_unused: Allow variables that get no gradient.
        source: The user function's name, for messages.
    """

    def __init__(
        self,
        name: str,
        index: int,
        optimizer: keras.optimizers.Optimizer,
        variables: Sequence[Any],
        names: Sequence[str],
        *,
        strategy: tf.distribute.Strategy,
        step: tf.Variable,
        clip_norm: float | None,
        clip_value: float | None,
        on_nonfinite: str | None,
        allow_unused: bool,
        source: str,
    ) -> None:
        self.name, self.index, self.optimizer = name, index, optimizer
        self.variables, self.names = list(variables), list(names)
        self.strategy, self.step = strategy, step
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.on_nonfinite, self.allow_unused, self.source = on_nonfinite, allow_unused, source
        self.replicas = strategy.num_replicas_in_sync
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if self.loss_scaled and on_nonfinite is None:
            raise ValueError(
                f"on_nonfinite=None turns the non-finite check off, but optimizer '{name}' is a "
                "LossScaleOptimizer (mixed_precision='mixed_float16'), which must see that "
                "check to skip the steps whose scaled gradients overflowed, on every replica "
                "alike. Use on_nonfinite='raise' or 'skip', or mixed_precision='mixed_bfloat16' "
                "(no loss scaling)."
            )
        self.aggregate = self.replicas > 1 and (clip_norm is not None or clip_value is not None)
        self.last_grads: Any = None  # trace-time: the newest applied gradient (per replica)
        self.tokens: list[tf.Tensor] = []  # trace-time: one per apply of the current step
        self.probing = False  # while the step is traced only to check it: apply nothing
        # With "skip" on one replica the update sits in its tf.cond branch as one call of a
        # function that is not inlined: a lowered cond costs a little for every op of its
        # branches, and the update has many (measured with benchmarks/training.py).
        self._noinline: Any = None
        if self.replicas == 1 and on_nonfinite == "skip":
            self._noinline = tf.function(
                lambda g, keep: strategy.run(self._apply_local, args=(g, keep, ())),
                autograph=False,
                experimental_attributes={"_noinline": True},
            )

    # -- replica side ------------------------------------------------------------------------

    def gradients(self, loss: tf.Tensor, tape: tf.GradientTape, weight: Any = None) -> list:
        """``d(weight * loss)/d(variables)``, loss-scaled; ``None`` only for allowed unused ones.

        Raises:
            DisconnectedGradientError: If a variable gets no gradient (and not allow_unused).
        """
        loss = tf.convert_to_tensor(loss)
        factor = None if weight is None else tf.cast(weight, loss.dtype)
        if self.loss_scaled:
            scale = tf.cast(self.optimizer.dynamic_scale, loss.dtype)
            factor = scale if factor is None else factor * scale
        with tf.name_scope("backward"):
            grads = tape.gradient(loss, self.variables, output_gradients=factor)
        missing = [n for n, g in zip(self.names, grads) if g is None]
        if missing and not self.allow_unused:
            raise DisconnectedGradientError(
                f"Trainer: every trainable variable needs a gradient, but {len(missing)} of "
                f"optimizer '{self.name}' received none from `{self.source}` at the first step: "
                f"{', '.join(missing)}. Use them in the loss, make them non-trainable "
                "(layer.trainable = False / tf.Variable(..., trainable=False)), or pass "
                "allow_unused=True.",
                [(n, "not used by the loss") for n in missing],
            )
        return list(grads)

    def apply(self, grads: Sequence[Any], loss: tf.Tensor | None = None) -> tf.Tensor:
        """Check, clip and apply a replica's gradient share (see module doc); returns a token."""
        if len(grads) != len(self.variables):
            raise ValueError(
                f"ctx.apply('{self.name}', grads) needs one gradient per variable of that "
                f"optimizer ({len(self.variables)}), but received {len(grads)}. Pass the list "
                f"ctx.gradients('{self.name}', loss, tape) returns."
            )
        keep = [i for i, g in enumerate(grads) if g is not None]
        grads = [grads[i] for i in keep]
        if self.probing:
            return tf.constant(True)
        ctx = tf.distribute.get_replica_context()
        if self.aggregate:
            grads = ctx.all_reduce(_SUM, grads)
        if self.on_nonfinite is None:  # unchecked: clip and apply as they come
            grads, _, _ = self._check_and_clip(grads, check=False)
            with tf.name_scope("update"):
                token = ctx.merge_call(self._cross_apply_unchecked, args=(grads, tuple(keep)))
            self.tokens.append(token)
            return token
        loss_ok = tf.constant(True) if loss is None else tf.math.is_finite(loss)
        local_ok = self._all_finite(grads) if self.loss_scaled else None
        grads, grads_ok, halves = self._check_and_clip(grads)
        if self.replicas > 1:  # one small collective: every replica takes the same decision
            flags = tf.stack([local_ok if self.loss_scaled else grads_ok, loss_ok])
            bad = ctx.all_reduce(_SUM, 1.0 - tf.cast(flags, tf.float32))
            grads_agreed, loss_ok = tf.equal(bad[0], 0.0), tf.equal(bad[1], 0.0)
            if not self.loss_scaled:
                grads_ok = grads_agreed
            elif not self.aggregate:  # see module doc: all replicas must skip together
                grads = tf.cond(
                    grads_agreed, lambda: grads, lambda: [g + float("nan") for g in grads]
                )
        finite = tf.logical_and(grads_ok, loss_ok)
        with tf.name_scope("update"):
            token = ctx.merge_call(
                self._cross_apply, args=(grads, finite, loss_ok, halves, tuple(keep))
            )
        self.tokens.append(token)
        return token

    @staticmethod
    def _all_finite(grads: list[tf.Tensor]) -> tf.Tensor:
        if not grads:
            return tf.constant(True)
        return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))

    def _check_and_clip(self, grads: list[tf.Tensor], check: bool = True) -> tuple:
        """``(grads clipped, finite, half squared norms)``; the norms are empty under loss
        scaling (the LossScaleOptimizer skips non-finite gradients itself) and, unless
        clipping by norm needs them, without ``check``."""
        halves, norm, scale = tf.zeros([0]), None, None
        finite = tf.constant(True)
        if self.loss_scaled:
            scale = self.optimizer.dynamic_scale
        elif grads and (check or self.clip_norm is not None):
            # what tf.linalg.global_norm computes, keeping the per-variable parts
            dense = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
            wide = tf.float64 if any(g.dtype == tf.float64 for g in dense) else tf.float32
            halves = tf.stack([tf.cast(tf.nn.l2_loss(g), wide) for g in dense])
            norm = tf.sqrt(2.0 * tf.reduce_sum(halves))
            finite = tf.math.is_finite(norm)
        if self.clip_norm is not None:
            limit = self.clip_norm * scale if scale is not None else self.clip_norm
            grads, _ = tf.clip_by_global_norm(grads, limit, use_norm=norm)
        if self.clip_value is not None:
            limit = self.clip_value * scale if scale is not None else self.clip_value
            grads = [tf.clip_by_value(g, -limit, limit) for g in grads]
        return grads, finite, halves

    def _apply_local(self, grads: list[tf.Tensor], keep: tuple, after: Sequence[Any]) -> None:
        # Every op of the update waits for `after` (set here: replica functions may run in
        # threads of their own, which do not see the caller's control dependencies).
        with tf.control_dependencies(after):
            if self.aggregate:
                grads = [g / self.replicas for g in grads]
            self.optimizer.apply(grads, [self.variables[i] for i in keep])

    # -- cross-replica side (inside merge_call) ------------------------------------------------

    def _cross_apply_unchecked(
        self, strategy: tf.distribute.Strategy, grads: list[Any], keep: tuple
    ) -> tf.Tensor:
        self.last_grads = (grads, keep)
        strategy.run(self._apply_local, args=(grads, keep, ()))
        return tf.constant(True)

    def _cross_apply(
        self,
        strategy: tf.distribute.Strategy,
        grads: list[Any],
        finite: Any,
        loss_ok: Any,
        halves: Any,
        keep: tuple,
    ) -> tf.Tensor:
        self.last_grads = (grads, keep)
        finite, loss_ok, halves = first_local(strategy, (finite, loss_ok, halves))
        if self.on_nonfinite == "skip":

            def run() -> tf.Tensor:
                if self._noinline is not None:  # one call op in the branch (see __init__)
                    self._noinline(list(grads), keep)
                else:
                    strategy.run(self._apply_local, args=(grads, keep, ()))
                return tf.constant(True)

            return tf.cond(finite, run, lambda: tf.constant(False))
        # "raise": the update waits for the check; a failure aborts the call (see module doc).
        # Only kept variables have a norm; report one flag per variable of the optimizer.
        flags = [tf.zeros([], halves.dtype)] * len(self.variables)
        for position, i in enumerate(keep):
            if not self.loss_scaled:
                flags[i] = halves[position]
        check = tf.raw_ops.Assert(
            condition=finite,
            data=[
                tf.constant(f"{NONFINITE_MARK} {self.index}"),
                tf.cast(self.step, tf.int64),
                tf.cast(loss_ok, tf.int32),
                tf.stack(flags) if flags else tf.zeros([0]),
            ],
            summarize=max(len(self.variables), 1),
        )
        strategy.run(self._apply_local, args=(grads, keep, (check,)))
        with tf.control_dependencies([check]):
            return tf.identity(finite)

    def logged_gradients(self) -> tuple[list[tf.Tensor], list[Any]]:
        """The newest applied gradient, aggregated and unscaled, with its variables.

        Called in cross-replica context on logging steps only (it all-reduces under a
        strategy whose update did not aggregate already).
        """
        grads, keep = self.last_grads
        if self.replicas > 1 and not self.aggregate:
            grads = self.strategy.run(
                lambda g: tf.distribute.get_replica_context().all_reduce(_SUM, g), args=(grads,)
            )
        grads = first_local(self.strategy, grads)
        if self.loss_scaled:
            grads = [g / self.optimizer.dynamic_scale for g in grads]
        return list(grads), [self.variables[i] for i in keep]
