"""``variables=`` of grad / value_and_grad: gradients w.r.t. a model's weights, keyed by path.

The variables are resolved after ``fn`` ran (so a Keras layer built by that first call has
them), read on a tape that watches what ``fn`` accesses, and the gradient is a dict keyed by
each variable's path (``dense/kernel``) or name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _calls, _missing, _tensors
from .errors import describe_received

Variables = Any
"""A Keras layer/model or ``tf.Module`` (its trainable variables), a list/tuple of variables,
or a function returning one of those."""


def check(variables: Variables, transform: str) -> None:
    """Build-time check of ``variables=``."""
    if variables is None or callable(variables) or _owner_of(variables) is not None:
        return
    if isinstance(variables, (list, tuple)):
        return
    raise TypeError(
        f"{transform} needs `variables` to be a Keras layer/model, a tf.Module, a list of "
        f"variables or a function returning one, but received {describe_received(variables)}."
    )


def _owner_of(value: Any) -> Any:
    return value if hasattr(value, "trainable_variables") else None


def resolve(variables: Variables, transform: str) -> list[tuple[str, Any]]:
    """``[(path, variable)]``; ``ValueError`` if there are none."""
    value = variables
    if callable(value) and _owner_of(value) is None:
        value = value()
    if _owner_of(value) is not None:
        value = value.trainable_variables
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            f"{transform}(variables=...) found no variables to differentiate: "
            f"{describe_received(value)}. A Keras layer has no weights until it is built: call "
            f"it inside fn (it is resolved after the first call), build it first "
            f"(layer.build(input_shape)), or check that its weights are trainable."
        )
    out = []
    for v in value:
        inner = _tensors.variable(v)
        if inner is None:
            raise TypeError(
                f"{transform}(variables=...) needs variables, but one entry is "
                f"{describe_received(v)}. Pass model.trainable_variables or the model itself."
            )
        out.append((getattr(v, "path", None) or inner.name, v))
    return out


def value_and_grad(
    fn: Callable, args: tuple, kwargs: dict, variables: Variables, has_aux: bool, transform: str
) -> tuple[Any, Any, dict[str, Any]]:
    """``(value, aux, {path: gradient})`` of ``fn(*args, **kwargs)`` w.r.t. ``variables``."""
    with tf.GradientTape() as tape:  # watches the variables fn reads (also ones it creates)
        out = fn(*args, **kwargs)

    def select(out: Any) -> list[tf.Tensor]:
        value = _tensors.split_aux(out, fn, transform)[0] if has_aux else out
        value = _args.as_output_tensor(value, fn, transform)
        _args.check_scalar(value, fn, transform)
        return [value]

    aux = _tensors.split_aux(out, fn, transform)[1] if has_aux else None
    (value,) = select(out)
    pairs = resolve(variables, transform)
    sources = [_tensors.tf_value(v) for _, v in pairs]
    names = lambda: [f"variables['{p}']" for p, _ in pairs]  # noqa: E731
    try:
        flat = tape.gradient(value, sources, unconnected_gradients=_tensors.NONE)
    except LookupError as exc:
        raise _missing.no_gradient_error(tape, [value], sources, exc, transform, names()) from exc
    call = _calls.Call(list(args), kwargs, [], sources, [])
    _missing.check([value], sources, transform, names, _missing.retrace(fn, call, select))
    grads = {
        p: _tensors.zeros_like_source(s) if g is None else _tensors.dense(g)
        for (p, _), g, s in zip(pairs, flat, sources)
    }
    return value, aux, grads
