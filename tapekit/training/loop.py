"""The outer loop of ``Trainer.fit``: epochs, executions, data position, checkpoints, callbacks.

:class:`FitLoop` owns the loop and its state between ``fit`` calls; it talks to the compiled
steps (``train_function``), the checkpoints (``save``), the logging hook (``epoch_end``) and the
callbacks through those small interfaces only. Per compiled execution the host does one
function call and integer bookkeeping; the call returns the epoch's running sums with it, so
the host reads the device only at the start of a ``fit``, at checkpoints, and when an error
is raised.

Data position. The training stream is the data repeated (arrays: each pass in a seeded
order of its own); ``TrainState.position`` counts the batches consumed from it and
``TrainState.data_meta`` records what they were (batch size, examples, batches per epoch, steps
per epoch, accumulation). A ``fit`` on arrays builds the stream at ``position`` directly
(:func:`tapekit.training.data.array_stream`: it skips batch indices within one pass only). A
``fit`` on the same ``tf.data.Dataset`` object as the last one, which ended normally, continues
that fit's iterator; any other ``fit`` on a Dataset (after an error, after a resume) rebuilds the
stream and skips ``position`` batches, which replays them through the input pipeline. So a run
continued in the same process and a run resumed from a checkpoint both continue at the next
example of an uninterrupted run. (A dataset that shuffles with ``reshuffle_each_iteration`` draws
a new order for every new iterator: after a ``fit`` that raised, pass a freshly built one to
continue exactly, as a resumed process does.) If the data changed (different batch size, length
or steps per epoch): at an epoch boundary the new data starts at its first example (with a
warning: its shuffle order is not the old one); mid-epoch it is refused with an error that says
what changed, because no position would be right.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from . import data as _data
from .distribution import is_multi_worker
from .state import TrainState

__all__ = ["AUTO_MAX_STEPS", "AUTO_SECONDS", "AUTO_STEPS", "FitLoop", "auto_steps"]

AUTO_STEPS = 64
"""Steps of the automatic calls until one ran without tracing (a call that traced measures
nothing), and of every call in a multi-worker cluster: there the workers must make the same
calls, and their clocks differ."""

AUTO_SECONDS = 0.5
"""With ``steps_per_execution=None``, a compiled call runs about this long (or one step, if a
step takes longer): long enough that the host's share is well under 1% (it does one function
call and integer bookkeeping per call), short enough that the console, step callbacks and a
SIGTERM are served within about a second."""

AUTO_MAX_STEPS = 1024
"""At most this many steps per automatic call (a call of tiny steps is already far from the
host's overhead)."""


def auto_steps(steps: int, seconds: float) -> int:
    """Steps for the next automatic call after a call of ``steps`` steps took ``seconds``:
    the power of two nearest below what takes :data:`AUTO_SECONDS`, from 1 to
    :data:`AUTO_MAX_STEPS` (powers of two: a rate that wobbles does not change it every call).

    Example:
        >>> auto_steps(64, 0.17)   # 2.7 ms per step: 185 fit in half a second
        128
        >>> auto_steps(1, 2.0), auto_steps(1000, 0.01)
        (1, 1024)
    """
    per_step = max(seconds, 1e-9) / max(steps, 1)
    fits = AUTO_SECONDS / per_step
    if fits < 2:
        return 1
    return min(AUTO_MAX_STEPS, 1 << (int(fits).bit_length() - 1))


def _learning_rates(optimizers: dict[str, Any]) -> dict[str, float]:
    """Each optimizer's current learning rate, by optimizer name (the hook names the tags)."""
    out = {}
    for name, opt in optimizers.items():
        lr = opt.learning_rate
        out[name] = float(tf.convert_to_tensor(getattr(lr, "value", lr)).numpy())
    return out


class FitLoop:
    """Runs ``fit``'s epochs and keeps the loop's own state (see module doc).

    Args:
        steps: The Trainer's :class:`~tapekit.training.step.CompiledSteps`.
        state: Its counters (saved in checkpoints).
        strategy: The distribution strategy (to distribute the data).
        accumulate: Batches per optimizer step.
        steps_per_execution: Steps per compiled call (None: automatic).
    """

    def __init__(
        self,
        steps: Any,
        state: TrainState,
        *,
        strategy: tf.distribute.Strategy,
        accumulate: int,
        steps_per_execution: int | None,
    ) -> None:
        self.steps, self.state, self.strategy = steps, state, strategy
        self.accumulate, self.steps_per_execution = accumulate, steps_per_execution
        self.remaining_steps: int | None = None
        self._auto = AUTO_STEPS  # steps of the next automatic call (auto_steps), kept between fits
        self._adapt = not is_multi_worker(strategy)
        self._consts: dict[int, tf.Tensor] = {}
        # (dataset, meta, position, iterator) of the last fit that ended cleanly: a fit on the
        # same tf.data.Dataset object continues that iterator instead of skipping `position`
        # batches of a new one (which replays the input pipeline: seconds after many epochs).
        self._kept: tuple | None = None
        # (Dataset.from_tensors(arrays), batch size, shuffle, seed) of array data
        self._arrays: tuple | None = None

    def _constant(self, n: int) -> tf.Tensor:
        value = self._consts.get(n)
        if value is None:
            value = self._consts[n] = tf.constant(n, tf.int64)
        return value

    # -- data ------------------------------------------------------------------------------

    def plan(
        self, data: Any, *, batch_size: int | None, steps_per_epoch: int | None, shuffle: bool
    ) -> tuple[tf.data.Dataset | None, int, list[int] | None]:
        """``(dataset, steps per epoch, data meta)`` for ``data`` (``None``: no data)."""
        self._arrays = None
        if data is None:
            if steps_per_epoch is None:
                raise ValueError(
                    "fit(None, ...) trains a step that makes its own data, so it needs "
                    "steps_per_epoch=N (optimizer steps per epoch); none was given."
                )
            return None, _data.steps_per_epoch(None, steps_per_epoch, 1), None
        if isinstance(data, (tf.data.Dataset, tf.distribute.DistributedDataset)):
            ds = _data.as_dataset(data, batch_size=batch_size)
            batches = int(ds.cardinality())  # -1: infinite, -2: unknown (counted if needed)
            if batches == tf.data.UNKNOWN_CARDINALITY and steps_per_epoch is None:
                batches = _data.count_batches(ds)
        else:  # arrays, converted once: the stream is _data.array_stream (any position at once)
            _data.check_arrays(data, batch_size)
            whole = tf.data.Dataset.from_tensors(data)  # tf.data's own reading of the nest
            examples = int(tf.nest.flatten(whole.element_spec)[0].shape[0])
            batches = -(-examples // int(batch_size))
            seed = int(self.state.data_seed.numpy())
            self._arrays = (whole, int(batch_size), bool(shuffle), seed)
        if batches == 0:
            raise ValueError(
                "The training data has no batches (an empty dataset or arrays with 0 examples), "
                "so there is nothing to train on. Check the data pipeline (e.g. a filter that "
                "removes everything) or pass fit(None, steps_per_epoch=N) for a step without data."
            )
        if self._arrays is not None:  # the batches' spec, as the stream will give them
            ds = _data.array_stream(whole, batch_size=int(batch_size), shuffle=False, seed=0)
        per_epoch = _data.steps_per_epoch(ds, steps_per_epoch, self.accumulate, batches=batches)
        meta = [batch_size or -1, _data.example_count(data), batches, per_epoch, self.accumulate]
        return ds, per_epoch, meta

    def _position(self, meta: list[int] | None) -> int:
        """The batches to skip in the new stream; checks and records what they mean."""
        if meta is None:
            return 0
        position = int(self.state.position.numpy())
        recorded = [int(v) for v in self.state.data_meta.numpy()]
        if position and any(recorded) and recorded != meta:
            changed = [
                f"{field} {old} -> {new}"
                for field, old, new in zip(TrainState.DATA_FIELDS, recorded, meta)
                if old != new
            ]
            if int(self.state.epoch_step.numpy()) != 0:
                epoch = int(self.state.epoch.numpy()) + 1
                raise ValueError(
                    f"Trainer: cannot continue in the middle of epoch {epoch}: the data position "
                    f"({position} batches) was recorded for other data "
                    f"({', '.join(changed)}), so no position in this data is the next example. "
                    "Pass the same data, batch_size, steps_per_epoch and accumulate_steps as the "
                    "run that was interrupted, or start afresh with a new checkpoint_dir (or "
                    "delete its checkpoints)."
                )
            warnings.warn(
                f"Trainer: the training data changed ({', '.join(changed)}); epoch "
                f"{int(self.state.epoch.numpy()) + 1} starts at the new data's first batch (its "
                "shuffle order is not the one an uninterrupted run would have used).",
                stacklevel=4,
            )
            position = 0
        self.state.position.assign(position)
        self.state.data_meta.assign(np.asarray(meta, np.int64))
        return position

    def _stream(self, ds: tf.data.Dataset | None, meta: list[int] | None) -> Any:
        if ds is None:
            return None
        skip = self._position(meta)
        kept, self._kept = self._kept, None
        if kept is not None and kept[0] is ds and kept[1] == meta and kept[2] == skip:
            return kept[3]  # the last fit's stream, at the very next batch: nothing to skip
        if self._arrays is not None:
            data, batch_size, shuffle, seed = self._arrays
            stream = _data.array_stream(
                data, batch_size=batch_size, shuffle=shuffle, seed=seed, start=skip
            )
        else:
            stream = ds.repeat()
            if skip:
                stream = stream.skip(skip)
        return iter(_data.distribute(stream, self.strategy))

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        plan: tuple[tf.data.Dataset | None, int, list[int] | None],
        *,
        epochs: int,
        callbacks: Any,
        validation: Callable[[], dict[str, float]] | None,
        checkpoints: Any,
        checkpoint_every: int | None,
        hook: Any,
        guard: Callable[..., Any],
        should_stop: Callable[[], bool],
        printer: Any = None,
        interrupt: Callable[[Callable[[], str | None]], None] | None = None,
    ) -> None:
        """Train until ``epochs`` epochs are complete (see ``Trainer.fit``).

        Args:
            plan: What :meth:`plan` returned for the data.
            epochs: The epoch to stop after.
            callbacks: A :class:`~tapekit.training.callbacks.CallbackList`.
            validation: Returns the validation values at an epoch end (or None).
            checkpoints: Has ``save(step)`` (or None: no checkpoints).
            checkpoint_every: Steps between checkpoints (None: epoch ends only).
            hook: The logging hook (``write_graph``, ``epoch_end``, ``flush``, ``close``).
            guard: ``guard(fn, *args)`` calls a compiled function, translating its errors.
            should_stop: Asked after every execution and epoch: stop now?
            printer: The console (``update(in_epoch, read_loss)`` after every execution) or
                None.
            interrupt: ``interrupt(save_now)`` after every execution and epoch end: may save
                at the exact position (``save_now()`` returns the checkpoint path or None) and
                raise, e.g. on SIGTERM (see :mod:`tapekit.training.preemption`).
        """
        ds, per_epoch, meta = plan
        state, steps = self.state, self.steps
        optimizers = {name: u.optimizer for name, u in steps.updates.items()}
        call, means = steps.call, steps.train_means
        iterator = self._stream(ds, meta)
        fixed = self.steps_per_execution or (1 if callbacks.every_step else None)
        train_fn = steps.train_function()
        step = int(state.step.numpy())
        first_epoch, in_epoch = int(state.epoch.numpy()), int(state.epoch_step.numpy())
        base, start_step = int(state.position.numpy()), step  # batches = base + k * steps done
        k = self.accumulate if ds is not None else 0
        every = checkpoint_every if checkpoints is not None else None
        last_saved = step
        self.remaining_steps = (epochs - first_epoch) * per_epoch - in_epoch

        def save(in_epoch: int) -> str:
            state.epoch_step.assign(in_epoch)
            state.position.assign(base + k * (step - start_step))
            return checkpoints.save(step)

        def save_now() -> str | None:  # the exact position (e.g. on SIGTERM)
            if checkpoints is None:
                return None
            return checkpoints.latest() if last_saved == step else save(in_epoch)

        try:
            callbacks.on_train_begin()
            for epoch in range(first_epoch, epochs):
                callbacks.on_epoch_begin(epoch)
                if in_epoch == 0:
                    means.reset()
                    if call is not None:
                        call.reset_metrics()
                start, done, first, stopped = time.perf_counter(), 0, None, False
                after = None  # what the epoch's last call returned: (means, skipped)
                while in_epoch < per_epoch:
                    n = min(fixed or self._auto, per_epoch - in_epoch)
                    if every:
                        n = min(n, every - step % every)
                    due = callbacks.next_step_end(step)  # a step callback's next step
                    if due is not None:
                        n = min(n, due - step)
                    traces, called = train_fn.experimental_get_tracing_count(), time.perf_counter()
                    after = guard(train_fn, iterator, self._constant(n))
                    took = time.perf_counter() - called
                    if (  # a fair sample of the rate: no tracing in it, not a short remainder
                        fixed is None
                        and self._adapt
                        and train_fn.experimental_get_tracing_count() == traces
                        and (n == self._auto or n >= 8)
                    ):
                        self._auto = auto_steps(n, took)
                    if hook is not None and not hook.graph_written:
                        concrete = train_fn.get_concrete_function(iterator, self._constant(n))
                        hook.write_graph(concrete)
                    in_epoch, step, done = in_epoch + n, step + n, done + n
                    self.remaining_steps -= n
                    if first is None:  # the first call may include tracing: rate excludes it
                        first = (done, time.perf_counter())
                    if every and step % every == 0:
                        save(in_epoch)
                        last_saved = step
                    callbacks.on_step_end(step, {"step": step})
                    if printer is not None:  # redraws (and reads the loss) a few times a second
                        sums = after[0]  # returned by the call: no device read
                        printer.update(in_epoch, lambda s=sums: means.means_of(s).get("loss"))
                    if interrupt is not None:
                        interrupt(save_now)
                    if should_stop():
                        stopped = True
                        break
                if stopped and in_epoch < per_epoch:  # stopped mid-epoch: keep the position
                    state.epoch_step.assign(in_epoch)
                    state.position.assign(base + k * (step - start_step))
                    if checkpoints is not None and last_saved != step:
                        save(in_epoch)
                    break
                loop_end = time.perf_counter()
                if after is None:  # no call in this epoch (it was complete already)
                    logs, skipped = means.result(), int(state.skipped.numpy())
                else:  # read by the call: no device read (see CompiledSteps.train_function)
                    logs, skipped = means.means_of(after[0]), int(after[1])
                logs.update(call.metric_results() if call is not None else {})
                val_logs = validation() if validation is not None else None
                if val_logs is not None:
                    logs.update({f"val_{key}": v for key, v in val_logs.items()})
                if skipped:
                    logs["skipped_steps"] = float(skipped)
                rate = done / max(loop_end - start, 1e-9)
                if first is not None and done > first[0] and epoch == first_epoch:
                    rate = (done - first[0]) / max(loop_end - first[1], 1e-9)
                logs["steps_per_second"] = rate
                state.epoch.assign_add(1)
                in_epoch = 0
                state.epoch_step.assign(0)
                state.position.assign(base + k * (step - start_step))
                if checkpoints is not None and last_saved != step:
                    save(0)
                    last_saved = step
                if hook is not None:
                    train_vals = {
                        key: v
                        for key, v in logs.items()
                        if not key.startswith("val_") and key != "steps_per_second"
                    }
                    hook.epoch_end(
                        step,
                        train_vals,
                        val_logs,
                        learning_rates=_learning_rates(optimizers),
                        steps_per_second=rate,
                    )
                callbacks.on_epoch_end(epoch, logs)
                if interrupt is not None:
                    interrupt(save_now)
                if should_stop():
                    break
            if hook is not None:
                hook.flush()
            callbacks.on_train_end()
            if iterator is not None and self._arrays is None:  # a user's Dataset
                self._kept = (ds, meta, base + k * (step - start_step), iterator)
        except BaseException:
            done = int(state.step.numpy()) - step  # steps the failing call completed
            state.epoch_step.assign(in_epoch + done)
            state.position.assign(base + k * (step + done - start_step))
            if hook is not None:
                hook.close()
            raise
