"""The shared first-order path of grad, value_and_grad, partials, partial and derivative.

``fn`` is recorded on a ``tf.GradientTape``, the gradient is asked with ``None`` for missing
ones, the path is checked for cuts (``_missing``: NumPy, an op without that gradient, an
assignment) and only then does a missing gradient become the documented zero.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from . import _args, _calls, _missing, _tensors
from .errors import DisconnectedGradientError


def value_and_grad_call(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    argnums: tuple[int, ...],
    has_aux: bool,
    transform: str,
    where: Callable[[int], str] | None = None,
    owner: Callable | None = None,
    others: list[Any] | None = None,
) -> tuple[Any, Any, list[Any]]:
    """Run ``fn`` on a tape; return ``(value, aux, [gradient nest per argnum])``.

    ``where(i)`` names argument ``i`` in messages; ``owner`` is the user function behind ``fn``
    and ``others`` the values it receives besides ``args`` (for a wrapper such as the one of
    :func:`partials`).
    """
    positions = _args.resolve_argnums(argnums, len(args), fn, transform)
    unique = list(dict.fromkeys(positions))  # argnums=(0, 0) differentiates argument 0 once
    args = list(args)
    where = where or functools.partial(_args.describe_arg, fn)
    wheres = [functools.partial(where, i) for i in unique]  # formatted on error only
    if others is None:
        others = [a for i, a in enumerate(args) if i not in unique] + list(kwargs.values())
    values, sources, structs = _args.prepare_all(
        [args[i] for i in unique], wheres, transform, others
    )
    for i, value in zip(unique, values):
        args[i] = value
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(sources)
        out = fn(*args, **kwargs)

    def select(out: Any) -> list[tf.Tensor]:
        value = _args.as_output_tensor(
            _tensors.split_aux(out, fn, transform)[0] if has_aux else out, fn, transform
        )
        _args.check_scalar(value, fn, transform)
        return [value]

    aux = _tensors.split_aux(out, fn, transform)[1] if has_aux else None
    (value,) = select(out)

    def names() -> list[str]:
        return [w() + p for w, (v, _) in zip(wheres, structs) for p in _args.leaf_paths(v)]

    flat = [_tensors.dense(g) for g in _gradient(tape, [value], sources, transform, names)]
    call = _calls.Call(args, kwargs, unique, sources, structs)
    _missing.check([value], sources, transform, names, _missing.retrace(fn, call, select, owner))
    if any(g is None for g in flat):  # an unused input (the check found no cut): zeros
        flat = [_tensors.zeros_like_source(s) if g is None else g for g, s in zip(flat, sources)]
    grads = _args.unflatten(flat, structs)
    return value, aux, [grads[unique.index(i)] for i in positions]


def _gradient(
    tape: tf.GradientTape,
    targets: list,
    sources: list,
    transform: str,
    names: Callable[[], list[str]],
) -> list[Any]:
    """``tape.gradient`` with ``None`` for missing gradients; an op without a registered
    gradient raises the diagnosed error (a ``LookupError`` too) instead of TensorFlow's."""
    try:
        return tape.gradient(targets, sources, unconnected_gradients=_tensors.NONE)
    except LookupError as exc:
        if isinstance(exc, DisconnectedGradientError):
            raise
        raise _missing.no_gradient_error(tape, targets, sources, exc, transform, names()) from exc


def first_gradient(
    tape: tf.GradientTape,
    out: tf.Tensor,
    src: Any,
    fn1: Callable,
    owner: Callable,
    transform: str,
    where: str,
) -> tf.Tensor:
    """The gradient of ``out = fn1(src)`` w.r.t. ``src``: zeros if unused, an error if cut."""
    names = lambda: [where]  # noqa: E731
    g = _gradient(tape, out, [src], transform, names)[0]
    call = _calls.Call([src], {}, [0], [src], [(src, 1)])
    select = lambda o: [_args.as_output_tensor(o, fn1, transform)]  # noqa: E731
    _missing.check([out], [src], transform, names, _missing.retrace(fn1, call, select, owner))
    return _tensors.zeros_like_source(src) if g is None else _tensors.dense(g)
