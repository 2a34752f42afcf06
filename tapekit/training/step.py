"""The compiled training and evaluation functions of a Trainer (one cache for all of them).

One training step, for any strategy (the default one, ``MirroredStrategy`` and
``MultiWorkerMirroredStrategy`` alike), whatever the step function is (the default
:class:`~tapekit.training.supervised.SupervisedStep` or a user-written step):

1. In each replica (``strategy.run``) the step function runs with a
   :class:`~tapekit.training.context.StepContext`. It hands gradients to named optimizers
   (:mod:`tapekit.training.update`), each update checked, clipped and applied on the spot.
   The scalars it returns are weighted by the replica's share of the step's examples and
   all-reduced, so every replica holds the global means.
2. In cross-replica context the step waits on every update's token, then advances the
   counters and adds the means to the running epoch averages (with ``on_nonfinite="skip"`` a
   step with a skipped update counts as skipped instead). The optional logging hook gets the
   means and, per optimizer, the newest applied gradient (aggregated only on logging steps).

Steps run in a ``tf.while_loop`` inside the function, ``steps_per_execution`` at a time, pulling
batches from a (distributed) iterator whose element shapes have an unknown batch dimension: a
partial last batch never retraces. Without data (``fit(None, ...)``) the step gets ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from ..errors import NonFiniteError, describe_received
from .calls import LossCall
from .context import StepContext
from .data import distribute, leading_size, relaxed_spec
from .distribution import first_local
from .state import RunningMeans, TrainState
from .update import Failure, OptimizerUpdate, StepFrame

__all__ = ["CompiledSteps"]

_SUM = tf.distribute.ReduceOp.SUM


def _compiled(fn: Callable, **kwargs: Any) -> Any:
    """``tf.function(fn)`` without AutoGraph: the loops below are written as
    ``tf.while_loop``, and the user's step and ``loss_fn`` are converted where they are called
    (``parts._UserStep``, ``calls.LossCall``). Converting tapekit's own functions from the top
    took most of a GAN step's tracing."""
    return tf.function(fn, autograph=False, **kwargs)


def _repeat(num_steps: tf.Tensor, body: Callable[[], Any]) -> None:
    """``body()`` ``num_steps`` times in a ``tf.while_loop`` (its stateful ops run in order,
    iteration after iteration, as in AutoGraph's ``for _ in tf.range(num_steps)``)."""

    def step(i: tf.Tensor) -> tf.Tensor:
        body()
        return i + 1

    n = tf.cast(num_steps, tf.int64)
    tf.while_loop(
        lambda i: i < n,
        step,
        [tf.constant(0, tf.int64)],
        maximum_iterations=tf.cast(tf.maximum(n, 0), tf.int32),
    )


def _reaches(outputs: list[tf.Tensor], losses: list[tf.Tensor]) -> list[bool]:
    """For each of ``losses``, whether ``outputs`` are computed from it (in the traced graph;
    a loss inside the step's own control flow counts as not reached: its body is a graph of
    its own)."""
    seen: set = set()
    todo = [t for t in outputs if isinstance(t, tf.Tensor)]
    while todo:
        t = todo.pop()
        if t.ref() not in seen:
            seen.add(t.ref())
            todo.extend(t.op.inputs)
    return [isinstance(loss, tf.Tensor) and loss.ref() in seen for loss in losses]


class CompiledSteps:
    """Builds, caches and runs the compiled functions of one Trainer.

    ``prepare(element_spec)`` must run first: it traces the step once (nothing runs) to learn
    the names of the values it reports and to find trainable variables with no gradient.

    Args:
        step_fn: ``step_fn(ctx, batches | None) -> {name: scalar}``.
        source: The user function's name, for messages.
        models: The models by name (``ctx.models``).
        updates: The optimizer updates by name.
        call: The ``loss_fn`` call used by evaluation (None: no evaluation).
        strategy: The distribution strategy.
        state: The Trainer's counters.
        accumulate: Batches per step.
    """

    def __init__(
        self,
        *,
        step_fn: Callable,
        source: str,
        models: Mapping[str, Any],
        updates: Mapping[str, OptimizerUpdate],
        call: LossCall | None,
        strategy: tf.distribute.Strategy,
        state: TrainState,
        accumulate: int,
    ) -> None:
        self.step_fn, self.source, self.call = step_fn, source, call
        self.models, self.updates = dict(models), dict(updates)
        self.strategy, self.state = strategy, state
        self.accumulate = accumulate
        self.replicas = strategy.num_replicas_in_sync
        self.hook: Any = None  # logging hook (see summaries.BoardHook.train_step)
        self.value_names: list[str] | None = None
        self.train_means: RunningMeans | None = None
        self.eval_means: RunningMeans | None = None
        self.reported: list[bool] | None = None  # per ctx.minimize call: its loss is reported
        self._fns: dict[Any, Any] = {}

    # -- the one cache ---------------------------------------------------------------------

    def _function(self, key: Any, build: Callable[[], Any]) -> Any:
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = build()
        return fn

    def train_function(self) -> Any:
        """The compiled ``fn(iterator | None, num_steps)`` running ``num_steps`` steps.

        One function (one graph) for every ``num_steps``, so results do not depend on how
        the steps are grouped into calls (``steps_per_execution``, checkpoints, callbacks).
        It returns what the host reads after a call, read at its end: ``(means, skipped)``,
        ``train_means.packed()`` and the skipped steps' count (reading them from the host
        afterwards would cost an eager op each, a millisecond for the first on a busy
        machine, per call).
        """
        return self._function(("train",), lambda: _compiled(self._train_loop))

    def batch_function(self, spec: Any) -> Any:
        """The compiled ``fn(batch)`` for one user-driven step (``Trainer.step``)."""
        if self.replicas > 1 or spec is None:
            return self._function(("batch",), lambda: _compiled(self._train_batch))
        key = ("batch", repr((tf.nest.flatten(spec), tf.nest.map_structure(lambda _: 0, spec))))
        return self._function(
            key, lambda: _compiled(self._train_batch, input_signature=[relaxed_spec(spec)])
        )

    def eval_function(self) -> Any:
        """The compiled ``fn(iterator, num_steps)`` evaluating ``num_steps`` batches."""
        return self._function(("eval",), lambda: _compiled(self._eval_loop))

    def set_hook(self, hook: Any) -> None:
        """Install the logging hook; the compiled train functions are rebuilt to include it."""
        self.hook = hook
        self._fns = {k: f for k, f in self._fns.items() if k[0] == "eval"}

    def trace_counts(self) -> dict[str, int]:
        """How many times each kind of compiled function was traced (for tests/diagnostics)."""
        counts: dict[str, int] = {}
        for key, fn in self._fns.items():
            counts[key[0]] = counts.get(key[0], 0) + int(fn.experimental_get_tracing_count())
        return counts

    # -- preparation -------------------------------------------------------------------------

    def prepare(self, element_spec: Any) -> None:
        """Build the optimizers; trace the step on ``element_spec`` (nothing runs) to check it;
        create the sums."""
        if self.value_names is not None:
            return
        with self.strategy.scope():
            for u in self.updates.values():
                u.optimizer.build(u.variables)
        found: dict[str, Any] = {}

        def probe(batches: Any) -> None:
            ctx = self._context(1.0, tf.constant(1.0))
            values = self._checked(self.step_fn(ctx, batches))
            found["names"] = list(values)
            found["reported"] = _reaches(list(values.values()), ctx.minimized)

        spec = None
        if element_spec is not None:
            spec = [relaxed_spec(element_spec)] * self.accumulate
        for u in self.updates.values():
            u.probing = True
        try:
            _compiled(probe).get_concrete_function(spec)
        finally:
            for u in self.updates.values():
                u.probing = False
        if self.call is not None:
            self.call.resolve_pending(self.strategy)
        names, self.reported = found["names"], found["reported"]
        self.value_names = (["loss"] if "loss" in names else []) + [n for n in names if n != "loss"]
        eval_names = self.value_names if self.call is not None else []
        with self.strategy.scope():
            self.train_means = RunningMeans(self.value_names, name="train_means")
            self.eval_means = RunningMeans(eval_names, name="eval_means")

    def _checked(self, values: Any) -> dict[str, tf.Tensor]:
        if not isinstance(values, Mapping):
            raise TypeError(
                f"The training step `{self.source}` must return a dict of scalars to report "
                f"(e.g. {{'loss': loss}}), but returned {describe_received(values)}. Add "
                "`return {...}` at its end ({} reports nothing)."
            )
        out = {}
        for k, v in values.items():
            v = tf.convert_to_tensor(v)
            if not v.dtype.is_floating or v.shape.rank != 0:
                raise ValueError(
                    f"The training step `{self.source}` must return float scalars, but "
                    f"{k!r} has dtype {v.dtype.name} and shape {tuple(v.shape)}. Reduce it with "
                    "tf.reduce_mean (the Trainer averages over replicas and steps itself)."
                )
            out[str(k)] = tf.cast(v, tf.float32)
        return out

    def _context(self, share: Any, examples: tf.Tensor) -> StepContext:
        return StepContext(
            models=self.models,
            updates=self.updates,
            rng=self.state.rng,
            step=tf.convert_to_tensor(self.state.step),
            share=share,
            examples=examples,
            replicas=self.replicas,
            reported=self.reported,
        )

    # -- one step ----------------------------------------------------------------------------

    def _replica_step(self, batches: list[Any] | None) -> tuple:
        ctx = tf.distribute.get_replica_context()
        if batches is None:
            share, examples = (1.0 if self.replicas == 1 else 1.0 / self.replicas), 1.0
            examples = tf.constant(examples)
        else:
            local = tf.add_n([leading_size(b) for b in batches])
            examples = ctx.all_reduce(_SUM, local) if self.replicas > 1 else local
            share = 1.0 if self.replicas == 1 else local / tf.maximum(examples, 1.0)
        values = self._checked(self.step_fn(self._context(share, examples), batches))
        if self.replicas > 1:  # global means in every replica, in one small collective
            values = {k: tf.where(share > 0, v * share, 0.0) for k, v in values.items()}
            values = ctx.all_reduce(_SUM, values)
        return values, examples

    def _one_step(self, batches: list[Any] | None) -> dict[str, tf.Tensor]:
        updates = list(self.updates.values())
        frame = None
        if any(u.on_nonfinite == "raise" for u in updates):  # read once for all checks
            frame = StepFrame(self.state.step, updates)
        for u in updates:
            u.tokens, u.checks, u.last_grads, u.frame = [], [], None, frame
        values, examples = self.strategy.run(self._replica_step, args=(batches,))
        values, examples = first_local(self.strategy, (values, examples))
        tokens = [t for u in updates for t in u.tokens]
        checks = [c for u in updates for c in u.checks]
        written = []
        if self.hook is not None:  # every worker runs it: its all-reduce is a collective
            logged = {n: u for n, u in self.updates.items() if u.last_grads is not None}
            written = [self.hook.train_step(self.state.step, values, logged)]

        def count() -> tf.Tensor:
            self.train_means.add({k: v * examples for k, v in values.items()}, examples)
            self.state.step.assign_add(1)
            return tf.constant(True)

        def skip() -> tf.Tensor:
            self.state.skipped.assign_add(1)
            self.state.step.assign_add(1)
            return tf.constant(False)

        if any(u.on_nonfinite == "skip" for u in updates):
            with tf.control_dependencies(written):  # a failing step is logged first
                applied = tf.reduce_all(tf.stack(tokens)) if tokens else tf.constant(True)
            tf.cond(applied, count, skip)
        else:  # after every check: a failed one stopped the call already (see update.py)
            with tf.control_dependencies(tokens + checks + written):
                count()
        return values

    def _pull(self, iterator: Any) -> list[Any] | None:
        return None if iterator is None else [next(iterator) for _ in range(self.accumulate)]

    def _train_loop(self, iterator: Any, num_steps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with self.strategy.scope():  # cross-replica context: Keras must not all-reduce again
            _repeat(num_steps, lambda: self._one_step(self._pull(iterator)))
            return self.train_means.packed(), tf.convert_to_tensor(self.state.skipped)

    def _train_batch(self, batch: Any) -> dict[str, tf.Tensor]:
        with self.strategy.scope():
            return self._one_step(None if batch is None else [batch])

    # -- evaluation --------------------------------------------------------------------------

    def _replica_eval(self, batch: Any) -> tuple:
        n = leading_size(batch)
        loss, extras, target = self.call(batch, training=False)
        self.call.update_metrics(batch, target)
        sums = {k: v * n for k, v in {"loss": loss, **extras}.items()}
        if self.replicas > 1:
            sums = {k: tf.where(n > 0, v, 0.0) for k, v in sums.items()}
            sums, n = tf.distribute.get_replica_context().all_reduce(_SUM, (sums, n))
        return sums, n

    def evaluate(self, dataset: tf.data.Dataset, steps: int) -> dict[str, float]:
        """Loss, extras and metrics over ``steps`` batches of ``dataset`` (means)."""
        self.eval_means.reset()
        self.call.reset_metrics()
        iterator = iter(distribute(dataset, self.strategy))
        self.eval_function()(iterator, tf.constant(steps, tf.int64))
        return {**self.eval_means.result(), **self.call.metric_results()}

    def _eval_loop(self, iterator: Any, num_steps: tf.Tensor) -> None:
        def one() -> None:
            sums, n = self.strategy.run(self._replica_eval, args=(next(iterator),))
            self.eval_means.add(*first_local(self.strategy, (sums, n)))

        with self.strategy.scope():
            _repeat(num_steps, one)

    # -- helpers for the Trainer -------------------------------------------------------------

    def split_batch(self, batch: Any) -> Any:
        """Spread one global batch over the replicas (for ``Trainer.step``)."""
        batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
        if self.replicas == 1:
            return batch
        size = int(tf.nest.flatten(batch)[0].shape[0])

        def part(ctx: tf.distribute.ReplicaContext) -> Any:
            r, n = ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
            lo, hi = r * size // n, (r + 1) * size // n
            return tf.nest.map_structure(lambda t: t[lo:hi], batch)

        return self.strategy.experimental_distribute_values_from_function(part)

    def restore_iterations(self, counts: Mapping[int, int]) -> None:
        """Put back the iteration counts (optimizer index -> count) as they were at an update
        that failed its check (an optimizer may count an update before the check stops it,
        see update.py)."""
        updates = list(self.updates.values())
        for index, count in counts.items():
            updates[index].optimizer.iterations.assign(count)

    def nonfinite_error(self, failure: Failure, saved: str) -> NonFiniteError:
        """The error for the update that failed (``failure`` is :func:`failure_of`'s)."""
        step, index, bad_loss, flags = failure.step, failure.index, failure.bad_loss, failure.flags
        update = list(self.updates.values())[index]
        names = [n for n, bad in zip(update.names, flags) if bad]
        step = step if step >= 0 else int(self.state.step.numpy())
        several = len(self.updates) > 1
        loss = f"the loss of the '{update.name}' update" if several else "the loss"
        what = ([loss] if bad_loss else []) + (
            [f"the gradients of {', '.join(names)}"] if names else []
        )
        found = " and ".join(what) or "the global gradient norm (it overflowed)"
        applied = (
            f"That '{update.name}' update was not applied (earlier updates of the step were, in "
            "memory)"
            if several
            else "That step was not applied"
        )
        return NonFiniteError(
            f"Trainer: training produced non-finite values (NaN or inf) at step {step} in "
            f"{found}. {applied}; {saved}. Lower the learning rate, clip gradients "
            "(clip_norm=...), check the data for NaN/inf, or pass on_nonfinite='skip' to skip "
            "such steps.",
            step=step,
            variables=names,
        )
