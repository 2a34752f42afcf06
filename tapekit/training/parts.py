"""Assembling a Trainer from its arguments: models, optimizers, updates, the step, the state.

``assemble`` checks how the Trainer was asked to train (``model``/``models``,
``loss_fn``/``step``), builds the models and optimizers, one
:class:`~tapekit.training.update.OptimizerUpdate` per optimizer, the step (the default
:class:`~tapekit.training.supervised.SupervisedStep` or the user's) and the
:class:`~tapekit.training.step.CompiledSteps` that run it. ``checkpoint_objects`` lists what a
checkpoint holds, and ``run_guarded`` turns a compiled function's failures into errors that
say what happened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from .. import _compile
from .._args import fn_name
from .calls import LossCall, resolve_metrics
from .model import (
    build_models,
    check_in_scope,
    check_positive,
    check_step_arguments,
    resolve_optimizer,
    resolve_optimizers,
    tf_variable,
    trainable_variables,
    variable_names,
)
from .state import TrainState
from .step import CompiledSteps
from .supervised import SupervisedStep
from .update import OptimizerUpdate, failure_of

__all__ = [
    "ASSEMBLY_ARGS",
    "OPTION_ARGS",
    "Parts",
    "assemble",
    "check_options",
    "checkpoint_objects",
    "run_guarded",
]

OPTION_ARGS = (
    "clip_norm",
    "clip_value",
    "accumulate_steps",
    "keep_checkpoints",
    "log_every",
    "checkpoint_every",
    "steps_per_execution",
    "on_nonfinite",
)
"""The Trainer arguments :func:`check_options` checks."""

ASSEMBLY_ARGS = (
    "model",
    "models",
    "loss_fn",
    "step",
    "optimizer",
    "optimizers",
    "metrics",
    "metrics_fn",
    "model_losses",
    "clip_norm",
    "clip_value",
    "accumulate_steps",
    "mixed_precision",
    "jit_compile",
    "seed",
    "strategy",
    "on_nonfinite",
    "allow_unused",
)
"""The Trainer arguments :func:`assemble` takes."""


@dataclass(frozen=True)
class Parts:
    """What ``assemble`` built (see the module doc)."""

    models: dict[str, Any]
    model: Any
    optimizers: dict[str, Any]
    trainable_variables: list[Any]
    call: LossCall | None
    state: TrainState
    steps: CompiledSteps


class _UserStep:
    """Adapts ``step(ctx, batch)`` to the compiled loop's ``(ctx, batches)`` (one batch)."""

    def __init__(self, step: Callable) -> None:
        self.step = step

    def __call__(self, ctx: Any, batches: list[Any] | None) -> Any:
        # traced: the step's Python control flow on tensors is converted by AutoGraph, as in
        # the user's own tf.function (tapekit's functions are not converted)
        return _compile.autographed(self.step)(ctx, None if batches is None else batches[0])


def check_options(
    *,
    clip_norm: float | None,
    clip_value: float | None,
    accumulate_steps: int,
    keep_checkpoints: int,
    log_every: int,
    checkpoint_every: int | None,
    steps_per_execution: int | None,
    on_nonfinite: str | None,
) -> None:
    """Check the Trainer's numeric options and ``on_nonfinite``.

    Raises:
        ValueError: Naming the option, what was received and what is allowed.
    """
    check_positive(clip_norm, "clip_norm", float, allow_none=True)
    check_positive(clip_value, "clip_value", float, allow_none=True)
    for value, arg in (
        (accumulate_steps, "accumulate_steps"),
        (keep_checkpoints, "keep_checkpoints"),
        (log_every, "log_every"),
    ):
        check_positive(value, arg)
    check_positive(checkpoint_every, "checkpoint_every", allow_none=True)
    check_positive(steps_per_execution, "steps_per_execution", allow_none=True)
    if on_nonfinite not in ("raise", "skip", None):
        raise ValueError(
            f"on_nonfinite must be 'raise', 'skip' or None (no check), but received "
            f"{on_nonfinite!r}."
        )


def assemble(
    *,
    model: Any,
    models: dict[str, Any] | None,
    loss_fn: Callable | None,
    step: Callable | None,
    optimizer: Any,
    optimizers: dict[str, Any] | None,
    metrics: Sequence[Any],
    metrics_fn: Callable | None,
    model_losses: bool,
    clip_norm: float | None,
    clip_value: float | None,
    accumulate_steps: int,
    mixed_precision: str | None,
    jit_compile: bool,
    seed: int | None,
    strategy: tf.distribute.Strategy,
    on_nonfinite: str | None,
    allow_unused: bool,
) -> Parts:
    """Build the parts of a Trainer (arguments as documented on :class:`tapekit.Trainer`).

    Raises:
        TypeError, ValueError: For arguments of the wrong kind or combination (with the fix).
    """
    check_step_arguments(
        model, models, loss_fn, step, metrics, accumulate_steps, jit_compile, optimizers
    )
    built = build_models(model, models, strategy, mixed_precision, seed)
    the_model = built["model"] if models is None else dict(built)
    if step is None:  # the default step: one optimizer over all trainable variables
        opts = {"model": resolve_optimizer(optimizer, strategy, mixed_precision)}
        owned = {"model": the_model}
    else:
        opts = resolve_optimizers(optimizer, optimizers, built, strategy, mixed_precision)
        owned = {n: built[n] for n in opts}
    every: list[Any] = []
    found: dict[str, tuple[list[Any], list[str]]] = {}
    for name, owner in owned.items():
        variables = trainable_variables(owner)
        check_in_scope(variables, opts[name], strategy)
        found[name] = (variables, variable_names(owner, variables))
        every += variables
    call = None
    if loss_fn is not None:
        metric_objs = resolve_metrics(metrics, strategy)
        call = LossCall(the_model, loss_fn, metric_objs, metrics_fn, model_losses)
    with strategy.scope():
        state = TrainState(seed)
    source = fn_name(step if step is not None else loss_fn)
    updates = {
        name: OptimizerUpdate(
            name,
            i,
            opts[name],
            variables,
            names,
            strategy=strategy,
            clip_norm=clip_norm,
            clip_value=clip_value,
            on_nonfinite=on_nonfinite,
            allow_unused=allow_unused,
            source=source,
        )
        for i, (name, (variables, names)) in enumerate(found.items())
    }
    if step is None:
        replicas = strategy.num_replicas_in_sync
        step_fn: Callable = SupervisedStep(call, updates["model"], replicas, jit_compile)
    else:
        step_fn = _UserStep(step)
    steps = CompiledSteps(
        step_fn=step_fn,
        source=source,
        models={"model": the_model} if models is None else built,
        updates=updates,
        call=call,
        strategy=strategy,
        state=state,
        accumulate=accumulate_steps,
    )
    return Parts(built, the_model, opts, every, call, state, steps)


def checkpoint_objects(
    model: Any,
    variables: list[Any],
    optimizers: dict[str, Any],
    state: TrainState,
    steps: CompiledSteps,
) -> dict[str, Any]:
    """Everything a checkpoint holds: model(s), all their variables, optimizer(s), counters,
    running epoch averages and metrics.

    Keras keeps some state (e.g. dropout seed generators) in variables that
    ``tf.train.Checkpoint`` does not reach through the model, so all are listed explicitly.
    """
    single = len(optimizers) == 1 and "model" in optimizers
    return dict(
        model=model,
        model_variables=[tf_variable(v) for v in variables],
        optimizer=optimizers["model"] if single else dict(optimizers),
        state=state,
        train_means=steps.train_means,
        metrics=list(steps.call.metrics) if steps.call is not None else [],
    )


def run_guarded(fn: Callable, args: tuple, steps: CompiledSteps, checkpoints: Any) -> Any:
    """``fn(*args)``; a non-finite step becomes ``NonFiniteError``, exhausted data a
    ``ValueError`` saying so.

    Raises:
        NonFiniteError: If a step failed its finiteness check.
        ValueError: If the training data ran out.
    """
    try:
        return fn(*args)
    except tf.errors.OutOfRangeError:
        raise ValueError(
            f"Trainer: the training data ran out at step {int(steps.state.step.numpy())} (epoch "
            f"{int(steps.state.epoch.numpy()) + 1}): the dataset yielded no batch although it "
            "was repeated, so it is empty (e.g. a filter removed everything, or a generator "
            "stopped early). Check the data pipeline yields batches."
        ) from None
    except tf.errors.InvalidArgumentError as exc:
        failure = failure_of(str(exc))
        if failure is None:
            raise
        steps.restore_iterations(failure.iterations)
        saved = "no checkpoint_dir was set"
        if checkpoints is not None:
            latest = checkpoints.latest()
            saved = f"the newest checkpoint on disk is {latest}" if latest else "none saved"
        raise steps.nonfinite_error(failure, saved) from None
