"""The host side of ``Trainer.fit``: epochs, executions, checkpoints, callbacks and logs.

Per compiled execution the host does one function call and integer bookkeeping; it reads the
device only at epoch ends (the epoch averages), at checkpoints, and when an error is raised.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from . import data as _data
from .callbacks import CallbackList, History
from .distribution import is_chief, is_multi_worker
from .preemption import Preempted, StopSignals
from .progress import ProgressPrinter

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["AUTO_STEPS", "run_fit"]

AUTO_STEPS = 64
"""Steps per compiled call when ``steps_per_execution=None`` (the host only counts them)."""


def _constant(cache: dict[int, tf.Tensor], n: int) -> tf.Tensor:
    value = cache.get(n)
    if value is None:
        value = cache[n] = tf.constant(n, tf.int64)
    return value


def _learning_rate(optimizer: Any) -> float:
    lr = optimizer.learning_rate
    return float(tf.convert_to_tensor(getattr(lr, "value", lr)).numpy())


def _save(ckpt: Any, state: Any, step: int, epoch_step: int, position: int) -> str:
    """Write a checkpoint; the host-kept counters go into the state first."""
    state.epoch_step.assign(epoch_step)
    state.position.assign(position)
    return ckpt.save(step)


def _stream(trainer: Trainer, data: Any, batch_size: int | None, shuffle: bool) -> tuple:
    """The repeated, distributed training stream; skips what a resumed run already consumed."""
    state = trainer._state
    ds = _data.as_dataset(
        data, batch_size=batch_size, shuffle=shuffle, seed=int(state.data_seed.numpy())
    )
    skip = trainer._resume_position or 0
    trainer._resume_position = None
    state.position.assign(skip)
    stream = ds.repeat()
    if skip:
        stream = stream.skip(skip)
    return ds, iter(_data.distribute(stream, trainer.strategy))


def _nothing_left(trainer: Trainer, epochs: int) -> History:
    """``fit(epochs=n)`` when n epochs are already complete: say so (loudly) and return."""
    done = trainer.epoch
    message = (
        f"fit(epochs={epochs}) has nothing to train: {done} epoch(s) are already complete "
        f"(step {trainer.global_step}). `epochs` is the epoch to stop after, counted over every "
        "fit call and resume of this run (as with Keras' BackupAndRestore), not epochs more; "
        f"pass epochs={done + epochs} to train {epochs} more."
    )
    warnings.warn(message, UserWarning, stacklevel=4)  # points at the user's fit call
    history = History()
    history.set_trainer(trainer)
    history.on_train_end()
    return history


def _on_signal(
    trainer: Trainer, stop: StopSignals, save: Callable[[], str | None], printing: bool
) -> None:
    """At an execution boundary after SIGTERM/SIGINT: save (SIGTERM), flush, raise."""
    hook = trainer._hook
    if stop.requested == "SIGTERM":
        path = save()
        if hook is not None:
            hook.flush()
        if printing:
            where = f"saved {path}" if path else "no checkpoint_dir, nothing saved"
            print(f"SIGTERM at step {trainer.global_step}: {where}; exiting.", flush=True)
        raise Preempted(path, trainer.global_step)
    if hook is not None:
        hook.flush()
    raise KeyboardInterrupt(f"SIGINT at step {trainer.global_step}")


def run_fit(
    trainer: Trainer,
    data: Any,
    *,
    epochs: int,
    batch_size: int | None,
    steps_per_epoch: int | None,
    validation_data: Any,
    validation_batch_size: int | None,
    shuffle: bool,
    verbose: int,
) -> History:
    """Implementation of :meth:`tapekit.Trainer.fit` (see there)."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit needs epochs >= 1 (an int), got {epochs!r}.")
    spec_ds = _data.as_dataset(data, batch_size=batch_size, argument="data")
    trainer._ensure_ready(spec_ds.element_spec)
    steps, state = trainer._steps, trainer._state
    per_epoch = _data.steps_per_epoch(spec_ds, steps_per_epoch, trainer.accumulate_steps)
    val_ds = None
    if validation_data is not None:
        val_ds = _data.as_dataset(
            validation_data,
            argument="validation_data",
            batch_size=None
            if isinstance(validation_data, tf.data.Dataset)
            else validation_batch_size or batch_size,
        )
        val_steps = _data.steps_per_epoch(val_ds, None, 1)
    if trainer.epoch >= epochs and int(state.epoch_step.numpy()) == 0:
        return _nothing_left(trainer, epochs)
    resumed_from = trainer.restored_from if trainer._resume_position is not None else None
    _, iterator = _stream(trainer, data, batch_size, shuffle)

    history = History()
    printing = verbose and is_chief(trainer.strategy)  # one console for the whole cluster
    printer = None
    if printing:
        printer = ProgressPrinter(
            epochs, verbose=verbose, steps_per_epoch=per_epoch, resumed_from=resumed_from
        )
    # History after the user's callbacks (as in Keras): it sees what they add to the logs.
    cbs = [*trainer.callbacks, history] + ([printer] if printer else [])
    callbacks = CallbackList(cbs, trainer)
    trainer.stop_training = False
    per_call = trainer.steps_per_execution or (1 if callbacks.has_step_hooks else AUTO_STEPS)
    step = trainer.global_step
    first_epoch, in_epoch = trainer.epoch, int(state.epoch_step.numpy())
    ckpt, every = trainer._checkpoints, trainer._ckpt_every
    base, start_step = int(state.position.numpy()), step  # batches = base + k * steps done
    k = trainer.accumulate_steps
    hook, consts = trainer._hook, {}
    last_saved = step

    def save_now() -> str | None:  # the exact position, for a stop on SIGTERM
        if ckpt is None:
            return None
        if last_saved == step:
            return ckpt.latest()
        return _save(ckpt, state, step, in_epoch, base + k * (step - start_step))

    stop = StopSignals(enabled=not is_multi_worker(trainer.strategy))
    try:
        stop.__enter__()
        callbacks.on_train_begin()
        for epoch in range(first_epoch, epochs):
            callbacks.on_epoch_begin(epoch)
            if in_epoch == 0:
                steps.train_means.reset()
                trainer._call.reset_metrics()
            start, done, first = time.perf_counter(), 0, None
            while in_epoch < per_epoch:
                n = min(per_call, per_epoch - in_epoch)
                if ckpt is not None and every:
                    n = min(n, every - step % every)
                trainer._run(steps.train_fn, iterator, _constant(consts, n))
                if hook is not None and not hook.graph_written:
                    hook.write_graph(
                        steps.train_fn.get_concrete_function(iterator, _constant(consts, n))
                    )
                in_epoch, step, done = in_epoch + n, step + n, done + n
                if first is None:  # the first call may include tracing: rate excludes it
                    first = (done, time.perf_counter())
                if ckpt is not None and every and step % every == 0:
                    _save(ckpt, state, step, in_epoch, base + k * (step - start_step))
                    last_saved = step
                callbacks.on_step_end(step, {"step": step})
                if printer is not None:  # redraws (and reads the loss) a few times a second
                    printer.update(in_epoch, lambda: steps.train_means.result()["loss"])
                if stop.requested:
                    _on_signal(trainer, stop, save_now, bool(printing))
            loop_end = time.perf_counter()
            elapsed = max(loop_end - start, 1e-9)
            logs = {**steps.train_means.result(), **trainer._call.metric_results()}
            val_logs = None
            if val_ds is not None:
                val_logs = trainer.evaluate(val_ds, steps=val_steps)
                logs.update({f"val_{k}": v for k, v in val_logs.items()})
            if trainer.skipped_steps:
                logs["skipped_steps"] = float(trainer.skipped_steps)
            rate = done / elapsed
            if first is not None and done > first[0] and epoch == first_epoch:
                rate = (done - first[0]) / max(loop_end - first[1], 1e-9)
            logs["steps_per_second"] = rate
            state.epoch.assign_add(1)
            state.epoch_step.assign(0)
            in_epoch = 0
            trainer._remaining_steps = (epochs - epoch - 1) * per_epoch
            if ckpt is not None and last_saved != step:
                _save(ckpt, state, step, 0, base + k * (step - start_step))
                last_saved = step
            if hook is not None:
                train_vals = {
                    k: v
                    for k, v in logs.items()
                    if not k.startswith("val_") and k != "steps_per_second"
                }
                extra = {
                    "learning_rate": _learning_rate(trainer.optimizer),
                    "steps_per_second": rate,
                }
                hook.epoch_end(step, train_vals, val_logs, extra)
            callbacks.on_epoch_end(epoch, logs)
            if stop.requested:
                _on_signal(trainer, stop, save_now, bool(printing))
            if trainer.stop_training:
                break
        if hook is not None:
            hook.flush()
        callbacks.on_train_end()
    except BaseException:
        done = trainer.global_step - step  # steps the failing call completed
        state.epoch_step.assign(in_epoch + done)
        state.position.assign(base + k * (step + done - start_step))
        if hook is not None:
            hook.close()
        raise
    finally:
        stop.__exit__(None, None, None)
    return history
