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

   * ``on_nonfinite="raise"``: the update waits for an ``Assert`` on "finite" (the raw op:
     no ``tf.cond`` around it, which costs 5-10% of a small model's step). A failing Assert
     aborts the compiled call before any of the update, or anything after it in the step
     (its logging included), runs; its message carries the step, the optimizer, which values
     were not finite and iteration counts (:func:`failure_of`), and the host puts those
     counts back and raises :class:`tapekit.NonFiniteError`. For the built-in
     optimizers that write every slot and variable through ``optimizer.assign``,
     ``assign_add`` and ``assign_sub`` (Adam, SGD, RMSprop, Adagrad, Adamax, Lion, without
     weight decay, EMA, accumulation or variables overwritten with their gradient) only
     those writes wait (:func:`_writes_wait`): the update's arithmetic runs while the step's
     other gradients are still computed, as without the check, and only the writes, the
     few ops that make the update visible, wait for it. A WGAN-GP step has six updates:
     waiting whole made the check cost 10-15% of its time, holding back the gradients
     5-8%, holding back the writes 3-5% (against the hand-written loop of
     ``benchmarks/custom_step.py``, on 2 cores). Their one write that does not go
     through those methods, the iteration count, may land before the Assert stops the
     call; the message says what the counts were at the failed update, in program order,
     and the host puts them back. The counts are read once per step (:class:`StepFrame`) and each
     update's message adds how many updates of each optimizer the step made before it,
     counted while tracing, so an update reads no variable for its check (an update inside
     the step's own control flow, whose count is not known while tracing, reads them).
     Every other optimizer waits for the check whole.
   * ``"skip"``: inside ``tf.cond(finite, apply, skip)`` (a synchronising update cannot sit
     in a ``tf.cond`` in replica context, hence the merge).
   * ``None``: no check; the update is applied as it is (as ``keras.Model.fit`` does), and
     its ops may start while the step's other gradients are still being computed.
   Under float16 loss scaling the ``LossScaleOptimizer`` decides itself; a replica whose local
   gradient overflowed makes every replica's gradient non-finite first, so all of them skip.

``apply`` returns a boolean token (was the update applied); the step waits on all tokens (and
the checks) before it advances the counters, and keeps the last gradient per optimizer for the
logging hook.

Which loss is checked: ``ctx.apply``'s when given; ``ctx.minimize``'s when the step reports it
or a value computed from it (``StepContext.minimize``: an unreported loss is not computed just
for the check); the default ``loss_fn`` step's always (it reports it).

The finiteness test is one ``is_finite`` of one sum: of the global norm's own squares
(``tf.nn.l2_loss`` per gradient, as ``tf.linalg.global_norm`` computes them, so checking costs
no extra pass over the gradients) and of ``0 * loss`` (NaN exactly when the loss is not
finite). It sits on the update's critical path, where every small op counts (a WGAN-GP step
has six updates), so it is kept to a handful of ops; the Assert reports the parts, and the host
finds in them which were not finite. A variable is named as non-finite when its squared norm is
(NaN/inf, or so large that its square overflows).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from ..errors import DisconnectedGradientError
from .distribution import first_local

__all__ = ["NONFINITE_MARK", "Failure", "OptimizerUpdate", "StepFrame", "failure_of"]

NONFINITE_MARK = "tapekit-nonfinite-step"
# The Assert's message: [mark optimizer-index kept-variables has-loss counted] [step], then
# one [value] per part (the kept variables' half squared gradient norms and, with a loss,
# last, 0 * loss) and one [count] per counted optimizer: "counted" lists them as
# index+offset, and an optimizer's iterations at the failed update are count + offset.
_FAILURE = re.compile(
    re.escape(NONFINITE_MARK) + r" (\d+) ([\d,]+|-) ([01]) ([\d+,]+|-)\] \[(-?\d+)\]"
)
_VALUE = re.compile(r" \[([-+.\w]*)\]")  # one number: 0.5, -1e+30, nan, inf, 35

# Built-in Keras optimizers whose ``update_step`` writes every slot and variable through
# ``self.assign`` / ``assign_add`` / ``assign_sub`` (checked in their sources; Keras asks
# optimizers to write that way), so that ``apply`` writes nothing else but the iteration
# count (and, after the update, variable constraints, which read the updated variables).
_WRITES_THROUGH_ASSIGN = (
    keras.optimizers.Adam,
    keras.optimizers.SGD,
    keras.optimizers.RMSprop,
    keras.optimizers.Adagrad,
    keras.optimizers.Adamax,
    keras.optimizers.Lion,
)


def _writes_suffice(optimizer: Any, variables: Sequence[Any]) -> bool:
    """Whether holding back ``optimizer.assign``/``assign_add``/``assign_sub`` holds back every
    write of ``optimizer.apply`` but the iteration count (put back from the failure message):
    one of the built-in optimizers above, exactly, without weight decay, EMA or gradient
    accumulation (they write directly) and without variables that are overwritten with
    their gradient (float8 scales). Others (Nadam, AdamW, user subclasses) wait for the
    check as a whole."""
    return (
        type(optimizer) in _WRITES_THROUGH_ASSIGN
        and getattr(optimizer, "weight_decay", None) is None
        and not getattr(optimizer, "use_ema", False)
        and not getattr(optimizer, "gradient_accumulation_steps", None)
        and not any(getattr(v, "overwrite_with_gradient", False) for v in variables)
    )


@contextlib.contextmanager
def _writes_wait(optimizer: Any, checks: Sequence[Any]) -> Iterator[None]:
    """Within the block, every ``optimizer.assign``, ``assign_add`` and ``assign_sub`` (the
    writes of a slot or variable) waits for ``checks``; the values they write are computed
    as soon as their inputs are. The instance's methods are shadowed for the block only
    (entered once, in cross-replica context: the replicas' threads see the shadows, and
    each write enters the control dependencies in the thread that makes it)."""
    names = ("assign", "assign_add", "assign_sub")

    def waiting(write: Any) -> Any:
        def write_after_checks(variable: Any, value: Any) -> Any:
            with tf.control_dependencies(checks):
                return write(variable, value)

        return write_after_checks

    own = {n: vars(optimizer)[n] for n in names if n in vars(optimizer)}  # set by the user
    for name in names:  # object.__setattr__: not through Keras's attribute tracking
        object.__setattr__(optimizer, name, waiting(getattr(optimizer, name)))
    try:
        yield
    finally:
        for name in names:
            if name in own:
                object.__setattr__(optimizer, name, own[name])
            else:
                object.__delattr__(optimizer, name)


class Failure(NamedTuple):
    """A failed non-finite check, read from its message (:func:`failure_of`)."""

    step: int  # the Trainer step
    index: int  # the optimizer's index
    bad_loss: bool  # the update's loss was not finite
    flags: list[bool]  # per variable (up to the last one with a gradient): not finite
    iterations: dict[int, int]  # optimizer index -> its count at the failed update (those
    # whose count may run ahead of the check, see module doc)


def failure_of(message: str) -> Failure | None:
    """The :class:`Failure` in the message of a failed non-finite Assert, or None if
    ``message`` is not one.

    Example:
        >>> failure = failure_of(
        ...     "assertion failed: [tapekit-nonfinite-step 1 0,1,2 1 0+1,1+4] [7] [0.5] [nan] "
        ...     "[2] [-1.5] [35] [3]\\n\\t [[{{node while/update/Assert}}]]"
        ... )
        >>> failure.flags, failure.iterations  # optimizer 0 had made 1 update, 1 made 4
        ([False, True, False], {0: 36, 1: 7})
        >>> failure_of("some other error") is None
        True
    """
    found = _FAILURE.search(message)
    if found is None:
        return None
    index, kept, with_loss, counted, step = found.groups()
    values, at = [], found.end()
    while (value := _VALUE.match(message, at)) is not None:  # the values that follow, only
        values.append(value.group(1))
        at = value.end()
    positions = [] if kept == "-" else [int(i) for i in kept.split(",")]
    parts = len(positions) + int(with_loss)
    bad = [not (abs(float(v)) < float("inf")) for v in values[:parts]]  # NaN compares False
    bad_loss = bool(int(with_loss)) and bool(bad) and bad.pop()
    flags = [False] * (max(positions, default=-1) + 1)
    for i, flag in zip(positions, bad):
        flags[i] = flag
    iterations = {}
    for entry, count in zip([] if counted == "-" else counted.split(","), values[parts:]):
        which, offset = entry.split("+")
        iterations[int(which)] = int(count) + int(offset)
    return Failure(int(step), int(index), bad_loss, flags, iterations)


def _sum(parts: list[tf.Tensor]) -> tf.Tensor:
    """``parts`` added up (one op; 0 for none): finite exactly when all of them are, short
    of an overflow of the sum."""
    return tf.add_n(parts) if parts else tf.zeros([])


_SUM = tf.distribute.ReduceOp.SUM


class StepFrame:
    """Trace-time: what the non-finite checks of one traced step share, read once at the
    step's start in cross-replica context (not once per update: every op on an update's
    critical path counts, see module doc).

    It holds the step counter's value and the iteration counts of the optimizers that may
    count an update before its check stops the call (``OptimizerUpdate.gate_writes``),
    and how many updates of each the step has traced so far. While the updates are
    straight-line code in the step's own graph, the count at an update is the count at the
    step's start plus that number; an update in a branch or loop of the step makes the
    numbers unknown, and from there on each update reads the counts itself.

    Args:
        step: The Trainer's step counter.
        updates: Every optimizer update of the Trainer.
    """

    def __init__(self, step: tf.Variable, updates: Sequence[OptimizerUpdate]) -> None:
        self.graph = tf.compat.v1.get_default_graph()
        self.step = tf.cast(tf.convert_to_tensor(step), tf.int64)
        self.counted = [u for u in updates if u.gate_writes]
        self.counts = [tf.convert_to_tensor(u.optimizer.iterations) for u in self.counted]
        self.done = [0] * len(self.counted)
        self.static = True

    def at_update(self, update: OptimizerUpdate) -> tuple[str, list[tf.Tensor]]:
        """``(counted, counts)`` for the message of ``update``'s check (see ``_FAILURE``),
        and counts ``update`` as traced."""
        if self.static and tf.compat.v1.get_default_graph() is not self.graph:
            self.static = False  # inside the step's control flow: how often it ran is unknown
        if self.static:
            counts, offsets = self.counts, self.done
        else:
            counts = [tf.convert_to_tensor(u.optimizer.iterations) for u in self.counted]
            offsets = [0] * len(self.counted)
        counted = ",".join(f"{u.index}+{k}" for u, k in zip(self.counted, offsets)) or "-"
        for i, u in enumerate(self.counted):
            if u is update:
                self.done[i] += 1
        return counted, list(counts)


class OptimizerUpdate:
    """Applies one optimizer to its variables from inside a compiled step (see module doc).

    Args:
        name: The optimizer's name (the model it trains), used in tags and messages.
        index: Its position among the Trainer's optimizers (for the non-finite diagnostics).
        optimizer: A built Keras optimizer (possibly a ``LossScaleOptimizer``).
        variables: The trainable variables it updates.
        names: Their readable names, same order.
        strategy: The Trainer's distribution strategy.
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
        clip_norm: float | None,
        clip_value: float | None,
        on_nonfinite: str | None,
        allow_unused: bool,
        source: str,
    ) -> None:
        self.name, self.index, self.optimizer = name, index, optimizer
        self.variables, self.names = list(variables), list(names)
        self.strategy = strategy
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
        self.gate_writes = _writes_suffice(optimizer, self.variables)
        self.last_grads: Any = None  # trace-time: the newest applied gradient (per replica)
        self.tokens: list[tf.Tensor] = []  # trace-time: one per apply of the current step
        self.checks: list[Any] = []  # trace-time: the Asserts of the current step's applies
        self.frame: StepFrame | None = None  # trace-time: the current step's (set by it)
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
        unclipped = grads
        grads, finite, parts = self._check_and_clip(grads, loss)
        if self.replicas > 1:  # one small collective: every replica takes the same decision
            loss_ok = tf.constant(True) if loss is None else tf.math.is_finite(loss)
            if self.loss_scaled:  # (parts hold no gradient norms then)
                grads_ok = self._all_finite(unclipped)
            else:
                grads_ok = tf.math.is_finite(_sum(parts[:-1] if loss is not None else parts))
            flags = tf.stack([grads_ok, loss_ok])
            bad = ctx.all_reduce(_SUM, 1.0 - tf.cast(flags, tf.float32))
            grads_agreed, loss_agreed = tf.equal(bad[0], 0.0), tf.equal(bad[1], 0.0)
            finite = tf.logical_and(grads_agreed, loss_agreed)
            if loss is not None:  # the reported loss entry: NaN if any replica's loss is
                entry = tf.where(loss_agreed, tf.zeros([], parts[-1].dtype), float("nan"))
                parts = [*parts[:-1], entry]
            if self.loss_scaled:  # the LossScaleOptimizer skips overflowed gradients itself
                finite = loss_agreed
                if not self.aggregate:  # see module doc: all replicas must skip together
                    grads = tf.cond(
                        grads_agreed, lambda: grads, lambda: [g + float("nan") for g in grads]
                    )
        with tf.name_scope("update"):
            token = ctx.merge_call(
                self._cross_apply, args=(grads, finite, parts, tuple(keep), loss is not None)
            )
        self.tokens.append(token)
        return token

    @staticmethod
    def _all_finite(grads: list[tf.Tensor]) -> tf.Tensor:
        if not grads:
            return tf.constant(True)
        return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))

    def _check_and_clip(
        self, grads: list[tf.Tensor], loss: tf.Tensor | None = None, check: bool = True
    ) -> tuple:
        """``(grads clipped, finite, parts)``: ``parts`` are scalars, each gradient's half
        squared norm (what ``tf.linalg.global_norm`` sums) and, with a ``loss``, last,
        ``0 * loss`` (NaN exactly when the loss is not finite); ``finite`` is whether their
        sum is finite, one test for all of them (a handful of ops: the check sits on the
        update's critical path). Under loss scaling ``parts`` is only the loss entry (the
        LossScaleOptimizer skips non-finite gradients itself); without ``check`` it is
        empty and ``finite`` True."""
        wide = tf.float32
        dense = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
        if any(t.dtype == tf.float64 for t in [*dense, *([] if loss is None else [loss])]):
            wide = tf.float64  # (a float64 loss or gradient may be finite beyond float32)
        halves, norm, scale = [], None, None
        if self.loss_scaled:
            scale = self.optimizer.dynamic_scale
        elif dense and (check or self.clip_norm is not None):
            halves = [tf.cast(tf.nn.l2_loss(g), wide) for g in dense]
        parts = list(halves) if check else []
        if check and loss is not None:
            parts.append(tf.cast(loss, wide) * 0.0)  # 0, or NaN: a large loss cannot overflow
        finite = tf.math.is_finite(_sum(parts)) if parts else tf.constant(True)
        if self.clip_norm is not None:
            if halves:
                norm = tf.sqrt(2.0 * tf.add_n(halves))
            limit = self.clip_norm * scale if scale is not None else self.clip_norm
            grads, _ = tf.clip_by_global_norm(grads, limit, use_norm=norm)
        if self.clip_value is not None:
            limit = self.clip_value * scale if scale is not None else self.clip_value
            grads = [tf.clip_by_value(g, -limit, limit) for g in grads]
        return grads, finite, parts

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
        parts: Any,
        keep: tuple,
        with_loss: bool,
    ) -> tf.Tensor:
        self.last_grads = (grads, keep)
        finite, parts = first_local(strategy, (finite, parts))
        if self.on_nonfinite == "skip":

            def run() -> tf.Tensor:
                if self._noinline is not None:  # one call op in the branch (see __init__)
                    self._noinline(list(grads), keep)
                else:
                    strategy.run(self._apply_local, args=(grads, keep, ()))
                return tf.constant(True)

            return tf.cond(finite, run, lambda: tf.constant(False))
        # "raise": the update waits for the check; a failure aborts the call (see module doc).
        # The message says which variables the entries of `parts` belong to (see failure_of).
        kept = "-" if self.loss_scaled else ",".join(map(str, keep)) or "-"
        frame = self.frame  # every checked step sets one (CompiledSteps._one_step)
        counted, counts = frame.at_update(self)
        check = tf.raw_ops.Assert(
            condition=finite,
            data=[
                tf.constant(f"{NONFINITE_MARK} {self.index} {kept} {int(with_loss)} {counted}"),
                frame.step,
                *parts,
                *counts,
            ],
        )
        if self.gate_writes:  # only the writes wait (module doc), in whichever thread they run
            with _writes_wait(self.optimizer, (check,)):
                strategy.run(self._apply_local, args=(grads, keep, ()))
        else:
            strategy.run(self._apply_local, args=(grads, keep, (check,)))
        self.checks.append(check)  # the step waits for it (the token does not)
        return finite  # True wherever the call goes on: a failed check stops it

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
